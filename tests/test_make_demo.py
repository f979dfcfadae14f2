"""train/make_demo.py and train/ablations.py train through the trainer (train/train.py): the three stages chained by
--init-from, --resume after an interruption, evaluation and publishing on the main process only (also under
``accelerate launch`` with two CPU processes), and the ablation runner's cached trainer runs."""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hieraquery_core import shapesworld as sw
from hieraquery_core.checkpoint import BUNDLED_DEMO_EDITS, BUNDLED_DEMO_PROMPT, load_checkpoint
from hieraquery_core.model import HieraQuery
from hieraquery_core.tiny import tiny_config
from test_train_distributed import launch_two_cpu_processes
from train import ablations, make_demo, publish_demo
from train.evaluate import EvalSettings
from train.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


class Stop(Exception):
    """Stands for make_demo being killed in the middle of a stage."""


def demo_args(root: Path, *extra: str) -> list[str]:
    """A make_demo command line for a tiny model (32 px, random Qwen2.5-VL + SANA), everything under ``root``."""
    return ["--config", str(root / "cfg.json"), "--steps", "2,2,1", "--batch", "1", "--threads", "1", "--save-every", "1", "--runs", str(root / "runs"),
            "--publish-to", str(root / "asset"), "--eval-n", "6", "--eval-edits", "2", "--eval-steps", "1", "--eval-flow-n", "4", *extra]


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_checkpoint(a).state_dict(), load_checkpoint(b).state_dict()
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory):
    """make_demo killed after the reconstruction stage's step-1 checkpoint, rerun without and then with --resume."""
    root = tmp_path_factory.mktemp("demo")
    tiny_config("sana", "qwen2_5_vl", "pixel").save(root / "cfg.json")

    def stop(trainer, step):
        if trainer.cfg.stage == "reconstruction" and step == 1:
            raise Stop()

    with pytest.MonkeyPatch.context() as patch:  # every stage calls back after each step; the reconstruction stage dies at step 1
        patch.setattr(make_demo, "train", lambda cfg: train(dataclasses.replace(cfg, eval_every=1), callbacks=[stop]))
        with pytest.raises(Stop):
            make_demo.main(demo_args(root))
    t2i_weights = root / "runs" / "t2i" / "final" / "hieraquery.safetensors"
    t2i_written = t2i_weights.stat().st_mtime_ns
    without_resume = make_demo.main(demo_args(root))
    resumed = make_demo.main(demo_args(root, "--resume"))
    return root, t2i_written, without_resume, resumed


def test_resume_continues_the_interrupted_stage_and_publishes(interrupted_then_resumed):
    root, t2i_written, without_resume, resumed = interrupted_then_resumed
    runs = root / "runs"
    assert without_resume == 2  # the trainer refuses to overwrite the run's checkpoints without --resume
    assert resumed == 0
    assert (runs / "t2i" / "final" / "hieraquery.safetensors").stat().st_mtime_ns == t2i_written, "--resume retrained a finished stage"
    recon_log = (runs / "reconstruction" / "train.log").read_text()
    assert "resumed at step 1" in recon_log and "done: step 2" in recon_log
    assert "initialising from " + str(runs / "reconstruction" / "final") in (runs / "edit" / "train.log").read_text()
    report = json.loads((runs / "eval.json").read_text())
    assert report["checkpoint"] == str(runs / "edit" / "final") and report["settings"]["n"] == 6 and "overall" in report["edit_accuracy"]
    assert same_weights(root / "asset", runs / "edit" / "final")  # nothing was published before: the new model is
    provenance = json.loads((root / "asset" / "stage.json").read_text())
    assert provenance["stages"] == {"t2i": 2, "reconstruction": 2, "edit": 1} and provenance["processes"] == 1 and provenance["command"].endswith("--resume")
    assert provenance["replay_share"] == 0.25 and "replay: " in recon_log and "replay: " in (runs / "edit" / "train.log").read_text()
    assert "replay: " not in (runs / "t2i" / "train.log").read_text()  # text-to-image samples are replayed in the later stages only
    assert provenance["ema_decay"] == make_demo.EMA_DECAY == 0.999
    assert all("moving average of the weights: decay 0.999" in (runs / stage / "train.log").read_text() for stage in ("t2i", "reconstruction", "edit"))


