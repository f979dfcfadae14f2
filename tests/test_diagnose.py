"""The condition diagnostics (train/diagnose.py): variance shares, the vision shape probe, the command line."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hieraquery_core.checkpoint import save_checkpoint
from hieraquery_core.shapesworld import spec
from hieraquery_core.shapesworld.prompts import HELDOUT_PROMPTS, TRAIN_PROMPTS, parse_prompt
from train.diagnose import (BINDING_SLOTS, CONTRASTS, FACTORS, binding_probes, token_probes, checkpoint_shares, factor_prompts, main, position_variant, random_query_contrasts, random_query_shares,
                            relation_contrasts, ridge_accuracy, ridge_fit, slot_word, variance_shares, vision_position_probe, vision_shape_probe)
from tests.tiny_models import make_model


def test_factor_prompts_cover_every_colour_shape_and_style_once():
    prompts, levels = factor_prompts()
    assert len(prompts) == len(set(prompts)) == 6 * 3 * 2
    assert prompts[0] == "a red circle" and "a red circle, outline style" in prompts
    for factor in FACTORS:
        counts = {level: levels[factor].count(level) for level in set(levels[factor])}
        assert len(set(counts.values())) == 1  # balanced design


def test_variance_shares_attribute_variance_to_the_word_that_causes_it():
    _, levels = factor_prompts()
    rng = np.random.default_rng(0)
    codes = {f: {level: rng.normal(size=8) for level in set(levels[f])} for f in FACTORS}

    def states(weights):
        rows = [sum(w * codes[f][levels[f][i]] for f, w in weights.items()) for i in range(len(levels["color"]))]
        return torch.tensor(np.stack(rows))

    only_colour = variance_shares(states({"color": 1.0}), levels)
    assert only_colour["color"] == pytest.approx(1.0) and only_colour["shape"] < 1e-12 and only_colour["style"] < 1e-12
    mixed = variance_shares(states({"color": 1.0, "shape": 0.1}), levels)
    assert 0 < mixed["shape"] < 0.05 < 0.95 < mixed["color"]
    assert sum(mixed.values()) == pytest.approx(1.0)  # additive main effects in a balanced design


def test_ridge_probe_reads_separable_labels_and_not_random_ones():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=400)
    separable = np.eye(3)[labels] * 3 + rng.normal(size=(400, 3)) * 0.1
    noise = rng.normal(size=(400, 5))
    assert ridge_accuracy(separable[:200], labels[:200], separable[200:], labels[200:]) == 1.0
    assert ridge_accuracy(noise[:200], labels[:200], noise[200:], labels[200:]) < 0.5


def test_ridge_regression_recovers_a_linear_map_and_shrinks_to_the_mean_not_to_zero():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 4))
    y = x @ np.array([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0], [2.0, 1.0]]) + np.array([30.0, 20.0])
    assert np.abs(ridge_fit(x[:200], y[:200], alpha=1e-6)(x[200:]) - y[200:]).max() < 1e-3
    flat = ridge_fit(x[:200], y[:200], alpha=1e9)(x[200:])
    assert np.allclose(flat, y[:200].mean(0), atol=1e-3)  # the intercept is not penalised


def test_ridge_with_more_features_than_samples_is_the_same_regression():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 80)), rng.normal(size=(30, 2))
    mean, std = x.mean(0), x.std(0) + 1e-6
    a = (x - mean) / std
    primal = np.linalg.solve(a.T @ a + 5.0 * np.eye(80), a.T @ (y - y.mean(0)))  # the normal equations, 80 x 80
    test = rng.normal(size=(7, 80))
    assert np.allclose(ridge_fit(x, y, alpha=5.0)(test), (test - mean) / std @ primal + y.mean(0), atol=1e-8)


class WordCodes:
    """A stand-in model whose query states and conditions are one-hot codes of chosen slots of each prompt."""

    def __init__(self, slots):
        self.slots, self.config = slots, SimpleNamespace(scales=[SimpleNamespace(name="2x2")])

    def encode(self, prompts):
        vocabulary, rows = list(spec.COLORS + spec.SHAPES), []
        for prompt in prompts:
            objects = parse_prompt(prompt).objects
            rows.append(np.concatenate([np.eye(len(vocabulary))[vocabulary.index(slot_word(objects, slot))] for slot in self.slots]))
        return [torch.tensor(np.stack(rows))[:, None]]

    def condition(self, states):
        return [SimpleNamespace(tokens=t) for t in states]


def test_binding_probes_read_the_slots_a_condition_keeps_and_not_the_one_it_drops():
    complete = binding_probes(WordCodes(BINDING_SLOTS))
    assert set(complete) == {"query_states", "conditions"}
    assert all(v == 1.0 for part in complete.values() for v in part["2x2"].values())
    lost = binding_probes(WordCodes(("first colour", "second colour")))["conditions"]["2x2"]  # the shapes never reach the condition
    assert lost["first colour"] == lost["second colour"] == 1.0
    assert lost["first shape"] < 0.5 and lost["second shape"] < 0.5  # chance is a third


class SlotTokens(WordCodes):
    """A stand-in whose condition has one token per slot: each token codes its own slot's word, or (``mixed``) every slot's."""

    def __init__(self, mixed: bool):
        super().__init__(BINDING_SLOTS)
        self.mixed = mixed

    def encode(self, prompts):
        width = len(spec.COLORS + spec.SHAPES)
        codes = super().encode(prompts)[0][:, 0].reshape(len(prompts), len(BINDING_SLOTS), width)
        return [codes.reshape(len(prompts), 1, -1).expand(-1, len(BINDING_SLOTS), -1) if self.mixed
                else torch.nn.functional.pad(codes, (0, width * (len(BINDING_SLOTS) - 1)))]


def test_token_probes_tell_tokens_that_hold_one_objects_shape_from_tokens_that_hold_both():
    for part in ("query_states", "conditions"):
        separate, mixed = token_probes(SlotTokens(mixed=False))[part], token_probes(SlotTokens(mixed=True))[part]
        assert separate["tokens"] == mixed["tokens"] == 4
        assert separate["one_shape_only"] == 2 and separate["both_shapes"] == 0  # the two shape tokens, each its own
        assert separate["first_shape_token"][0] == separate["second_shape_token"][0] == 1.0
        assert separate["first_shape_token"][1] < 0.5 and separate["second_shape_token"][1] < 0.5
        assert mixed["one_shape_only"] == 0 and mixed["both_shapes"] == 4 and mixed["first_shape_token"] == [1.0, 1.0]


class PositionCodes:
    """A stand-in model whose states are one-hot codes of a position prompt's first shape, relation axis (left/right or
    above/below), relation direction (left/above or right/below), second shape and style, each block scaled by its
    weight: a small ``direction`` is a relation word whose opposite barely moves the states."""

    def __init__(self, **weights):
        self.weights, self.config = weights, SimpleNamespace(scales=[SimpleNamespace(name="2x2")])

    def encode(self, prompts):
        words = {"first": spec.SHAPES, "axis": (True, False), "direction": (True, False), "second": spec.SHAPES, "style": ("filled", "outline")}
        rows = []
        for prompt in prompts:
            req = parse_prompt(prompt)
            said = {"first": req.objects[0].shape, "axis": req.relation in ("left", "right"), "direction": req.relation in ("left", "above"),
                    "second": req.objects[1].shape, "style": req.style}
            rows.append(np.concatenate([self.weights[k] * np.eye(len(v))[v.index(said[k])] for k, v in words.items()]))
        return [torch.tensor(np.stack(rows))[:, None]]

    def condition(self, states):
        return [SimpleNamespace(tokens=t) for t in states]


def test_position_variants_change_one_thing():
    assert position_variant("a circle to the left of a square", "relation word") == "a circle to the right of a square"
    assert position_variant("a circle above a square, outline style", "order") == "a square above a circle, outline style"
    assert position_variant("a circle below a square", "style") == "a circle below a square, outline style"
    assert all(position_variant(position_variant(p, c), c) == p for p in ("a triangle below a circle", "a square to the right of a circle, outline style") for c in CONTRASTS)


def test_relation_contrasts_tell_a_read_relation_word_from_an_ignored_one():
    """States that weigh the relation word most move most when it changes, and a held-out string then lies nearest to a
    training string with its own relation word; states that barely code it hardly move, and the held-out strings lie
    nearest to the ones with the other relation word (the diagnosis of the demo's "opposite" placements)."""
    read = relation_contrasts(PositionCodes(first=1.0, axis=1.0, direction=3.0, second=1.0, style=1.0))
    faint = relation_contrasts(PositionCodes(first=1.0, axis=1.0, direction=0.1, second=1.0, style=3.0))
    for report in (read, faint):
        assert set(report) == {"query_states", "conditions"} and report["query_states"] == report["conditions"]
        assert set(report["conditions"]["2x2"]) == {*CONTRASTS, "held-out nearest: the other relation word"}
    read, faint = read["conditions"]["2x2"], faint["conditions"]["2x2"]
    assert read["relation word"] < read["style"] and read["held-out nearest: the other relation word"] == 0.0
    twin_trained = np.mean([position_variant(p, "relation word") in TRAIN_PROMPTS["position"] for p in HELDOUT_PROMPTS["position"]])
    assert faint["relation word"] > 0.99 and faint["style"] < 0
    assert faint["held-out nearest: the other relation word"] == twin_trained > 0  # every held-out string whose twin trains


def test_checkpoint_and_mllm_reports_on_a_tiny_model(tmp_path, capsys):
    model = make_model()
    shares = checkpoint_shares(model)
    for part in ("query_states", "conditions"):
        assert list(shares[part]) == [s.name for s in model.config.scales]
        for per_scale in shares[part].values():
            assert set(per_scale) == set(FACTORS) and all(0 <= v <= 1 for v in per_scale.values())
            assert sum(per_scale.values()) <= 1 + 1e-6
    random = random_query_shares(model.mllm, grid=(2, 2), seeds=1)
    contrasts = random_query_contrasts(model.mllm, grid=(2, 2), seeds=2)
    assert set(contrasts) == {*CONTRASTS, "held-out nearest: the other relation word"} and all(-1 <= contrasts[c] <= 1 for c in CONTRASTS)
    assert contrasts["relation word"] < 1 - 1e-6  # the words reach an untrained MLLM's states
    assert random["color"] > 0 and random["shape"] > 0  # an untrained MLLM passes on every word
    assert 0 <= vision_shape_probe(model.mllm, n=12, batch=12) <= 1
    position = vision_position_probe(model.mllm, n=12, batch=12)
    assert set(position) == {"mean_px", "within_2px", "baseline_mean_px"} and 0 <= position["within_2px"] <= 1
    assert 0 < position["baseline_mean_px"] < 32 and position["mean_px"] >= 0
    save_checkpoint(model, tmp_path / "tiny")
    main(["--checkpoint", str(tmp_path / "tiny"), "--out", str(tmp_path / "report.json")])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["conditions"] == json.loads(capsys.readouterr().out)["conditions"]
    assert list(report["binding_probes"]["conditions"]) == [s.name for s in model.config.scales]
    assert all(set(per_scale) == set(BINDING_SLOTS) for per_scale in report["binding_probes"]["conditions"].values())
    assert report["token_probes"]["conditions"]["tokens"] == model.config.scales[-1].num_queries
    assert list(report["relation_contrasts"]["conditions"]) == [s.name for s in model.config.scales]


def test_the_command_needs_something_to_diagnose():
    with pytest.raises(SystemExit):
        main([])
