"""The one-node jobs' logic without ComfyUI (Generate, Edit / Style Transfer, Describe), on a tiny checkpoint:
SANA + Qwen2.5-VL in pixel space, scales 4x4/8x8/16x16 queries at 8/16/32 px."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nodes_support import checkpoint_root, loaded, pack_module  # noqa: F401

jobs = pack_module("nodes.jobs")

FAST = {"steps": 2, "guidance": 4.0}
EDIT = {"steps": 2, "guidance": 4.0, "image_guidance": 1.5}


def test_generate_gives_every_scale_coarse_to_fine_for_a_batch(loaded):
    scales = jobs.generate(loaded, "a red circle", seed=1, batch_size=2, **FAST)
    assert [tuple(s.shape) for s in scales] == [(2, 8, 8, 3), (2, 16, 16, 3), (2, 32, 32, 3)]
    assert all(s.device.type == "cpu" and 0 <= s.min() and s.max() <= 1 for s in scales)
    assert torch.equal(scales[-1], jobs.generate(loaded, "a red circle", seed=1, batch_size=2, **FAST)[-1])
    assert not torch.equal(scales[-1], jobs.generate(loaded, "a red circle", seed=2, batch_size=2, **FAST)[-1])
    wide = jobs.generate(loaded, "a red circle", seed=1, width=64, height=32, **FAST)
    assert [tuple(s.shape[1:3]) for s in wide] == [(8, 16), (16, 32), (32, 64)]
    picked = jobs.generate(loaded, "a red circle", seed=1, batch_size=2, candidates=3, **FAST)  # the self-check's pick of 3 per image
    assert [tuple(s.shape) for s in picked] == [(2, 8, 8, 3), (2, 16, 16, 3), (2, 32, 32, 3)]


def test_scales_batch_stacks_every_scale_enlarged_to_the_final_size(loaded):
    scales = jobs.generate(loaded, "a red circle", seed=1, batch_size=2, **FAST)
    batch = jobs.scales_batch(scales)
    assert batch.shape == (6, 32, 32, 3)
    assert torch.equal(batch[4:], scales[-1])
    assert torch.equal(batch[:2, ::4, ::4], scales[0])  # nearest neighbour: each coarse pixel becomes a 4x4 block
    assert torch.equal(batch[2:4], F.interpolate(scales[1].permute(0, 3, 1, 2), size=(32, 32), mode="nearest").permute(0, 2, 3, 1))


def test_generate_progress_counts_every_step_of_every_scale(loaded):
    events = []
    jobs.generate(loaded, "a red circle", seed=0, progress=events.append, **FAST)
    assert [(e.value, e.total, e.scale) for e in events] == [(1, 6, 0), (2, 6, 0), (3, 6, 1), (4, 6, 1), (5, 6, 2), (6, 6, 2)]
    assert [tuple(e.preview().shape) for e in events[::2]] == [(1, 3, 8, 8), (1, 3, 16, 16), (1, 3, 32, 32)]
    refined = []
    jobs.generate(loaded, "a red circle", seed=0, steps=4, guidance=4.0, refine_strength=0.5, progress=refined.append)
    # scales 1 and 2 start half-way from the previous scale: 4 + 2 + 2 steps, planned as such from the first step
    assert [e.value for e in refined] == list(range(1, 9)) and {e.total for e in refined} == {8}
    checked = []
    jobs.generate(loaded, "a red circle", seed=0, candidates=3, progress=checked.append, **FAST)
    # then the self-check's 8 passes (4 noise levels x 2 draws), previewing the first candidate's final image
    assert [(e.value, e.total, e.scale) for e in checked[6:]] == [(6 + i, 14, 3) for i in range(1, 9)]
    assert {e.total for e in checked} == {14} and tuple(checked[-1].preview().shape) == (1, 3, 32, 32)


def test_cancel_stops_the_self_check_between_its_passes(loaded):
    """A Cancel (the sink raises) during the self-check stops it at once, as during the denoising steps."""
    seen = []

    def cancel_in_the_check(event):
        seen.append(event.value)
        if event.scale == 3:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        jobs.generate(loaded, "a red circle", seed=0, candidates=2, progress=cancel_in_the_check, **FAST)
    assert seen == list(range(1, 8))


def test_edit_keeps_size_and_batch_and_chains(loaded):
    source = torch.rand(2, 32, 32, 3)
    once = jobs.edit(loaded, source, "make it blue", seed=0, **EDIT)
    assert [tuple(s.shape) for s in once] == [(2, 8, 8, 3), (2, 16, 16, 3), (2, 32, 32, 3)]
    twice = jobs.edit(loaded, once[-1], "remove the red circle", seed=0, **EDIT)[-1]
    assert twice.shape == (2, 32, 32, 3) and not torch.equal(twice, once[-1])
    stronger = jobs.edit(loaded, source, "make it blue", seed=0, **{**EDIT, "image_guidance": 3.0})[-1]
    assert not torch.equal(stronger, once[-1])
    assert jobs.edit(loaded, torch.rand(1, 16, 24, 3), "make it outline style", seed=0, **EDIT)[-1].shape == (1, 16, 24, 3)
    assert [tuple(s.shape) for s in jobs.edit(loaded, source, "make it blue", seed=0, candidates=2, **EDIT)] == [(2, 8, 8, 3), (2, 16, 16, 3), (2, 32, 32, 3)]


def test_describe_answers_one_line_per_image(loaded):
    answer = jobs.describe(loaded, torch.rand(1, 32, 32, 3), "describe the image", max_new_tokens=4)
    assert isinstance(answer, str) and answer.strip() and "\n" not in answer
    assert len(jobs.describe(loaded, torch.rand(2, 32, 32, 3), "how many circles are there", max_new_tokens=4).split("\n")) == 2


@pytest.mark.parametrize(("call", "message"), [
    (lambda m: jobs.generate(m, " ", seed=0, **FAST), "the prompt is empty"),
    (lambda m: jobs.generate(m, "a red circle", seed=0, width=36, height=36, **FAST), "a 36x36 target gives scale 4x4 a 9x9 image"),
    (lambda m: jobs.edit(m, torch.rand(1, 32, 32, 3), "", seed=0, **EDIT), "the instruction is empty"),
    (lambda m: jobs.edit(m, torch.rand(1, 32, 32, 4), "make it blue", seed=0, **EDIT), "alpha channel"),
    (lambda m: jobs.edit(m, torch.rand(1, 12, 12, 3), "make it blue", seed=0, **EDIT), "a 12x12 target gives scale 4x4 a 3x3 image"),
    (lambda m: jobs.describe(m, torch.rand(1, 32, 32, 3), ""), "the question is empty"),
    (lambda m: jobs.describe(m, torch.rand(1, 32, 32, 4), "describe the image"), "alpha channel"),
])
def test_bad_input_is_one_clear_error(loaded, call, message):
    with pytest.raises(ValueError, match=message):
        call(loaded)