def test_publishes_only_a_better_checkpoint_unless_forced(interrupted_then_resumed):
    root, *_ = interrupted_then_resumed
    runs, asset = root / "runs", root / "asset"
    stamp = (asset / "stage.json").stat().st_mtime_ns
    final = runs / "edit" / "final"
    equal = make_demo.parse_args(demo_args(root))
    assert not make_demo.evaluate_and_publish(final, equal, 1, torch.device("cpu"))  # the same model scores the same: a tie is not better
    assert (runs / "eval-published.json").is_file() and (asset / "stage.json").stat().st_mtime_ns == stamp
    assert not make_demo.evaluate_and_publish(final, make_demo.parse_args(demo_args(root, "--no-publish")), 1, torch.device("cpu"))
    replaced = json.loads((asset / "stage.json").read_text())
    assert make_demo.evaluate_and_publish(runs / "t2i" / "final", make_demo.parse_args(demo_args(root, "--force-publish")), 1, torch.device("cpu"))
    assert same_weights(asset, runs / "t2i" / "final")
    stage = json.loads((asset / "stage.json").read_text())  # the replaced model's record is kept whole, with its command
    assert stage["previous"] == replaced and stage["earlier_commands"] == [*replaced.get("earlier_commands", []), replaced["command"]]
    assert stage["published_by"] == "train.make_demo --force-publish" and stage["results"] == str(runs / "eval.json")
    assert stage["eval"]["reconstruction_accuracy"] == json.loads((runs / "eval.json").read_text())["reconstruction_accuracy"]


def test_publish_lists_unpublished_runs_between_the_replaced_model_and_the_new_one(tmp_path):
    """A model trained on from an unpublished run: that run's command follows the replaced model's chain."""
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "weights").write_text("new")
    (tmp_path / "asset").mkdir()
    (tmp_path / "asset" / "weights").write_text("old")
    replaced = {"command": "published run", "earlier_commands": ["first run"]}
    (tmp_path / "asset" / "stage.json").write_text(json.dumps(replaced))
    make_demo.publish(tmp_path / "checkpoint", tmp_path / "asset", {"command": "second run", "earlier_commands": ["unpublished run"]})
    stage = json.loads((tmp_path / "asset" / "stage.json").read_text())
    assert stage["earlier_commands"] == ["first run", "published run", "unpublished run"] and stage["command"] == "second run"
    assert stage["previous"] == replaced and (tmp_path / "asset" / "weights").read_text() == "new"


