"""The evaluator harness (train/evaluate.py), the bundled demo checkpoint and the ablation runner's configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hieraquery_core.backbones import build_mllm
from hieraquery_core.checkpoint import bundled_demo, load_checkpoint, save_checkpoint
from hieraquery_core.config import BackboneSpec, HieraQueryConfig
from hieraquery_core.errors import HieraQueryError
from hieraquery_core.model import HieraQuery
from hieraquery_core.pipeline import HieraQueryPipeline, SamplingOptions
from hieraquery_core.shapesworld import HELDOUT_PROMPTS, RELATIONS, TRAIN_PROMPTS, heldout_prompts, render, scene_for_prompt
from hieraquery_core.tiny import tiny_config
from train import evaluate
from train.ablations import VARIANTS, variant_config
from train.evaluate import (EvalSettings, evaluate_ground_truth, evaluate_model, heldout_edits, heldout_flow_loss, main, plan_is_right, plan_report,
                            score_generations, tune_setting, validation_edits)
from train.make_demo import CONFIG, demo_config
from train.shapesworld_mllm import WHICH_ASSET_DIR


def test_ground_truth_images_score_one_everywhere():
    report = evaluate_ground_truth(EvalSettings(n=12, n_edits=8))
    assert report["geneval"]["overall"] == 1.0
    assert set(report["geneval"]) == {"single_object", "two_object", "counting", "colors", "position", "color_attr", "overall"}
    assert report["overall_by_scale"]["32"] == report["overall_by_scale"]["64"] == 1.0
    assert report["attributes"] == {"count": 1.0, "shape": 1.0, "color": 1.0, "style": 1.0, "n_counted": 12}
    assert report["shape_binding"]["right"] == 1.0 and report["shape_binding"]["n"] >= 2  # the two-object and colour-attribution prompts
    assert report["relation_placement"]["as named"] == 1.0 and report["relation_placement"]["n"] == 2  # the two position prompts
    assert report["cross_scale_consistency"] == pytest.approx(1.0)
    assert report["edit_accuracy"]["overall"] == 1.0


def test_blank_and_shuffled_images_score_low():
    prompts = heldout_prompts(12)
    blank = [np.full((64, 64, 3), 255, np.uint8)] * 12
    assert score_generations(prompts, [blank])["geneval"]["overall"] == 0.0
    gt = evaluate_ground_truth(EvalSettings(n=12, n_edits=0))
    assert gt["geneval"]["overall"] == 1.0
    noise = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(12)]
    assert score_generations(prompts, [noise[:12], noise[::-1]])["cross_scale_consistency"] < 0.7


def test_random_model_scores_low_and_the_report_is_complete():
    torch.manual_seed(0)
    model = HieraQuery.from_config(tiny_config(image_size=64)).eval()
    report = evaluate_model(model, EvalSettings(n=6, n_edits=4, batch=6, steps=2, flow_n=6))
    assert report["geneval"]["overall"] < 0.35
    assert report["edit_accuracy"]["overall"] < 0.5
    for kind, shares in report["edit_outcomes"].items():  # every edit sorted into one outcome, matching the accuracy
        assert sum(shares.values()) == pytest.approx(1.0) and shares["correct"] == pytest.approx(report["edit_accuracy"][kind])
    for kind, shares in report["edit_collateral"].items():  # recolours and removals only, a share (or None) per relation
        assert kind in ("recolor", "remove") and kind in report["edit_accuracy"]
        assert list(shares) == list(RELATIONS) and all(v is None or 0 <= v <= 1 for v in shares.values())
    recon = report["reconstruction_accuracy"]
    assert set(recon) == {"in_place", "objects"} and recon["in_place"] <= recon["objects"] < 0.5
    assert set(report["overall_by_scale"]) == {"16", "32", "64"}
    assert 0.0 <= report["cross_scale_consistency"] <= 1.0
    assert len(report["flow_loss"]["per_scale"]) == 3 and report["flow_loss"]["final"] > 0


def test_guidance_tuning_reports_overall_consistency_and_attributes_per_value():
    torch.manual_seed(0)
    model = HieraQuery.from_config(tiny_config(image_size=64)).eval()
    tuning = tune_setting(model, EvalSettings(batch=6, steps=1), "guidance", [1.0, 4.0], n=6)
    assert set(tuning) == {1.0, 4.0}
    for scored in tuning.values():
        assert 0.0 <= scored["overall"] <= 1.0 and 0.0 <= scored["consistency"] <= 1.0
        assert set(scored["attributes"]) == {"count", "shape", "color", "style", "n_counted"}
    with pytest.raises(HieraQueryError, match="cannot tune 'steps'"):
        tune_setting(model, EvalSettings(batch=6, steps=1), "steps", [4], n=6)


def test_edits_are_sampled_with_the_edit_settings_and_text_to_image_with_its_own(monkeypatch):
    """``image_conditioned`` samples with ``edit_guidance`` and ``edit_refine_strength``; ``guidance`` and
    ``refine_strength`` are text-to-image's."""
    import train.evaluate as evaluate

    seen = []

    class Pipe:
        def __init__(self, model):
            pass

        def encode(self, texts, pixels):
            return pixels

        def sample(self, encoded, seed, options):
            seen.append((options.guidance, options.image_guidance, options.refine_strength, options.candidates))
            return type("Out", (), {"final": encoded})()

    monkeypatch.setattr(evaluate, "HieraQueryPipeline", Pipe)
    source = np.full((64, 64, 3), 255, np.uint8)
    settings = EvalSettings(guidance=4.0, refine_strength=0.2, edit_guidance=1.25, edit_refine_strength=0.9, image_guidance=1.75)
    assert np.array_equal(evaluate.image_conditioned(None, settings, [source], ["make it filled"])[0], source)
    assert np.array_equal(evaluate.image_conditioned(None, settings, [source], ["make it filled"], candidates=3)[0], source)
    assert seen == [(1.25, 1.75, 0.9, 1), (1.25, 1.75, 0.9, 3)]


