"""Sampling (Eq. 5, Fig. 2): cascade, seeds, guidance branches, refinement, Ming-style, editing, understanding."""

import pytest
import torch

from hieraquery_core.config import ScaleSpec
from hieraquery_core.errors import HieraQueryError
from hieraquery_core.pipeline import HieraQueryPipeline, SamplingOptions

from tiny_models import make_model

FAST = SamplingOptions(steps=3)


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return HieraQueryPipeline(tiny_model)


def test_every_scale_is_returned_at_its_configured_resolution(pipe):
    out = pipe.generate(["a red circle", "a blue square"], seed=1, options=SamplingOptions(steps=2, images_per_prompt=2))
    assert [tuple(i.shape) for i in out.images] == [(4, 3, 8, 8), (4, 3, 16, 16), (4, 3, 32, 32)]
    assert all(i.min() >= 0 and i.max() <= 1 for i in out.images)
    out = pipe.generate("a red circle", seed=1, options=SamplingOptions(steps=2, height=64, width=32))
    assert [tuple(i.shape[-2:]) for i in out.images] == [(16, 8), (32, 16), (64, 32)]


def test_same_seed_same_images_different_seed_different(pipe):
    a = pipe.generate("a red circle", seed=7, options=FAST)
    b = pipe.generate("a red circle", seed=7, options=FAST)
    c = pipe.generate("a red circle", seed=8, options=FAST)
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images))
    assert all((x - y).abs().mean() > 1e-3 for x, y in zip(a.images, c.images))


def test_batch_items_get_different_noise(pipe):
    out = pipe.generate("a red circle", seed=1, options=SamplingOptions(steps=2, images_per_prompt=2))
    assert (out.final[0] - out.final[1]).abs().mean() > 1e-3


