"""ShapesWorld's frozen MLLM (train/shapesworld_mllm.py): vocabulary, pretraining step, saved folder, bundled model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hieraquery_core.backbones import build_mllm
from hieraquery_core.config import BackboneSpec
from hieraquery_core.shapesworld import edit_triplets
from train.shapesworld_mllm import ASSET_DIR, answer_loss, evaluate_mllm, main, pixels_of, pretrain, sample_examples, save_mllm, shapesworld_mllm_spec


def small_mllm(seed: int = 0):
    torch.manual_seed(seed)
    return build_mllm(shapesworld_mllm_spec(width=64, layers=1, vision_width=32, vision_depth=1))


def test_vocabulary_covers_every_text_of_the_world():
    mllm = small_mllm()
    rng = np.random.default_rng(0)
    _, questions, answers = sample_examples(rng, 200)
    instructions = [next(edit_triplets(rng)).instruction for _ in range(50)]
    unk = mllm.tokenizer.unk_token_id
    for text in [*questions, *answers, *instructions, "a red circle to the left of a blue square , outline style"]:
        assert unk not in mllm.tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_answer_loss_only_counts_answer_tokens():
    mllm = small_mllm()
    scenes, questions, answers = sample_examples(np.random.default_rng(1), 4)
    pixels = pixels_of(scenes)
    loss = answer_loss(mllm, pixels, questions, answers)
    changed = answer_loss(mllm, pixels, questions, ["yes" if a != "yes" else "no" for a in answers])
    assert torch.isfinite(loss) and not torch.isclose(loss, changed)


def test_pretraining_steps_reduce_the_loss_on_a_fixed_batch():
    mllm = small_mllm()
    scenes, questions, answers = sample_examples(np.random.default_rng(2), 4)
    pixels = pixels_of(scenes)
    before = answer_loss(mllm, pixels, questions, answers).item()
    params = list(mllm.model.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=5e-3)
    for _ in range(8):
        optimizer.zero_grad()
        answer_loss(mllm, pixels, questions, answers).backward()
        optimizer.step()
    assert answer_loss(mllm, pixels, questions, answers).item() < 0.7 * before


def test_pretrain_freezes_the_model_again_and_the_saved_folder_round_trips(tmp_path):
    mllm = small_mllm()
    losses = pretrain(mllm, steps=3, batch=4, log_every=0)
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert not any(p.requires_grad for p in mllm.model.parameters()) and not mllm.model.training
    save_mllm(mllm, tmp_path / "mllm")
    assert (tmp_path / "mllm" / "model.safetensors").is_file()
    loaded = build_mllm(BackboneSpec("qwen2_5_vl", path=str(tmp_path / "mllm")))
    scenes, questions, _ = sample_examples(np.random.default_rng(3), 3)
    pixels = pixels_of(scenes)
    assert loaded.describe(pixels, questions, max_new_tokens=6) == mllm.describe(pixels, questions, max_new_tokens=6)


def test_the_cli_builds_a_finer_vision_grid_with_a_smaller_patch(tmp_path):
    main(["--steps", "1", "--batch", "2", "--patch", "4", "--eval-n", "2", "--out", str(tmp_path)])
    mllm = build_mllm(BackboneSpec("qwen2_5_vl", path=str(tmp_path)))
    assert mllm.vision_features(torch.ones(1, 3, 64, 64)).shape[:3] == (1, 8, 8)  # 16x16 patches of 4 px, merged 2x2


@pytest.mark.skipif(not (ASSET_DIR / "model.safetensors").is_file(), reason="the ShapesWorld MLLM is not trained yet (python -m train.shapesworld_mllm)")
def test_bundled_mllm_understands_held_out_scenes():
    """The committed MLLM answers questions about scenes it never saw (deterministic sample) near its recorded accuracy, above chance (about 0.3)."""
    mllm = build_mllm(BackboneSpec("qwen2_5_vl", path=str(ASSET_DIR)))
    recorded = json.loads((ASSET_DIR / "understanding_scores.json").read_text())
    scores = evaluate_mllm(mllm, n=40, batch=40)
    assert scores["question_accuracy"] >= min(0.6, recorded["question_accuracy"] - 0.15)