@pytest.mark.parametrize("name", ["edit_refine_strength", "edit_guidance"])
def test_edit_settings_are_tuned_on_validation_edits_never_the_heldout_ones(monkeypatch, name):
    """``edit_refine_strength`` and ``edit_guidance`` are scored by edit accuracy on validation edits, sampled with each value tried."""
    import train.evaluate as evaluate
    from hieraquery_core.shapesworld import render

    validation, heldout = validation_edits(12), heldout_edits(12)
    assert not {t.instruction + t.source.canonical() for t in validation} & {t.instruction + t.source.canonical() for t in heldout}
    targets = {t.instruction + t.source.canonical(): render(t.target) for t in validation}
    seen = []

    def fake_sampler(model, settings, sources, texts, candidates=1):  # 0.5 paints every target exactly, anything else returns the input
        seen.append(getattr(settings, name))
        return [targets[text + t.source.canonical()] if getattr(settings, name) == 0.5 else source
                for source, text, t in zip(sources, texts, validation)]

    monkeypatch.setattr(evaluate, "image_conditioned", fake_sampler)
    tuning = tune_setting(None, EvalSettings(), name, [1.0, 0.5], n=12)
    assert seen == [1.0, 0.5] and tuning[0.5]["overall"] == 1.0 and tuning[1.0]["overall"] < 0.5
    assert set(tuning[1.0]) == {"recolor", "remove", "add", "restyle", "overall"}