def test_one_scale_sampled_alone_matches_the_cascade_and_resampling_skips_the_mllm(pipe, monkeypatch):
    encoded = pipe.encode("a red circle")
    calls = []
    original = pipe.model.mllm.forward
    monkeypatch.setattr(pipe.model.mllm, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    full = pipe.sample(encoded, seed=3, options=FAST)
    alone = pipe.sample_scale(encoded, 1, (16, 16), seed=3, steps=3)
    other = pipe.sample(encoded, seed=4, options=SamplingOptions(steps=3, guidance=2.0))
    assert torch.equal(full.images[1], alone)
    assert not torch.equal(full.final, other.final)
    assert calls == []  # new seeds and guidance re-use the encoded conditions


def test_guidance_changes_the_result_and_one_means_no_unconditional_branch(pipe):
    encoded = pipe.encode("a red circle")
    g1 = pipe.sample_scale(encoded, 0, (8, 8), seed=0, steps=2, guidance=1.0)
    g4 = pipe.sample_scale(encoded, 0, (8, 8), seed=0, steps=2, guidance=4.0)
    plain = pipe.sample_scale(pipe.encode("a red circle", guidance=False), 0, (8, 8), seed=0, steps=2)
    assert torch.equal(g1, plain) and not torch.allclose(g1, g4)


def test_refinement_strength_controls_how_much_of_the_previous_scale_survives(pipe):
    encoded = pipe.encode("a red circle")
    init = torch.zeros(1, 3, 8, 8)
    init[..., :4, :] = 1.0  # top half white, bottom half black
    weak = pipe.sample_scale(encoded, 1, (16, 16), seed=0, steps=10, init=init, strength=0.2)
    free = pipe.sample_scale(encoded, 1, (16, 16), seed=0, steps=10, init=init, strength=1.0)
    target = torch.nn.functional.interpolate(init, size=(16, 16))
    assert (weak - target).abs().mean() < 0.5 * (free - target).abs().mean()
    options = SamplingOptions(steps=[4, 4, 5], refine_strength=0.3)
    ran = [0, 0, 0]
    cascade = pipe.sample(encoded, seed=0, options=options, callback=lambda k, *_: ran.__setitem__(k, ran[k] + 1))
    assert [tuple(i.shape[-2:]) for i in cascade.images] == [(8, 8), (16, 16), (32, 32)]
    assert ran == [options.steps_run(k, 3) for k in range(3)] == [4, 1, 2]  # the finer scales run round(0.3 x steps), at least 1


def test_ming_mode_paints_every_scale_at_full_resolution(pipe):
    out = pipe.generate("a red circle", seed=0, options=SamplingOptions(steps=2, mode="ming"))
    assert [tuple(i.shape[-2:]) for i in out.images] == [(32, 32)] * 3


def test_per_scale_step_counts(pipe):
    steps_seen = {}
    pipe.generate("a red circle", seed=0, options=SamplingOptions(steps=[1, 2, 3]), callback=lambda k, i, n, _: steps_seen.__setitem__(k, n))
    assert steps_seen == {0: 1, 1: 2, 2: 3}
    with pytest.raises(HieraQueryError, match="one per scale"):
        pipe.generate("a red circle", options=SamplingOptions(steps=[1, 2]))


def test_callback_can_interrupt_between_steps(pipe):
    class Stop(Exception):
        pass

    seen = []

    def callback(k, i, n, latents):
        seen.append((k, i))
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        pipe.generate("a red circle", options=FAST, callback=callback)
    assert seen == [(0, 1), (0, 2)]


def test_editing_uses_three_guidance_branches_and_keeps_the_input_size(pipe):
    image = torch.rand(1, 32, 32, 3)  # ComfyUI layout
    encoded = pipe.encode("make it blue", image)
    assert encoded.image_only is not None and encoded.uncond is not None
    out = pipe.edit(image, "make it blue", seed=0, options=FAST)
    assert tuple(out.final.shape) == (1, 3, 32, 32)
    stronger = pipe.edit(image, "make it blue", seed=0, options=SamplingOptions(steps=3, image_guidance=3.0))
    assert not torch.allclose(out.final, stronger.final)


def test_describe_answers_in_text(pipe):
    answers = pipe.describe(torch.rand(2, 3, 32, 32), "what color is the circle")
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)


def test_single_scale_model_samples_one_image():
    pipe = HieraQueryPipeline(make_model(scales=[ScaleSpec((16, 16), 1.0)]))
    out = pipe.generate("a red circle", options=SamplingOptions(steps=2))
    assert len(out.images) == 1 and tuple(out.final.shape) == (1, 3, 32, 32)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda p: p.generate(""), "prompt is empty"),
        (lambda p: p.generate("   "), "prompt is empty"),
        (lambda p: p.edit(torch.rand(1, 32, 32, 3), ""), "instruction is empty"),
        (lambda p: p.edit(torch.rand(1, 32, 32, 4), "make it blue"), "alpha channel"),
        (lambda p: p.edit(torch.rand(1, 5, 32, 32), "make it blue"), "channels"),
        (lambda p: p.edit(torch.rand(1, 2, 3, 32, 32), "make it blue"), "dimensions"),
        (lambda p: p.edit(torch.rand(1, 30, 30, 3), "make it blue"), "multiple of"),
        (lambda p: p.generate("a red circle", options=SamplingOptions(height=36)), "multiple of"),
        (lambda p: p.generate("a red circle", options=SamplingOptions(mode="other")), "mode"),
        (lambda p: p.sample_scale(p.encode("a"), 5, (8, 8), seed=0), "does not exist"),
        (lambda p: p.sample_scale(p.encode("a"), 0, (8, 8), seed=0, strength=0.0), "strength"),
        (lambda p: p.describe(torch.rand(1, 3, 32, 32), " "), "question is empty"),
    ],
)
def test_bad_input_gets_one_clear_error(pipe, call, message):
    with pytest.raises(HieraQueryError, match=message):
        call(pipe)