def test_publish_demo_runs_the_checks_renames_the_bundled_reports_and_publishes_only_a_better_run(interrupted_then_resumed, tmp_path, capsys):
    """train.publish_demo on a finished run: the four publishing checks, the bundled model's reports renamed, the
    run's in their place, the checkpoint published with make_demo's record; refusals change nothing."""
    root, *_ = interrupted_then_resumed
    runs, asset, results = tmp_path / "the runs", tmp_path / "asset", tmp_path / "results"  # a space: the recorded command is quoted
    shutil.copytree(root / "runs" / "edit", runs / "edit")  # the run, scored afresh (other tests score other models into root's eval.json)
    shutil.copytree(root / "asset", asset)
    results.mkdir()
    run_args = demo_args(tmp_path, "--publish-to", str(asset), "--no-publish")
    run_args[run_args.index("--runs") + 1] = str(runs)
    parsed = make_demo.parse_args(run_args)
    run_report = make_demo.evaluate_checkpoint(runs / "edit" / "final", make_demo.eval_settings(parsed, parsed.eval_edits), runs / "eval.json", torch.device("cpu"))
    bundled = {**run_report, "geneval": {**run_report["geneval"], "overall": run_report["geneval"]["overall"] - 0.01}}
    (results / "demo-source-edit.json").write_text(json.dumps(bundled))
    (results / "demo-source-edit-refine-1.0.json").write_text("the bundled model's from-noise report")
    replaced = json.loads((asset / "stage.json").read_text())
    command = ["--retire-as", "old", "--earlier-command", "unpublished run", "--results", str(results), "--seeds", "2", "--", *run_args]
    assert publish_demo.main(command) == 0
    assert json.loads((results / "demo-source-edit-old.json").read_text()) == bundled
    assert (results / "demo-source-edit-old-refine-1.0.json").read_text() == "the bundled model's from-noise report"
    assert json.loads((results / "demo-source-edit.json").read_text()) == run_report
    checks = {check: json.loads((results / f"demo-source-edit-{check}.json").read_text()) for check in publish_demo.CHECKS}
    assert checks == {check: json.loads((runs / "publish" / f"{check}.json").read_text()) for check in publish_demo.CHECKS}
    assert (checks["refine-1.0"]["settings"]["refine_strength"], checks["refine-1.0"]["settings"]["n_edits"]) == (1.0, 0)
    assert checks["edit-refine-1.0"]["settings"]["edit_refine_strength"] == 1.0 and "overall" in checks["edit-refine-1.0"]["edit_accuracy"]
    assert set(checks["sampling-check"]["refine_strength_tuning_on_validation_prompts"]) == {"0.9", "1.0"}  # 0.1 either side of the run's 1.0, within 1
    assert checks["seed-check"]["seeds"] == [0, 1] and list(checks["seed-check"]["passed"]) == [BUNDLED_DEMO_PROMPT, *BUNDLED_DEMO_EDITS]
    assert same_weights(asset, runs / "edit" / "final")
    stage = json.loads((asset / "stage.json").read_text())
    assert stage["previous"] == {**replaced, "results": str(results / "demo-source-edit-old.json")}
    assert stage["earlier_commands"] == [*replaced.get("earlier_commands", []), replaced["command"], "unpublished run"]
    assert stage["results"] == str(results / "demo-source-edit.json") and stage["published_by"].startswith("train.publish_demo: headline")
    assert shlex.split(stage["command"]) == ["python", "-m", "train.make_demo", *run_args]  # quoted: it runs as recorded
    assert stage["plan"] == {} and stage["processes"] == 1 and stage["lr"] == 1e-3
    published = (asset / "stage.json").stat().st_mtime_ns
    assert publish_demo.main(command) == 2  # the retired names are taken
    capsys.readouterr()
    assert publish_demo.main([*command[:1], "wrong", *command[2:], "--lr", "5e-4"]) == 2  # not the arguments the run was trained with
    assert "lr 0.0005 (the run: 0.001)" in capsys.readouterr().err
    assert publish_demo.main([*command[:1], "wrong", *command[2:], "--read-source"]) == 2  # an architecture flag it was not trained with
    assert "read_source True (the run: False)" in capsys.readouterr().err
    older = {k: v for k, v in run_report["settings"].items() if k not in ("candidates", "edit_candidates")}  # a report from before the self-check
    (results / "demo-source-edit.json").write_text(json.dumps({**run_report, "settings": older}))
    assert publish_demo.main([*command[:1], "again", *command[2:]]) == 2  # the same run again: compared (missing settings are defaults), a tie is not better
    assert "does not beat the bundled model" in capsys.readouterr().err
    (results / "demo-source-edit.json").write_text(json.dumps({**bundled, "settings": {**bundled["settings"], "guidance": 9.0}}))
    assert publish_demo.main([*command[:1], "other", *command[2:]]) == 2  # scored otherwise
    assert (asset / "stage.json").stat().st_mtime_ns == published and not list(results.glob("*again*")) and not list(results.glob("*other*"))
    assert not list(results.glob("*wrong*"))