def test_position_strings_paint_every_training_and_heldout_position_string(monkeypatch, tmp_path, capsys):
    """``--position-strings 2``: each split's position strings twice each; a model that paints each prompt's scene
    passes them all, one that paints them upside down passes none and is told "opposite" every time, and one that
    turns only the outline strings is seen doing so string by string."""
    asked = []

    def paint(flip):
        def generate(model, settings, prompts):
            asked.append([p for _, p in prompts])
            scenes = [(p, scene_for_prompt(p, np.random.default_rng(i))) for i, (_, p) in enumerate(prompts)]
            return [[render(s)[::-1, ::-1] if flip(p) else render(s) for p, s in scenes]]  # a half turn swaps left/right and above/below
        return generate

    monkeypatch.setattr(evaluate, "generate_heldout", paint(lambda prompt: "outline" in prompt))
    for split in evaluate.position_strings(None, EvalSettings(), 2).values():
        assert len(split["by string"]) == split["n"] / 2 and 0 < split["position"] < 1
        for prompt, row in split["by string"].items():
            outline = "outline" in prompt
            assert (row["n"], row["position"], row["relation_placement"]["opposite"]) == (2, 0.0 if outline else 1.0, 1.0 if outline else 0.0)
    asked.clear()
    monkeypatch.setattr(evaluate, "generate_heldout", paint(lambda prompt: False))
    right = evaluate.position_strings(None, EvalSettings(), 2)
    assert [sorted(set(a)) for a in asked] == [sorted(TRAIN_PROMPTS["position"]), sorted(HELDOUT_PROMPTS["position"])]
    assert [len(a) for a in asked] == [2 * len(TRAIN_PROMPTS["position"]), 2 * len(HELDOUT_PROMPTS["position"])]
    assert {split: (r["n"], r["position"], r["relation_placement"]["as named"]) for split, r in right.items()} == {
        "train": (70, 1.0, 1.0), "heldout": (26, 1.0, 1.0)}
    monkeypatch.setattr(evaluate, "generate_heldout", paint(lambda prompt: True))
    turned = evaluate.position_strings(None, EvalSettings(), 1)
    assert all(r["position"] == 0.0 and r["relation_placement"]["opposite"] == 1.0 for r in turned.values())
    torch.manual_seed(0)  # and the command writes them into its report
    folder = save_checkpoint(HieraQuery.from_config(tiny_config(image_size=64)).eval(), tmp_path / "tiny")
    main(["--checkpoint", str(folder), "--n", "6", "--n-edits", "0", "--steps", "1", "--flow-n", "0", "--position-strings", "1", "--out", str(tmp_path / "r.json")])
    assert set(json.loads((tmp_path / "r.json").read_text())["position_strings"]) == {"train", "heldout"}
    for bad in (["--position-strings", "-1"], ["--n", "0"], ["--n-edits", "-1"]):  # one usage error each, before any model is loaded
        with pytest.raises(SystemExit) as exit_:
            main(["--checkpoint", str(folder), *bad, "--out", str(tmp_path / "bad.json")])
        assert exit_.value.code == 2 and bad[0] in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()


def test_a_plan_is_right_when_every_answer_names_the_shape_on_its_side():
    plan = {"what is to the left": ["left", "right"], "what is to the right": ["left", "right"], "what is above": ["above", "below"]}
    prompt = "a circle to the right of a triangle, outline style"
    assert plan_is_right(prompt, f"{prompt} . what is to the left triangle . what is to the right circle", plan)
    assert not plan_is_right(prompt, f"{prompt} . what is to the left triangle . what is to the right triangle", plan)
    assert not plan_is_right(prompt, f"{prompt} . what is to the left circle", plan)
    assert not plan_is_right(prompt, prompt, plan)  # nothing asked
    assert plan_is_right("a red square above a blue circle", "a red square above a blue circle . what is above square", plan)
    with pytest.raises(HieraQueryError, match="answers none of the plan's questions"):
        plan_is_right(prompt, f"{prompt} . what is below circle", plan)
    with pytest.raises(HieraQueryError, match="is not a planned form of"):
        plan_is_right(prompt, "a circle . what is to the left circle", plan)


def test_the_plan_report_splits_position_by_the_mllms_answers():
    """The bundled demo's MLLM answers both sides right for 11 of the 13 held-out position strings; the report finds
    the other two, and ground-truth images pass on both sides of the split."""
    model = load_checkpoint(bundled_demo())
    strings = sorted(HELDOUT_PROMPTS["position"])
    prompts = [("position", p) for p in strings] + [("single_object", "a red circle")]
    images = [render(scene_for_prompt(p, np.random.default_rng(i))) for i, (_, p) in enumerate(prompts)]
    with torch.inference_mode():
        report = plan_report(model, prompts, images)
    assert report["right"] == pytest.approx(11 / 13)
    assert report["where right"] == {"n": 11, "position": 1.0} and report["where wrong"] == {"n": 2, "position": 1.0}
    assert report["wrong"] == [f"a square above a {shape} . what is above square . what is below square" for shape in ("circle", "triangle")]


