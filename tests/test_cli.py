"""The command line: every scale written as PNG, clear errors with exit code 2."""

import dataclasses

from PIL import Image

from hieraquery_core.checkpoint import save_checkpoint
from hieraquery_core.cli import main

from tiny_models import make_model


def test_generate_edit_describe_write_every_scale(tmp_path, capsys):
    ckpt = save_checkpoint(make_model(), tmp_path / "ckpt")
    out = tmp_path / "out"
    assert main(["generate", "--checkpoint", str(ckpt), "--prompt", "a red circle", "--steps", "2", "--out", str(out), "--batch", "2", "--candidates", "3"]) == 0
    names = sorted(p.name for p in out.glob("generate_*.png"))
    assert names == [f"generate_s{k}_{s}x{s}_{i}.png" for k, s in enumerate((8, 16, 32)) for i in range(2)]
    assert Image.open(out / "generate_s2_32x32_0.png").size == (32, 32)
    assert main(["edit", "--checkpoint", str(ckpt), "--image", str(out / "generate_s2_32x32_0.png"), "--instruction", "make it blue", "--steps", "1,1,2", "--out", str(out)]) == 0
    assert len(list(out.glob("edit_s*.png"))) == 3
    assert main(["describe", "--checkpoint", str(ckpt), "--image", str(out / "edit_s2_32x32_0.png")]) == 0
    printed = capsys.readouterr().out
    assert f"model: checkpoint {ckpt}" in printed and "as the MLLM read it" not in printed
    model = make_model()
    model.config = dataclasses.replace(model.config, plan={"what is to the left": ["left", "right"]})
    planning = save_checkpoint(model, tmp_path / "planning")
    assert main(["generate", "--checkpoint", str(planning), "--prompt", "a circle to the right of a square", "--steps", "1", "--out", str(out)]) == 0
    assert "prompt as the MLLM read it: 'a circle to the right of a square . what is to the left " in capsys.readouterr().out


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path / "missing"), "--prompt", "a"]) == 2
    assert "does not exist" in capsys.readouterr().err
    ckpt = save_checkpoint(make_model(), tmp_path / "ckpt")
    assert main(["generate", "--checkpoint", str(ckpt), "--prompt", "", "--out", str(tmp_path)]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert main(["describe", "--checkpoint", str(ckpt), "--image", str(tmp_path / "nope.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(ckpt), "--prompt", "a", "--candidates", "0", "--out", str(tmp_path)]) == 2
    assert "candidates must be at least 1" in capsys.readouterr().err


def test_provenance_reports_a_published_checkpoints_scores_or_note(tmp_path):
    import json

    from hieraquery_core.cli import provenance

    assert provenance(tmp_path) == ""
    (tmp_path / "stage.json").write_text(json.dumps({"note": "stage 1 of 3, interrupted"}))
    assert provenance(tmp_path) == "; stage 1 of 3, interrupted"
    (tmp_path / "stage.json").write_text(json.dumps({"eval": {"geneval": {"overall": 0.5}, "edit_accuracy": {"overall": 0.25}}}))
    assert provenance(tmp_path) == "; held-out GenEval overall 0.500, edit accuracy 0.250"
    (tmp_path / "stage.json").write_text(json.dumps({"eval": {"settings": {"guidance": 3.0, "refine_strength": 0.2, "edit_refine_strength": 1.0},
                                                               "geneval": {"overall": 0.5}, "edit_accuracy": {"overall": 0.25}}}))
    assert provenance(tmp_path) == ("; held-out GenEval overall 0.500 at guidance 3, refine strength 0.2, one cascade per prompt, "
                                    "edit accuracy 0.250 at edit refine strength 1")
    (tmp_path / "stage.json").write_text(json.dumps({"eval": {"settings": {"guidance": 4.0, "refine_strength": 0.4, "candidates": 8},
                                                               "geneval": {"overall": 0.9}}}))
    assert provenance(tmp_path) == "; held-out GenEval overall 0.900 at guidance 4, refine strength 0.4, the self-check's best of 8 cascades"


def test_demo_runs_with_the_demo_checkpoints_tuned_sampling(tmp_path, capsys):
    from hieraquery_core.cli import build_parser

    demo, generate = (build_parser().parse_args([cmd, *extra]) for cmd, extra in (("demo", []), ("generate", ["--prompt", "a"])))
    assert (demo.steps, demo.guidance, demo.refine_strength, demo.edit_refine_strength, demo.edit_guidance) == ("16", 4.0, 0.4, 0.7, 1.5)  # the bundled demo's tuned settings
    assert (demo.candidates, demo.edit_candidates) == (8, 1)  # the self-check's best of 8 for text-to-image
    assert (generate.steps, generate.guidance, generate.refine_strength, generate.candidates) == ("20", 4.0, 1.0, 1)  # the paper's independent scales, one sample
    ckpt = save_checkpoint(make_model(), tmp_path / "ckpt")
    assert main(["demo", "--checkpoint", str(ckpt), "--steps", "5", "--out", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("demo_generate_s*.png"))) == len(list((tmp_path / "out").glob("demo_edit_s*.png"))) == 3
    captured = capsys.readouterr()
    assert "description of the edited image" in captured.out and "each image is the best of 8 cascades" in captured.out
    # text-to-image refines at 0.4 (5 + 2 + 2 steps) then runs the self-check's 8 passes; the edit refines at 0.7 (5 + 4 + 4)
    assert "17/17" in captured.err and "self-check" in captured.err and "13/13" in captured.err