def test_seed_check_follows_the_edit_chain_and_scores_each_step(monkeypatch):
    """Painted as named on every seed, edited correctly on even seeds only (an odd seed's edits leave the image as it
    was): the prompt passes everywhere, each edit and the whole chain on the even seeds."""
    class Painter:  # stands for HieraQueryPipeline, painting ground-truth renders
        def __init__(self, model):
            self.scene = None

        def pixels(self):
            return SimpleNamespace(final=torch.from_numpy(sw.render(self.scene)).permute(2, 0, 1)[None].float() / 255)

        def generate(self, prompt, seed, options):
            assert options.candidates == 3
            self.scene = sw.scene_for_prompt(prompt, np.random.default_rng(seed))
            return self.pixels()

        def edit(self, pixels, instruction, seed, options):
            assert options.candidates == 2  # each step sampled as the settings say, the self-check included
            if seed % 2 == 0:
                self.scene = sw.apply_instruction(self.scene, instruction, np.random.default_rng(seed))
            return self.pixels()

    monkeypatch.setattr(publish_demo, "HieraQueryPipeline", Painter)
    report = publish_demo.seed_check(None, EvalSettings(candidates=3, edit_candidates=2), range(4))
    assert report["passed"] == {BUNDLED_DEMO_PROMPT: [0, 1, 2, 3], **{edit: [0, 2] for edit in BUNDLED_DEMO_EDITS}} and report["all_passed"] == [0, 2]


def test_publish_demo_wants_the_runs_make_demo_arguments_and_a_plain_name(capsys):
    for argv in (["--retire-as", "old"], ["--retire-as", "old", "--"], ["--retire-as", "../old", "--", "--steps", "0,0,1"]):
        with pytest.raises(SystemExit):
            publish_demo.parse_args(argv)
        assert "--" in capsys.readouterr().err


def test_init_from_starts_the_first_stage_from_an_earlier_model(interrupted_then_resumed):
    root, *_ = interrupted_then_resumed
    earlier = root / "runs" / "t2i" / "final"
    more = root / "more"
    args = demo_args(root, "--init-from", str(earlier), "--steps", "1,0,0", "--no-publish", "--refine-strength", "0.5", "--category-weights", "position=2",
                     "--position-colours", "0.5", "--min-gap", "4")
    args[args.index("--runs") + 1] = str(more)
    assert make_demo.main(args) == 0
    assert "initialising from " + str(earlier) in (more / "t2i" / "train.log").read_text()
    settings = json.loads((more / "t2i" / "run.json").read_text())["settings"]
    assert (settings["category_weights"], settings["position_colours"], settings["min_gap"]) == ("position=2", 0.5, 4)  # all reach the trainer
    assert not same_weights(more / "t2i" / "final", earlier)  # it trained on from there
    assert json.loads((more / "eval.json").read_text())["settings"]["refine_strength"] == 0.5  # sampled as asked
    assert not (more / "reconstruction").exists() and json.loads((more / "eval.json").read_text())["checkpoint"] == str(more / "t2i" / "final")


def test_read_source_coarse_input_and_dit_blocks_grow_the_init_models_dit_and_edits_are_sampled_as_asked(interrupted_then_resumed):
    """``--read-source --coarse-input 0.2 --dit-blocks 3 --softmax-new-blocks``: the edit stage trains a DiT that also reads
    the source image and the previous scale's, and has a third block with softmax self-attention (the tiny model has two); the evaluation samples edits
    at ``--edit-refine-strength`` and ``--edit-guidance``, text-to-image at ``--refine-strength``."""
    root, *_ = interrupted_then_resumed
    out = root / "reads-source"
    args = demo_args(root, "--init-from", str(root / "runs" / "t2i" / "final"), "--read-source", "--coarse-input", "0.2", "--dit-blocks", "3", "--softmax-new-blocks",
                     "--steps", "0,0,1", "--no-publish",
                     "--refine-strength", "0.5", "--edit-refine-strength", "0.75", "--edit-guidance", "2.5")
    args[args.index("--runs") + 1] = str(out)
    assert make_demo.main(args) == 0
    grown, before = load_checkpoint(out / "edit" / "final"), load_checkpoint(root / "runs" / "t2i" / "final")
    assert grown.reads_source and not before.reads_source and grown.config.coarse_input_noise == 0.2 and not before.reads_coarse
    assert grown.dit.in_channels == 3 * grown.codec.channels
    assert (len(grown.dit.blocks), len(before.dit.blocks), grown.dit.softmax_self_attention_blocks()) == (3, 2, [2])
    settings = json.loads((out / "eval.json").read_text())["settings"]
    assert (settings["refine_strength"], settings["edit_refine_strength"], settings["edit_guidance"]) == (0.5, 0.75, 2.5)