def test_refinement_makes_the_demo_paint_one_scene_at_every_scale():
    model = load_checkpoint(bundled_demo())
    with torch.inference_mode():
        tuning = tune_setting(model, EvalSettings(batch=12, steps=8), "refine_strength", [1.0, 0.25], n=12)
    # each scale starting from the previous one re-noised keeps the coarse scale's objects (0.15 -> 0.88 on 300 prompts)
    assert tuning[0.25]["consistency"] > tuning[1.0]["consistency"] + 0.2


def test_heldout_flow_loss_is_deterministic_and_shows_the_demo_uses_its_prompt():
    model = load_checkpoint(bundled_demo())
    with torch.inference_mode():
        first, again = (heldout_flow_loss(model, EvalSettings(batch=16, flow_n=16)) for _ in range(2))
    assert first == again  # fixed noise, no prompt dropout
    assert first["final"] == first["per_scale"][-1] < first["final_rotated_prompts"]
    assert first["prompt_gain"] > 0.05  # another scene's prompt predicts the held-out image worse
    by_sigma = first["final_by_sigma"]
    assert set(by_sigma) == {"0.3", "0.6", "0.9"}
    assert abs(sum(v["final"] for v in by_sigma.values()) / 3 - first["final"]) < 1e-4  # the average is over these noise levels
    assert by_sigma["0.9"]["final"] > by_sigma["0.3"]["final"]  # near pure noise the image is harder to predict


def test_heldout_edits_are_deterministic_and_cover_every_kind():
    first, second = heldout_edits(40), heldout_edits(40)
    assert [t.instruction for t in first] == [t.instruction for t in second]
    assert {t.kind for t in first} == {"recolor", "remove", "add", "restyle"}


@pytest.mark.skipif(bundled_demo() is None, reason="the demo checkpoint is not trained yet (python -m train.make_demo)")
def test_bundled_demo_generates_every_scale_at_its_size_and_keeps_the_mllm_frozen():
    model = load_checkpoint(bundled_demo())
    out = HieraQueryPipeline(model).generate(["a red circle", "two squares"], seed=0, options=SamplingOptions(steps=2))
    assert [tuple(img.shape) for img in out.images] == [(2, 3, 16, 16), (2, 3, 32, 32), (2, 3, 64, 64)]
    frozen = build_mllm(BackboneSpec("qwen2_5_vl", path=str(WHICH_ASSET_DIR))).model.state_dict()  # the MLLM its DiT was trained on
    embedded = model.mllm.model.state_dict()
    assert embedded.keys() == frozen.keys() and all(torch.equal(embedded[k], frozen[k]) for k in frozen), "training changed the frozen MLLM"
    answer = model.mllm.describe(torch.ones(1, 3, 64, 64), ["how many circles are there"], max_new_tokens=3)[0]
    assert answer in ("zero", "one", "two", "three", "four")


