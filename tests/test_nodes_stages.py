"""The composable nodes' logic without ComfyUI (Query Encode -> Connector -> Scale Sampler), on a tiny
checkpoint: SANA + Qwen2.5-VL in pixel space, scales 4x4/8x8/16x16 queries at 8/16/32 px."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nodes_support import checkpoint_root, loaded, pack_module  # noqa: F401

jobs = pack_module("nodes.jobs")

SAMPLING = {"steps": 2, "guidance": 4.0, "image_guidance": 1.5}


@pytest.fixture(scope="module")
def conditions(loaded):
    return jobs.connect(loaded, jobs.encode_queries(loaded, "a red circle"))


def test_query_states_hold_every_scale_and_the_empty_prompt_branch(loaded):
    value = jobs.encode_queries(loaded, "a red circle")
    hidden = loaded.pipeline.model.mllm.hidden_size
    assert [tuple(s.shape) for s in value.states.cond] == [(1, 16, hidden), (1, 64, hidden), (1, 256, hidden)]
    assert value.states.uncond is not None and value.states.image_only is None
    assert value.source == "tiny" and value.image_size is None
    assert value.states.prompts == ["a red circle"]  # the prompt as the MLLM read it: this checkpoint does not plan


def test_a_checkpoint_that_plans_encodes_the_prompt_with_the_mllms_answer(loaded):
    model = loaded.pipeline.model
    plain = model.config
    try:
        model.config = dataclasses.replace(plain, plan={"what is to the left": ["left", "right"]})
        value = jobs.encode_queries(loaded, "a circle to the right of a square")
        (read,) = value.states.prompts
        assert read.startswith("a circle to the right of a square . what is to the left ") and read == model.plan(["a circle to the right of a square"])[0]
        assert jobs.encode_queries(loaded, "a red circle").states.prompts == ["a red circle"]
    finally:
        model.config = plain


def test_the_stages_scale_by_scale_reproduce_one_node_generate(loaded, conditions):
    whole = jobs.generate(loaded, "a red circle", seed=3, **{k: v for k, v in SAMPLING.items() if k != "image_guidance"})
    for k in range(3):
        image, latent = jobs.sample_scale(loaded, conditions, k, seed=3, **SAMPLING)
        assert torch.equal(image, whole[k]), f"scale {k}"


def test_sampler_size_comes_from_the_target_and_the_scale_with_a_batch_and_a_latent(loaded, conditions):
    image, latent = jobs.sample_scale(loaded, conditions, 1, seed=0, width=64, height=32, batch_size=2, **SAMPLING)
    assert image.shape == (2, 16, 32, 3) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert latent["samples"].shape == (2, 3, 16, 32)  # pixel space: the latent is the image in [-1, 1]
    assert torch.allclose(image, ((latent["samples"] + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))
    assert not torch.equal(image[0], image[1])


def test_a_latent_space_checkpoint_gives_its_own_latents(checkpoint_root):
    model = jobs.load_model("team/tiny-kl", [checkpoint_root])  # SD3 + AutoencoderKL (4 channels, factor 2)
    events = []
    conditions = jobs.connect(model, jobs.encode_queries(model, "a red circle"))
    image, latent = jobs.sample_scale(model, conditions, 2, seed=0, progress=events.append, **SAMPLING)
    assert image.shape == (1, 32, 32, 3) and latent["samples"].shape == (1, 4, 16, 16)
    assert not events[0].cheap_preview and events[-1].preview().shape == (1, 3, 32, 32)


def test_refinement_starts_from_the_previous_scale_only_below_strength_one(loaded, conditions):
    previous, _ = jobs.sample_scale(loaded, conditions, 0, seed=5, **SAMPLING)
    fresh, _ = jobs.sample_scale(loaded, conditions, 1, seed=5, **SAMPLING)
    ignored, _ = jobs.sample_scale(loaded, conditions, 1, seed=5, previous=previous, refine_strength=1.0, **SAMPLING)
    events = []
    refined, _ = jobs.sample_scale(loaded, conditions, 1, seed=5, previous=previous, refine_strength=0.5,
                                   progress=events.append, **{**SAMPLING, "steps": 4})
    assert torch.equal(fresh, ignored)
    assert not torch.equal(fresh, refined)
    assert [(e.value, e.total) for e in events] == [(1, 2), (2, 2)]  # half of 4 steps, from the re-noised previous image


def test_edit_conditions_paint_at_the_input_size_by_default(loaded):
    source = torch.rand(1, 16, 24, 3)
    value = jobs.encode_queries(loaded, "make it blue", source)
    assert value.image_size == (16, 24) and value.states.image_only is not None
    conditions = jobs.connect(loaded, value)
    image, _ = jobs.sample_scale(loaded, conditions, 2, seed=0, **SAMPLING)
    assert image.shape == (1, 16, 24, 3)
    coarse, _ = jobs.sample_scale(loaded, conditions, 0, seed=0, width=32, height=32, **SAMPLING)
    assert coarse.shape == (1, 8, 8, 3)


def test_progress_events_carry_previews_and_a_raising_sink_stops_the_job(loaded, conditions):
    events = []
    jobs.sample_scale(loaded, conditions, 2, seed=0, progress=events.append, **{**SAMPLING, "steps": 3})
    assert [(e.value, e.total, e.scale, e.step, e.steps) for e in events] == [(1, 3, 2, 1, 3), (2, 3, 2, 2, 3), (3, 3, 2, 3, 3)]
    assert events[0].cheap_preview and events[-1].preview().shape == (1, 3, 32, 32)

    class Interrupted(Exception):
        pass

    seen = []

    def interrupt_at_second_step(event):
        seen.append(event.value)
        if event.value == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        jobs.sample_scale(loaded, conditions, 2, seed=0, progress=interrupt_at_second_step, **{**SAMPLING, "steps": 10})
    assert seen == [1, 2]


def test_any_64_bit_seed_is_accepted(loaded, conditions):
    a, _ = jobs.sample_scale(loaded, conditions, 2, seed=2**64 - 1, **SAMPLING)
    b, _ = jobs.sample_scale(loaded, conditions, 2, seed=2**64 - 1, **SAMPLING)
    assert torch.equal(a, b)


@pytest.mark.parametrize(("call", "message"), [
    (lambda m, c: jobs.encode_queries(m, "  "), "the prompt is empty"),
    (lambda m, c: jobs.encode_queries(m, "make it blue", torch.rand(1, 16, 16, 4)), "alpha channel"),
    (lambda m, c: jobs.sample_scale(m, c, 3, seed=0, **SAMPLING), r"scale 3 does not exist; this checkpoint has scales 0 = 4x4, 1 = 8x8, 2 = 16x16"),
    (lambda m, c: jobs.sample_scale(m, c, 0, seed=0, width=12, height=32, **SAMPLING), "not a multiple of 2"),
    (lambda m, c: jobs.sample_scale(m, c, 0, seed=0, previous=torch.rand(1, 8, 8, 4), refine_strength=0.5, **SAMPLING), "alpha channel"),
    (lambda m, c: jobs.sample_scale(m, dataclasses.replace(c, source="other"), 0, seed=0, **SAMPLING), "come from checkpoint 'other'"),
    (lambda m, c: jobs.connect(m, dataclasses.replace(jobs.encode_queries(m, "a"), source="other")), "connect the same HieraQuery loader"),
])
def test_bad_input_is_one_clear_error(loaded, conditions, call, message):
    with pytest.raises(ValueError, match=message):
        call(loaded, conditions)


def test_a_dit_that_reads_the_source_gets_it_through_the_staged_nodes(tmp_path):
    """A checkpoint whose DiT also reads the input image's latents (``HieraQuery.read_source``): the image given to
    Query Encode reaches every Scale Sampler, which reproduces the one-node Edit, and the image changes the result."""
    from hieraquery_core.checkpoint import save_checkpoint
    from tiny_models import make_model, wake_new_channels

    model = make_model(seed=3)
    model.read_source()
    wake_new_channels(model)
    save_checkpoint(model, tmp_path / "reads-source")
    loaded_model = jobs.load_model("reads-source", [tmp_path])
    source = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(2))
    whole = jobs.edit(loaded_model, source, "make it blue", seed=4, **SAMPLING)
    conditions = jobs.connect(loaded_model, jobs.encode_queries(loaded_model, "make it blue", source))
    for k in range(3):
        assert torch.equal(jobs.sample_scale(loaded_model, conditions, k, seed=4, **SAMPLING)[0], whole[k]), f"scale {k}"
    other = dataclasses.replace(conditions, encoded=dataclasses.replace(conditions.encoded, source_images=source.flip(1).permute(0, 3, 1, 2)))
    assert not torch.equal(jobs.sample_scale(loaded_model, other, 2, seed=4, **SAMPLING)[0], whole[2])
