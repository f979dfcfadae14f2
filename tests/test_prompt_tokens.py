"""The prompt's own MLLM states beside the queries (the project's ``prompt_tokens`` extension)."""

import dataclasses

import pytest
import torch

from hieraquery_core.checkpoint import load_checkpoint, save_checkpoint
from hieraquery_core.errors import HieraQueryError
from hieraquery_core.model import HieraQuery, TrainingBatch
from hieraquery_core.pipeline import HieraQueryPipeline, SamplingOptions
from hieraquery_core.tiny import tiny_config

from tiny_models import make_model

LONG, SHORT = "a red circle and a blue square", "a circle"


def with_prompt_tokens(model: HieraQuery, count: int) -> HieraQuery:
    model.config = dataclasses.replace(model.config, prompt_tokens=count)
    return model


@pytest.mark.parametrize("mllm", ["qwen2_5_vl", "causal_lm"])
def test_the_prompts_last_states_come_before_each_scales_query_states(mllm):
    model = make_model("sana", mllm, "pixel")
    plain = model.encode([LONG, SHORT])
    with_prompt_tokens(model, 6)
    states = model.encode([LONG, SHORT])
    queries = model.config.scales
    assert [s.shape[1] for s in states] == [6 + q.num_queries for q in queries]
    for k in range(len(queries)):
        assert torch.allclose(states[k][:, 6:], plain[k], atol=1e-6)  # the query states are what they were
        assert torch.equal(states[k][:, :6], states[0][:, :6])  # every scale reads the same prompt states
    # a shorter prompt's states are right-aligned after zeros, whatever it is batched with
    alone = model.encode([SHORT])
    short_length = int(model.mllm.tokenize([SHORT])["attention_mask"].sum())
    assert short_length < 6 and not states[0][1, : 6 - short_length].any() and states[0][1, 6 - short_length:].abs().sum(-1).min() > 0
    assert all(torch.allclose(a[0], b[1], atol=1e-5) for a, b in zip(alone, states))
    # a longer prompt keeps its end: its last 2 positions are the last 2 of the 6
    assert torch.allclose(with_prompt_tokens(model, 2).encode([LONG])[0][0, :2], states[0][0, 4:6], atol=1e-5)
    assert not torch.allclose(states[0][0, :6], states[0][1, :6])


def test_a_model_with_prompt_tokens_trains_samples_edits_and_reloads(tmp_path):
    model = with_prompt_tokens(make_model(), 8)
    targets = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss = model.training_loss(TrainingBatch([LONG, SHORT], targets), torch.Generator().manual_seed(0))
    loss.total.backward()
    assert model.queries.start.grad is not None and model.connector.proj_out[0].weight.grad.abs().sum() > 0
    options = SamplingOptions(steps=2, guidance=3.0)
    pipe = HieraQueryPipeline(model)
    image = pipe.generate([LONG, SHORT], seed=1, options=options).final
    assert image.shape == (2, 3, 32, 32)
    assert pipe.edit(image, "make the red circle blue", seed=1, options=options).final.shape == (2, 3, 32, 32)
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "ckpt"))
    assert loaded.config.prompt_tokens == 8
    assert torch.equal(HieraQueryPipeline(loaded).generate([LONG, SHORT], seed=1, options=options).final, image)
    # the DiT reads them: without, the same weights paint otherwise
    assert not torch.equal(HieraQueryPipeline(with_prompt_tokens(loaded, 0)).generate([LONG, SHORT], seed=1, options=options).final, image)


def test_a_negative_count_is_one_clear_error():
    with pytest.raises(HieraQueryError, match="prompt_tokens is -1; give 0 .query states only. or a positive number"):
        dataclasses.replace(tiny_config("sana", "qwen2_5_vl", "pixel"), prompt_tokens=-1)