def test_ablation_variants_have_the_papers_scale_sets_and_query_counts():
    base = HieraQueryConfig.load(CONFIG)
    by_name = {v.name: v for v in VARIANTS}
    expected = {
        "single-256": ([(16, 16)], [1.0], 256, 0.0),
        "single-336": ([(16, 21)], [1.0], 336, 0.0),
        "multi": ([(4, 4), (8, 8), (16, 16)], [0.25, 0.5, 1.0], 336, 0.0),
        "multi+align": ([(4, 4), (8, 8), (16, 16)], [0.25, 0.5, 1.0], 336, 0.5),
        "1.0x+align": ([(16, 16)], [1.0], 256, 0.5),
        "0.25x+1.0x+align": ([(4, 4), (16, 16)], [0.25, 1.0], 272, 0.5),
        "0.5x+1.0x+align": ([(8, 8), (16, 16)], [0.5, 1.0], 320, 0.5),
    }
    assert set(by_name) == set(expected)
    for name, (grids, resolutions, queries, weight) in expected.items():
        config = variant_config(base, by_name[name])
        assert [s.grid for s in config.scales] == grids and [s.resolution for s in config.scales] == resolutions
        assert config.num_queries == by_name[name].num_queries == queries
        assert config.alignment.weight == weight
        assert config.dit == base.dit and config.connector == base.connector and config.mllm == base.mllm
        HieraQueryConfig.from_dict(config.to_dict())
    assert [s.grid for s in base.scales] == [(4, 4), (8, 8), (16, 16)]


@pytest.mark.parametrize("config_file", sorted(CONFIG.parent.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_demo_config_builds_a_model_that_paints_every_scale(config_file):
    model = HieraQuery.from_config(demo_config(config_file)).eval()
    out = HieraQueryPipeline(model).generate(["a red circle"], seed=0, options=SamplingOptions(steps=1))
    assert [tuple(img.shape[-2:]) for img in out.images] == [(16, 16), (32, 32), (64, 64)]
    assert model.mllm.supports_images and not any(p.requires_grad for p in model.mllm.parameters())


def test_the_command_tunes_on_validation_prompts_and_edits_and_reports_each_setting(tmp_path):
    torch.manual_seed(0)
    folder = save_checkpoint(HieraQuery.from_config(tiny_config(image_size=64)).eval(), tmp_path / "tiny")
    main(["--checkpoint", str(folder), "--n", "6", "--n-edits", "0", "--steps", "2", "--flow-n", "0", "--batch", "6",
          "--tune-guidance", "1,4", "--tune-refine-strength", "1,0.5", "--tune-candidates", "1,2", "--tune-edit-guidance", "1,2", "--tune-n", "6",
          "--out", str(tmp_path / "report.json")])
    report = json.loads((tmp_path / "report.json").read_text())
    guidance, refine = report["guidance_tuning_on_validation_prompts"], report["refine_strength_tuning_on_validation_prompts"]
    assert set(guidance) == {"1.0", "4.0"} and set(refine) == {"1.0", "0.5"}
    chosen = report["settings"]
    assert str(chosen["guidance"]) == max(guidance, key=lambda v: guidance[v]["overall"])  # the best is used (the first on a tie)
    assert str(chosen["refine_strength"]) == max(refine, key=lambda v: refine[v]["overall"])
    candidates = report["candidates_tuning_on_validation_prompts"]
    assert set(candidates) == {"1.0", "2.0"} and chosen["candidates"] == int(float(max(candidates, key=lambda v: candidates[v]["overall"])))
    assert isinstance(chosen["candidates"], int)  # a count, though the command line gives floats
    edit_guidance = report["edit_guidance_tuning_on_validation_edits"]  # scored on validation edits, and named so
    assert set(edit_guidance) == {"1.0", "2.0"} and set(edit_guidance["1.0"]) >= {"overall"}
    assert str(chosen["edit_guidance"]) == max(edit_guidance, key=lambda v: edit_guidance[v]["overall"])


def test_the_bundled_demos_recorded_scores_are_its_committed_report():
    """``stage.json``'s ``eval`` (what the CLI banner prints) is ``results/demo-source-edit.json``, the report the
    README's table quotes, of the run the checkpoint was published from."""
    from pathlib import Path

    stage = json.loads((bundled_demo() / "stage.json").read_text())
    report = json.loads((Path(__file__).parents[1] / stage["results"]).read_text())
    assert stage["results"] == "results/demo-source-edit.json"
    for key in ("settings", "geneval", "edit_accuracy", "reconstruction_accuracy"):
        assert stage["eval"][key] == report[key], key
    runs = stage["command"].split("--runs ")[1].split()[0]  # the report scored that run's final model
    assert (report.get("checkpoint") or report.get("source")) == f"{runs}/edit/final"