def test_mllm_replaces_the_init_models_mllm_in_the_first_stage_only(interrupted_then_resumed):
    """``--init-from X --mllm DIR --steps 0,1,1``: the reconstruction stage swaps X's MLLM for DIR's, the edit
    stage inherits it from there, and the final model carries DIR's MLLM."""
    from hieraquery_core.backbones import build_mllm
    from hieraquery_core.config import BackboneSpec
    from hieraquery_core.tiny import tiny_mllm
    from train.shapesworld_mllm import save_mllm

    root, *_ = interrupted_then_resumed
    torch.manual_seed(11)
    save_mllm(build_mllm(tiny_mllm(image_pixels=32 * 32)), root / "new-mllm")
    swapped = root / "swapped"
    args = demo_args(root, "--init-from", str(root / "runs" / "t2i" / "final"), "--mllm", str(root / "new-mllm"), "--steps", "0,1,1", "--no-publish")
    args[args.index("--runs") + 1] = str(swapped)
    assert make_demo.main(args) == 0
    assert "its frozen MLLM replaced by" in (swapped / "reconstruction" / "train.log").read_text()
    assert "replaced" not in (swapped / "edit" / "train.log").read_text()
    final = load_checkpoint(swapped / "edit" / "final").mllm.state_dict()
    wanted = build_mllm(BackboneSpec("qwen2_5_vl", path=str(root / "new-mllm"))).state_dict()
    assert final.keys() == wanted.keys() and all(torch.equal(final[k], wanted[k]) for k in final)


def test_bad_steps_stop_with_the_expected_form(capsys):
    for steps in ("550,40", "a,b,c", "1,-1,1"):
        with pytest.raises(SystemExit):
            make_demo.parse_args(["--steps", steps])
        assert "3 comma-separated whole numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_demo.parse_args(["--no-publish", "--force-publish"])


def test_a_missing_shapesworld_backbone_is_trained_only_when_the_config_uses_it(tmp_path):
    asset = tmp_path / "assets" / "shapesworld-vae"
    weights = "diffusion_pytorch_model.safetensors"
    assert make_demo.missing_asset(str(asset), asset, weights)  # the config's codec is the asset and it is not there
    assert not make_demo.missing_asset(None, asset, weights)  # pixel space: no codec path
    assert not make_demo.missing_asset(str(tmp_path / "elsewhere"), asset, weights)  # a VAE of the user's own
    asset.mkdir(parents=True)
    (asset / weights).write_bytes(b"")
    assert not make_demo.missing_asset(str(asset / ".." / "shapesworld-vae"), asset, weights)  # trained already


