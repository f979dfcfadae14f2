"""ShapesWorld's frozen MLLM (train/shapesworld_mllm.py): vocabulary, pretraining step, saved folder, bundled model."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from hieraquery_core.backbones import build_codec, build_mllm
from hieraquery_core.config import BackboneSpec
from hieraquery_core.errors import HieraQueryError
from hieraquery_core.shapesworld import edit_triplets, is_held_out, random_scene
from hieraquery_core.shapesworld.understanding import GROUNDING_WORDS
from hieraquery_core.tiny import tiny_codec
from train.shapesworld_mllm import (ASSET_DIR, REPEAT, TEXT_SEPARATOR, WHICH_ASSET_DIR, LatentReadout, answer_loss, evaluate_mllm, extend_vocabulary, main, pixels_of, pretrain,
                                    reconstruction_loss, sample_examples, save_mllm, shapesworld_mllm_spec)


def small_mllm(seed: int = 0):
    torch.manual_seed(seed)
    return build_mllm(shapesworld_mllm_spec(width=64, layers=1, vision_width=32, vision_depth=1))


def test_vocabulary_covers_every_text_of_the_world():
    mllm = small_mllm()
    rng = np.random.default_rng(0)
    _, questions, answers = sample_examples(rng, 200, text_fraction=0.3, relation_fraction=0.2)
    instructions = [next(edit_triplets(rng)).instruction for _ in range(50)]
    unk = mllm.tokenizer.unk_token_id
    for text in [*questions, *answers, *instructions, "a red circle to the left of a blue square , outline style"]:
        assert unk not in mllm.tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_answer_loss_only_counts_answer_tokens():
    mllm = small_mllm()
    images, questions, answers = sample_examples(np.random.default_rng(1), 4)
    loss = answer_loss(mllm, images, questions, answers)
    changed = answer_loss(mllm, images, questions, ["yes" if a != "yes" else "no" for a in answers])
    assert torch.isfinite(loss) and not torch.isclose(loss, changed)


def test_pretraining_steps_reduce_the_loss_on_a_fixed_batch():
    mllm = small_mllm()
    images, questions, answers = sample_examples(np.random.default_rng(2), 4)
    before = answer_loss(mllm, images, questions, answers).item()
    params = list(mllm.model.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=5e-3)
    for _ in range(8):
        optimizer.zero_grad()
        answer_loss(mllm, images, questions, answers).backward()
        optimizer.step()
    assert answer_loss(mllm, images, questions, answers).item() < 0.7 * before


def test_pretrain_freezes_the_model_again_and_the_saved_folder_round_trips(tmp_path):
    mllm = small_mllm()
    losses = pretrain(mllm, steps=3, batch=4, log_every=0)
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert not any(p.requires_grad for p in mllm.model.parameters()) and not mllm.model.training
    save_mllm(mllm, tmp_path / "mllm")
    assert (tmp_path / "mllm" / "model.safetensors").is_file()
    loaded = build_mllm(BackboneSpec("qwen2_5_vl", path=str(tmp_path / "mllm")))
    images, questions, _ = sample_examples(np.random.default_rng(3), 3)
    pixels = torch.stack([i[0] for i in images])
    assert loaded.describe(pixels, questions, max_new_tokens=6) == mllm.describe(pixels, questions, max_new_tokens=6)


def test_freeze_embeddings_keeps_the_word_embeddings_and_trains_the_rest():
    mllm = small_mllm()
    embeddings = mllm.model.get_input_embeddings().weight.detach().clone()
    head = mllm.model.get_output_embeddings().weight.detach().clone()
    pretrain(mllm, steps=2, batch=4, log_every=0, freeze_embeddings=True)
    assert torch.equal(mllm.model.get_input_embeddings().weight, embeddings)
    assert not torch.equal(mllm.model.get_output_embeddings().weight, head)
    assert not any(p.requires_grad for p in mllm.model.parameters())


def test_text_examples_have_no_image_and_mix_with_image_examples_in_one_loss():
    """Text-only questions ("{prompt} . {question}") carry no image; a batch mixing both kinds trains."""
    rng = np.random.default_rng(4)
    images, questions, answers = sample_examples(rng, 60, text_fraction=0.5)
    text_only = [not imgs for imgs in images]
    assert 15 < sum(text_only) < 45
    assert all((f" {TEXT_SEPARATOR} " in q) == t for q, t in zip(questions, text_only))
    assert all(imgs[0].shape == (3, 64, 64) for imgs in images if imgs)
    mllm = small_mllm()
    batch = slice(0, 8)
    assert any(text_only[batch]) and not all(text_only[batch])
    loss = answer_loss(mllm, images[batch], questions[batch], answers[batch])
    assert torch.isfinite(loss)
    # The image matters to image questions only: blanking them changes the loss, text-only samples are untouched.
    blank = [[torch.zeros_like(i) for i in imgs] for imgs in images[batch]]
    assert not torch.isclose(loss, answer_loss(mllm, blank, questions[batch], answers[batch]))
    texts = [i for i, t in enumerate(text_only) if t][:4]
    only_text = answer_loss(mllm, [images[i] for i in texts], [questions[i] for i in texts], [answers[i] for i in texts])
    assert torch.isfinite(only_text)


def test_repeat_examples_ask_for_a_training_text_back():
    images, questions, answers = sample_examples(np.random.default_rng(5), 80, text_fraction=1.0, repeat_fraction=0.5)
    repeats = [(q, a) for q, a in zip(questions, answers) if q.endswith(f" {TEXT_SEPARATOR} {REPEAT}")]
    assert not any(images) and 20 < len(repeats) < 60
    assert all(q == f"{a} {TEXT_SEPARATOR} {REPEAT}" and not is_held_out(a) for q, a in repeats)
    assert any("," in a for _, a in repeats) and any(" and " in a for _, a in repeats)


def test_relation_examples_ask_about_a_position_prompt_given_as_text():
    """``relation_fraction``: that share of the examples are relation questions about a training position prompt,
    with no image; 0 leaves the stream exactly as it was."""
    images, questions, answers = sample_examples(np.random.default_rng(6), 80, relation_fraction=0.5)
    relation = [i for i, q in enumerate(questions) if re.search(rf" {re.escape(TEXT_SEPARATOR)} is the \w+ (to the left of|to the right of|above|below) the \w+$", q)]
    assert 20 < len(relation) < 60 and not any(images[i] for i in relation) and {answers[i] for i in relation} == {"yes", "no"}
    assert sample_examples(np.random.default_rng(6), 20, relation_fraction=0.0)[1] == sample_examples(np.random.default_rng(6), 20)[1]
    coloured = sample_examples(np.random.default_rng(6), 40, relation_fraction=1.0, relation_colours=1.0)[1]
    assert all(re.match(r"a (red|green|blue|yellow|purple|orange) \w+ ", q) for q in coloured)  # --relation-colours 1: every prompt names colours
    _, which, shapes = sample_examples(np.random.default_rng(6), 40, relation_fraction=1.0, relation_kind="which")
    assert all(re.search(rf" {re.escape(TEXT_SEPARATOR)} what is (to the left|to the right|above|below)$", q) for q in which) and set(shapes) == {"circle", "square", "triangle"}


def test_evaluation_reports_text_questions_and_describe_answers_without_an_image():
    mllm = small_mllm()
    scores = evaluate_mllm(mllm, n=6, batch=6)
    relation = ("relation_text_train", "relation_text_heldout", "relation_which_train", "relation_which_heldout")
    assert {"question_accuracy", "caption_exact_match", "text_question_accuracy", *relation} <= scores.keys()
    assert all(0.0 <= scores[k] <= 1.0 for k in ("text_question_accuracy", *relation))
    reply = mllm.describe(None, ["a red circle . what color is the circle"], max_new_tokens=2)
    assert len(reply) == 1 and isinstance(reply[0], str)


def test_vision_only_grounding_pretraining_keeps_every_text_condition_exact(tmp_path):
    """``--train vision --grounding-fraction``: the vocabulary gains the grounding words with every old token's id
    kept; only the vision tower and the new words' rows learn, so a text-only prompt's hidden states (the
    text-to-image conditions of Eq. 4) are bit-identical afterwards while the image features change; the
    saved folder reloads with the grown vocabulary and the evaluation scores the grounding answers."""
    mllm = small_mllm()
    old_vocab = mllm.tokenizer.get_vocab()
    prompt = mllm.tokenize(["a red circle and a blue square , outline style"])
    pixels = pixels_of([random_scene(np.random.default_rng(6))])
    with torch.no_grad():
        text_before = mllm.model.model(**prompt).last_hidden_state.clone()
    vision_before = mllm.vision_features(pixels).clone()
    language = {n: p.detach().clone() for n, p in mllm.model.named_parameters() if "visual" not in n and "embed" not in n and "lm_head" not in n}
    losses = pretrain(mllm, steps=3, batch=4, log_every=0, grounding_fraction=0.5, vision_only=True, lr=1e-2)
    assert len(losses) == 3 and all(np.isfinite(losses))
    vocab = mllm.tokenizer.get_vocab()
    assert all(vocab[w] == i for w, i in old_vocab.items()) and set(GROUNDING_WORDS) <= vocab.keys()
    assert mllm.model.get_input_embeddings().weight.shape[0] == len(vocab) == mllm.model.get_output_embeddings().weight.shape[0]
    with torch.no_grad():
        assert torch.equal(mllm.model.model(**prompt).last_hidden_state, text_before)
    assert all(torch.equal(p, language[n]) for n, p in mllm.model.named_parameters() if n in language)
    assert not torch.allclose(mllm.vision_features(pixels), vision_before)
    assert extend_vocabulary(mllm, GROUNDING_WORDS) == []  # already there: nothing added twice
    save_mllm(mllm, tmp_path / "mllm")
    loaded = build_mllm(BackboneSpec("qwen2_5_vl", path=str(tmp_path / "mllm")))
    assert loaded.tokenizer.get_vocab() == vocab
    scores = evaluate_mllm(loaded, n=4, batch=4)
    assert 0.0 <= scores["grounding_within_2px"] <= 1.0 and "where" not in scores


def test_the_latent_readout_teaches_the_vision_tower_the_whole_image():
    """``reconstruction_weight``: the vision features are read into the frozen autoencoder's latents (one patch of
    latents per image token); a few steps on a fixed batch cut that error while the language model stays frozen;
    without a codec the error names what is missing."""
    mllm = small_mllm()
    codec = build_codec(tiny_codec("autoencoder_kl"))
    pixels = pixels_of([random_scene(np.random.default_rng(i)) for i in range(4)])
    grid = mllm.vision_features(pixels[:1]).shape
    readout = LatentReadout(grid[-1], codec.channels, 64 // codec.downsample // grid[1])
    params = [*mllm.model.model.visual.parameters(), *readout.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    before = reconstruction_loss(mllm, codec, readout, pixels).item()
    for _ in range(10):
        optimizer.zero_grad()
        reconstruction_loss(mllm, codec, readout, pixels).backward()
        optimizer.step()
    assert reconstruction_loss(mllm, codec, readout, pixels).item() < 0.7 * before
    losses = pretrain(small_mllm(), steps=2, batch=2, log_every=0, vision_only=True, reconstruction_weight=1.0, codec=codec)
    assert all(np.isfinite(losses))
    with pytest.raises(HieraQueryError, match="autoencoder"):
        pretrain(small_mllm(), steps=1, batch=2, log_every=0, reconstruction_weight=1.0)


def test_the_cli_builds_a_finer_vision_grid_with_a_smaller_patch(tmp_path):
    main(["--steps", "1", "--batch", "2", "--patch", "4", "--eval-n", "2", "--out", str(tmp_path)])
    mllm = build_mllm(BackboneSpec("qwen2_5_vl", path=str(tmp_path)))
    assert mllm.vision_features(torch.ones(1, 3, 64, 64)).shape[:3] == (1, 8, 8)  # 16x16 patches of 4 px, merged 2x2


@pytest.mark.parametrize("asset", [ASSET_DIR, WHICH_ASSET_DIR], ids=["shapesworld-mllm", "shapesworld-mllm-which"])
def test_bundled_mllm_understands_held_out_scenes(asset):
    """Each committed MLLM answers questions about scenes it never saw (deterministic sample) near its recorded accuracy,
    above chance (about 0.3); the one taught "which object stands on this side" answers that about held-out strings."""
    mllm = build_mllm(BackboneSpec("qwen2_5_vl", path=str(asset)))
    recorded = json.loads((asset / "understanding_scores.json").read_text())
    scores = evaluate_mllm(mllm, n=40, batch=40)
    assert scores["question_accuracy"] >= min(0.6, recorded["question_accuracy"] - 0.15)
    if "relation_which_heldout" in recorded:
        assert scores["relation_which_heldout"] >= 0.8
