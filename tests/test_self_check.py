"""The self-check (hieraquery_core/self_check.py): several cascades per image, the one the DiT finds fits best kept."""

import pytest
import torch

from hieraquery_core.checkpoint import bundled_demo, load_checkpoint
from hieraquery_core.errors import HieraQueryError
from hieraquery_core.pipeline import EncodedPrompt, HieraQueryPipeline, SamplingOptions
from hieraquery_core.self_check import FIT_PASSES, best_candidates, prompt_fit
from hieraquery_core.shapesworld import heldout_pairs, render
from train.shapesworld_data import to_pixels

@pytest.fixture(scope="module")
def pipe(tiny_model):
    return HieraQueryPipeline(tiny_model)


@pytest.mark.parametrize("task", ["generate", "edit"])
def test_candidates_keep_every_scale_of_the_best_fitting_cascade(pipe, task):
    """With c candidates the pipeline paints what c images per prompt would be and keeps, per image, the one with the
    highest prompt_fit (against the empty prompt, or for an edit the empty prompt with the image)."""
    prompts = ["a red circle", "a blue square"]
    pixels = torch.rand(2, 3, 32, 32)
    encoded = pipe.encode(prompts) if task == "generate" else pipe.encode(prompts, pixels)
    every = pipe.sample(encoded, seed=4, options=SamplingOptions(steps=2, images_per_prompt=6))
    fit = prompt_fit(pipe.model, encoded, every.images, repeats=6, seed=4)
    best = fit.view(4, 3).argmax(1) + torch.arange(4) * 3
    chosen = pipe.sample(encoded, seed=4, options=SamplingOptions(steps=2, images_per_prompt=2, candidates=3))
    assert [tuple(i.shape) for i in chosen.images] == [(4, 3, 8, 8), (4, 3, 16, 16), (4, 3, 32, 32)]
    assert all(torch.equal(c, e[best]) for c, e in zip(chosen.images, every.images))
    assert fit.view(4, 3).argmax(1).ne(0).any()  # not always the first candidate: the pick is the fit's


def test_fit_is_zero_when_the_prompt_is_the_reference_and_the_candidates_are_grouped_in_order(pipe):
    encoded = pipe.encode("a red circle")
    same = EncodedPrompt(encoded.uncond, uncond=encoded.uncond)
    images = pipe.sample(encoded, seed=0, options=SamplingOptions(steps=2, images_per_prompt=3)).images
    assert torch.equal(prompt_fit(pipe.model, same, images, repeats=3, seed=0), torch.zeros(3))
    assert best_candidates(torch.tensor([0.1, 0.3, 0.2, 0.5, 0.4, 0.0]), 3).tolist() == [1, 3]
    assert best_candidates(torch.tensor([0.2, 0.2]), 2).tolist() == [0]


def test_the_fit_reports_each_pass_and_a_raising_callback_stops_it(pipe):
    encoded = pipe.encode("a red circle")
    images = pipe.sample(encoded, seed=0, options=SamplingOptions(steps=2, images_per_prompt=2)).images
    calls = []
    fit = prompt_fit(pipe.model, encoded, images, repeats=2, seed=0, callback=lambda i, n, x0: calls.append((i, n, tuple(x0.shape))))
    assert calls == [(i, FIT_PASSES, (2, 3, 32, 32)) for i in range(1, FIT_PASSES + 1)]
    assert torch.equal(fit, prompt_fit(pipe.model, encoded, images, repeats=2, seed=0))

    def stop(i, n, x0):
        raise InterruptedError(i)

    with pytest.raises(InterruptedError, match="1"):
        prompt_fit(pipe.model, encoded, images, repeats=2, seed=0, callback=stop)
    assert SamplingOptions(steps=[3, 2, 2], candidates=4).steps_plan(3) == [3, 2, 2, FIT_PASSES]
    assert SamplingOptions(steps=2).steps_plan(3) == [2, 2, 2]


def test_without_guidance_generate_still_encodes_the_empty_prompt_the_self_check_needs(pipe):
    options = SamplingOptions(steps=2, guidance=1.0, candidates=2)
    assert pipe.generate("a red circle", seed=0, options=options).final.shape == (1, 3, 32, 32)
    with pytest.raises(HieraQueryError, match="empty prompt, which was not encoded"):
        pipe.sample(pipe.encode("a red circle", guidance=False), seed=0, options=options)


def test_bad_candidates_get_one_clear_error(pipe):
    with pytest.raises(HieraQueryError, match="candidates must be at least 1"):
        pipe.generate("a red circle", options=SamplingOptions(steps=2, candidates=0))
    with pytest.raises(HieraQueryError, match="do not split"):
        best_candidates(torch.zeros(5), 2)


def test_the_demo_finds_a_scene_fits_its_own_prompt_better_than_another_prompts_scene():
    """The judgement the self-check rests on, on the bundled demo: each held-out prompt scores the ground-truth render
    of its own scene above the render of the next prompt's scene (the same noise for both)."""
    model = load_checkpoint(bundled_demo())
    pairs = heldout_pairs(24, seed=3)
    prompts = [p for _, p, _ in pairs]
    renders = torch.stack([to_pixels(render(scene)) for _, _, scene in pairs])
    encoded = HieraQueryPipeline(model).encode(prompts)
    with torch.inference_mode():
        own = prompt_fit(model, encoded, [renders], repeats=1, seed=0)
        other = prompt_fit(model, encoded, [renders.roll(-1, 0)], repeats=1, seed=0)
    assert (own > other).float().mean() >= 0.8, (own, other)
    assert own.mean() > 0 > -0.3 > other.mean()  # the prompt helps with its own scene, and hinders with another