def test_two_processes_train_every_stage_and_only_the_main_one_evaluates_and_publishes(tmp_path):
    tiny_config("sana", "qwen2_5_vl", "pixel").save(tmp_path / "cfg.json")
    proc = launch_two_cpu_processes("-m", "train.make_demo", *demo_args(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("held-out: GenEval overall") == 1 and proc.stdout.count("published ") == 1
    for stage in ("t2i", "reconstruction", "edit"):
        log = (tmp_path / "runs" / stage / "train.log").read_text()
        assert "2 process(es)" in log and "parameter checksums of 2 processes: identical" in log
    assert json.loads((tmp_path / "asset" / "stage.json").read_text())["processes"] == 2
    assert same_weights(tmp_path / "asset", tmp_path / "runs" / "edit" / "final")


def test_ablation_runs_go_through_the_trainer_and_are_reused(tmp_path):
    argv = ["--variants", "single-256", "--seeds", "1", "--budget-steps", "1", "--batch", "1", "--eval-n", "6", "--eval-steps", "1", "--eval-flow-n", "4", "--threads", "1",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "ablations.md")]
    ablations.main(argv)
    run = tmp_path / "runs" / "steps1-batch1" / "single-256-s0"
    log = (run / "train.log").read_text()
    assert "stage t2i: 1 steps" in log and (run / "checkpoints" / "step-0000001").is_dir()
    [scores] = run.glob("result-*.json")
    result = json.loads(scores.read_text())
    assert result["variant"] == "single-256" and result["num_queries"] == 256 and "overall" in result["geneval"]
    report = (tmp_path / "ablations.md").read_text()
    assert "| single-256 | 16x16@1x | 256 |" in report and result["flow_loss"]["n"] == 4
    assert f"| {result['flow_loss']['final']:.3f} | {result['flow_loss']['prompt_gain']:.3f} | 1 |" in report  # held-out flow loss and prompt gain columns
    ablations.main(argv)  # the finished run is reused, not trained again
    assert (run / "train.log").read_text() == log
    trained = load_checkpoint(run / "final").state_dict()
    ablations.main([*argv, "--refine-strength", "0.5"])  # other evaluation settings: scored again into a file of their own, not retrained
    rescored = set(run.glob("result-*.json")) - {scores}
    assert len(rescored) == 1 and json.loads(rescored.pop().read_text())["settings"]["refine_strength"] == 0.5
    log = (run / "train.log").read_text()
    assert "refine strength 0.5" in (tmp_path / "ablations.md").read_text() and "resumed at step 1" in log and log.count("stage t2i: 1 steps") == 2
    after = load_checkpoint(run / "final").state_dict()
    assert all(torch.equal(after[k], trained[k]) for k in trained) and json.loads(scores.read_text()) == result
    ablations.main([*argv, "--config", str(make_demo.CONFIG.parent / "shapesworld-demo-latent.json")])  # another base architecture: its own run cache
    latent = tmp_path / "runs" / "shapesworld-demo-latent-steps1-batch1" / "single-256-s0"
    assert load_checkpoint(latent / "final").config.codec.kind == "autoencoder_kl" and (run / "train.log").read_text() == log


def test_ablation_variants_can_start_from_a_pretrained_dit(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ablations.main(["--init-dit", str(tmp_path / "missing")])
    assert f"--init-dit {tmp_path / 'missing'} is not a folder" in capsys.readouterr().err  # one clear error before any run starts
    argv = ["--variants", "single-256", "--seeds", "1", "--budget-steps", "1", "--batch", "1", "--eval-n", "6", "--eval-steps", "1", "--eval-flow-n", "4", "--threads", "1",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "ablations.md")]
    ablations.main(argv)
    pretrained = tmp_path / "runs" / "steps1-batch1" / "single-256-s0" / "final"
    base = make_demo.demo_config(make_demo.CONFIG)
    config = ablations.with_pretrained_dit(ablations.variant_config(base, ablations.VARIANTS[2]), pretrained)  # a three-scale variant
    model, source = HieraQuery.from_config(config), load_checkpoint(pretrained)
    assert model.config.scales != source.config.scales and model.config.dit.path == str((pretrained / "transformer").resolve())
    started, trained = model.dit.state_dict(), source.dit.state_dict()
    assert started.keys() == trained.keys() and all(torch.equal(started[k], trained[k]) for k in started)  # the DiT is the checkpoint's ...
    from_folder = HieraQuery.from_config(ablations.with_pretrained_dit(config, pretrained / "transformer")).dit.state_dict()  # or a diffusers folder
    assert from_folder.keys() == trained.keys() and all(torch.equal(from_folder[k], trained[k]) for k in trained)
    fresh, kept = model.connector.state_dict(), source.connector.state_dict()
    assert not all(torch.equal(fresh[k], kept[k]) for k in fresh)  # ... the connector is not
    ablations.main([*argv, "--init-dit", str(pretrained)])  # runs from a pretrained DiT have their own cache, and the report says so
    assert len(list((tmp_path / "runs" / "dit-final-steps1-batch1" / "single-256-s0").glob("result-*.json"))) == 1
    assert f"the DiT initialised from `{pretrained}`" in (tmp_path / "ablations.md").read_text()
