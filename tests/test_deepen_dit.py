"""A deeper DiT grown from a trained one (``DiffusionTransformer.deepen``, ``HieraQuery.deepen_dit``)."""

import dataclasses

import pytest
import torch

from diffusers.models.attention_processor import AttnProcessor2_0, SanaLinearAttnProcessor2_0

from hieraquery_core.checkpoint import load_checkpoint, save_checkpoint
from hieraquery_core.errors import HieraQueryError
from hieraquery_core.model import HieraQuery, TrainingBatch
from hieraquery_core.pipeline import HieraQueryPipeline, SamplingOptions
from hieraquery_core.tiny import tiny_config

from tiny_models import make_model

OPTIONS = SamplingOptions(steps=2, guidance=3.0)
BATCH = TrainingBatch(["a red circle", "two squares"], torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6)))


def loss(model: HieraQuery) -> torch.Tensor:
    return model.training_loss(BATCH, torch.Generator().manual_seed(0), sigma=0.6, dropout=False).total


def outputs(model: HieraQuery) -> tuple[torch.Tensor, ...]:
    """The training loss (with its alignment term) and every scale of a sample."""
    return (loss(model), *HieraQueryPipeline(model).generate(["a red circle", "two squares"], seed=3, options=OPTIONS).images)


def aligned_model() -> HieraQuery:
    """A tiny SANA model of 4 blocks whose alignment reads the middle one (block 2)."""
    config = tiny_config(alignment_weight=0.5)
    config = dataclasses.replace(config, dit=dataclasses.replace(config.dit, config={**config.dit.config, "num_layers": 4}))
    torch.manual_seed(0)
    return HieraQuery.from_config(config).eval()


@pytest.mark.parametrize("blocks,copies", [(8, [1, 1, 1, 1]), (6, [0, 1, 0, 1]), (5, [0, 0, 0, 1])])
def test_deepening_paints_what_it_painted_and_keeps_the_old_blocks_in_order(blocks, copies):
    model = aligned_model()
    old = list(model.dit.blocks)
    before = outputs(model)
    model.deepen_dit(blocks)
    assert len(model.dit.blocks) == blocks == model.dit.config.num_layers == model.config.dit.config["num_layers"]
    assert [b for b in model.dit.blocks if any(b is o for o in old)] == old  # the old blocks, in their order
    positions = [next(j for j, b in enumerate(model.dit.blocks) if b is o) for o in old]
    assert [nxt - here - 1 for here, nxt in zip(positions, [*positions[1:], blocks])] == copies
    # the alignment reads the block it read: the old middle block, where it now sits
    assert model.config.alignment.block == positions[2]
    assert all(torch.equal(a, b) for a, b in zip(before, outputs(model)))


def test_the_new_blocks_learn_and_the_deeper_dit_saves_and_loads(tmp_path):
    model = aligned_model()
    model.deepen_dit(6)
    new = [block for i, block in enumerate(model.dit.blocks) if i in (2, 5)]
    assert all(block.ff.conv_point.weight.abs().sum() == 0 for block in new)
    model.train()
    loss(model).backward()
    assert all(block.attn2.to_out[0].weight.grad.abs().sum() > 0 and block.ff.conv_point.weight.grad.abs().sum() > 0 for block in new)
    with torch.no_grad():
        for block in new:
            block.ff.conv_point.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    model.eval()
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "deeper"))
    assert len(loaded.dit.blocks) == 6 and loaded.config.alignment.block == model.config.alignment.block
    assert all(torch.equal(a, b) for a, b in zip(outputs(model), outputs(loaded)))


def test_new_blocks_with_softmax_self_attention_start_as_the_identity_and_keep_their_attention_when_loaded(tmp_path):
    model = aligned_model()
    before = outputs(model)
    model.deepen_dit(6, softmax=True)
    assert model.dit.softmax_self_attention_blocks() == [2, 5] == model.config.dit.options["softmax_self_attention"]
    assert all(torch.equal(a, b) for a, b in zip(before, outputs(model)))
    with torch.no_grad():
        for i in (2, 5):
            model.dit.blocks[i].attn1.to_out[0].weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(i))
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "softmax"))
    assert loaded.dit.softmax_self_attention_blocks() == [2, 5]
    trained = outputs(model)
    assert all(torch.equal(a, b) for a, b in zip(trained, outputs(loaded)))
    for i in (2, 5):  # the attention kind matters: the same weights with SANA's linear attention paint something else
        loaded.dit.blocks[i].attn1.set_processor(SanaLinearAttnProcessor2_0())
    assert not torch.equal(trained[0], outputs(loaded)[0])


def test_deepening_refuses_what_it_cannot_do():
    with pytest.raises(HieraQueryError, match="give more than that"):
        aligned_model().deepen_dit(4)
    with pytest.raises(HieraQueryError, match="implemented for SANA DiTs"):
        make_model("sd3", "qwen2_5_vl", "autoencoder_kl").deepen_dit(4)
    with pytest.raises(HieraQueryError, match=r"must be in 0..3"):
        aligned_model().dit.use_softmax_self_attention([4])
    with pytest.raises(HieraQueryError, match="a SANA option"):
        make_model("sd3", "qwen2_5_vl", "autoencoder_kl").dit.use_softmax_self_attention([0])


def test_an_alignment_block_counted_from_the_end_follows_its_block():
    model = aligned_model()
    model.config = dataclasses.replace(model.config, alignment=dataclasses.replace(model.config.alignment, block=-1))
    before = outputs(model)
    model.deepen_dit(8)
    assert model.config.alignment.block == 6  # the old last block; its identity copy follows it
    assert all(torch.equal(a, b) for a, b in zip(before, outputs(model)))
