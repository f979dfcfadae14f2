"""The command line through the three stages (t2i -> reconstruction -> edit), data from files, bad samples,
and the Python API with in-memory datasets and streams."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hieraquery_core.checkpoint import load_checkpoint
from hieraquery_core.config import HieraQueryConfig
from hieraquery_core.tiny import tiny_config
from train.state import STATE_NAME
from train.train import TrainConfig, Trainer, dit_depth, main, train


pytestmark = pytest.mark.usefixtures("one_thread")


def write_image(path, width, height, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiny_config("sana", "qwen2_5_vl", "pixel").save(root / "cfg.json")
    (root / "pairs").mkdir()
    rows = []
    for i, (w, h) in enumerate([(32, 32), (48, 32), (32, 48), (40, 40), (64, 32), (32, 32)]):
        write_image(root / "pairs" / f"{i}.png", w, h, i)
        rows.append({"image": f"pairs/{i}.png", "prompt": "a red circle" if i % 2 else "two squares", "clip_score": 0.6, "watermark_score": 0.1})
    (root / "pairs" / "5.png").write_bytes(b"garbage")  # unreadable: left out at indexing
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "edits").mkdir()
    for i in range(3):
        write_image(root / "edits" / f"e{i}.png", 32, 32, 10 + i)
        write_image(root / "edits" / f"e{i}.source.png", 32, 32, 20 + i)
        (root / "edits" / f"e{i}.txt").write_text("make the red circle blue")
    return root


def test_three_stages_from_the_command_line(data, capsys):
    common = ["--steps", "2", "--batch-size", "2", "--log-every", "1", "--no-progress", "--eval-every", "1", "--eval-hook", "builtins:print"]
    assert main(["--stage", "t2i", "--config", str(data / "cfg.json"), "--data", str(data / "pairs.jsonl"), "--out", str(data / "t2i"), *common, "--steps", "3", "--warmup", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert [line.split()[-1] for line in out if line.startswith("<train.train.Trainer")] == ["1", "2", "3"]  # the --eval-hook, every step
    assert summary["step"] == 3 and summary["skipped"] == {"unreadable image": 1}
    log = (data / "t2i" / "train.log").read_text()
    assert "left out while indexing: unreadable image: 1" in log and "lr 1.000e-06" in log and "lr 5.000e-05" in log
    assert main(["--stage", "reconstruction", "--init-from", str(data / "t2i"), "--data", str(data / "pairs.jsonl"), "--out", str(data / "rec"), *common]) == 0
    assert main(["--stage", "edit", "--init-from", str(data / "rec" / "final"), "--data", str(data / "edits"), "--out", str(data / "edit"), *common, "--workers", "1"]) == 0
    final = load_checkpoint(data / "edit" / "final")
    assert final.config.scales == HieraQueryConfig.load(data / "cfg.json").scales
    start = load_checkpoint(data / "rec" / "final")
    assert not torch.equal(final.queries.start, start.queries.start)  # the edit stage trained on from the reconstruction weights
    assert "initialising from" in (data / "edit" / "train.log").read_text()


def test_command_line_errors_are_one_line(data, capsys):
    (data / "wrong.jsonl").write_text(json.dumps({"path": "x.png", "text": "y"}) + "\n")
    code = main(["--stage", "edit", "--config", str(data / "cfg.json"), "--data", str(data / "wrong.jsonl"), "--out", str(data / "wrong"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: manifest") and "'instruction'" in err and "'source'" in err
    code = main(["--stage", "t2i", "--data", str(data / "pairs.jsonl"), "--out", str(data / "nomodel"), "--steps", "1"])
    assert code == 2 and "--config" in capsys.readouterr().err
    code = main(["--stage", "t2i", "--config", str(data / "cfg.json"), "--data", str(data / "pairs.jsonl"), "--out", str(data / "hook"), "--steps", "1", "--eval-hook", "nowhere:fn"])
    assert code == 2 and "--eval-hook 'nowhere:fn' cannot be imported" in capsys.readouterr().err
    tiny_config("sana", "causal_lm", "pixel").save(data / "text-only.json")
    code = main(["--stage", "edit", "--config", str(data / "text-only.json"), "--data", str(data / "edits"), "--out", str(data / "textonly"), "--steps", "1"])
    assert code == 2 and "text-only" in capsys.readouterr().err
    code = main(["--stage", "t2i", "--config", str(data / "cfg.json"), "--data", str(data / "pairs.jsonl"), "--out", str(data / "ema"), "--steps", "1", "--ema-decay", "1"])
    assert code == 2 and "--ema-decay 1.0 must be in [0, 1)" in capsys.readouterr().err


def test_config_flags_override_the_model_config_and_must_match_on_resume(data, capsys):
    common = ["--stage", "t2i", "--init-from", str(data / "t2i"), "--data", str(data / "pairs.jsonl"), "--out", str(data / "noise"), "--batch-size", "2", "--no-progress"]
    assert main([*common, "--steps", "2", "--save-every", "1", "--timestep-logit-mean", "1.5", "--timestep-logit-std", "0.5", "--dropped-prompt-keeps-image",
                 "--prompt-tokens", "4", "--plan", "what is to the left=left,right"]) == 0
    config = load_checkpoint(data / "noise" / "final").config
    assert (config.timestep_logit_mean, config.timestep_logit_std, config.dropped_prompt_keeps_image, config.prompt_tokens) == (1.5, 0.5, True, 4)
    assert config.plan == {"what is to the left": ["left", "right"]}
    source = HieraQueryConfig.load(data / "t2i" / "final" / "config.json")
    assert (source.timestep_logit_mean, source.dropped_prompt_keeps_image) == (0.0, False)  # the source is untouched
    capsys.readouterr()
    assert main([*common, "--steps", "3", "--resume", "--timestep-logit-mean", "1.5", "--timestep-logit-std", "0.5", "--prompt-tokens", "4",
                 "--plan", "what is to the left=left,right"]) == 2
    assert "dropped_prompt_keeps_image: checkpoint True vs this run False" in capsys.readouterr().err
    assert main([*common, "--steps", "3", "--resume", "--timestep-logit-mean", "0.5", "--timestep-logit-std", "0.5", "--dropped-prompt-keeps-image"]) == 2
    err = capsys.readouterr().err
    assert "timestep_logit_mean: checkpoint 1.5 vs this run 0.5" in err and "prompt_tokens: checkpoint 4 vs this run 0" in err
    assert "plan: checkpoint {'what is to the left': ['left', 'right']} vs this run {}" in err
    assert main([*common, "--steps", "1", "--plan", "what is to the left"]) == 2
    assert "plan entry 'what is to the left' is not QUESTION=WORD" in capsys.readouterr().err
    assert main([*common, "--steps", "1", "--timestep-logit-std", "0"]) == 2
    assert "--timestep-logit-std 0.0 must be positive" in capsys.readouterr().err


def test_python_api_with_datasets_streams_and_callbacks(data):
    cfg = dict(stage="t2i", config=str(data / "cfg.json"), steps=2, batch_size=2, progress=False, eval_every=1)
    calls = []
    samples = [{"prompt": "a blue square", "target": torch.rand(3, 64, 64)}, {"prompt": "broken"}, {"prompt": "a circle", "target": torch.rand(3, 32, 32)}]
    result = train(TrainConfig(out=str(data / "api-ds"), **cfg), dataset=samples, callbacks=[lambda trainer, step: calls.append((step, trainer.model.training))])
    assert result.step == 2 and calls == [(1, False), (2, False)]
    assert result.skipped.get("bad sample (sample lacks ['target'] (has ['prompt']))", 0) >= 1

    def stream():
        for i in range(100):
            yield {"prompt": "a green triangle", "target": torch.full((3, 32, 32), i / 100)}

    config_object = tiny_config("sana", "qwen2_5_vl", "pixel")  # a HieraQueryConfig instead of a JSON path
    trainer = Trainer(TrainConfig(out=str(data / "api-stream"), **{**cfg, "eval_every": 0, "config": config_object}), dataset=stream())
    assert trainer.fit().step == 2 and trainer.batch_in_epoch == 2


def test_evaluation_callbacks_see_the_moving_average_and_training_goes_on_with_the_raw_weights(data):
    seen = []

    def callback(trainer, step):
        params = trainer.model.trainable_parameters()
        seen.append(all(torch.equal(p, s) for p, s in zip(params, trainer.ema.shadow_params)))

    trainer = Trainer(TrainConfig(stage="t2i", config=str(data / "cfg.json"), data=str(data / "pairs.jsonl"), steps=3, batch_size=2, lr=1e-2,
                                  ema_decay=0.5, eval_every=1, progress=False, out=str(data / "ema-callbacks")), callbacks=[callback])
    trainer.fit()
    assert seen == [True, True, True]  # steps 1 and 2, and the end
    raw = trainer.model.trainable_parameters()
    assert not all(torch.equal(p, s) for p, s in zip(raw, trainer.ema.shadow_params))


def test_a_batch_of_only_bad_samples_is_a_zero_loss_step(data):
    result = train(TrainConfig(stage="t2i", config=str(data / "cfg.json"), steps=1, batch_size=2, progress=False, out=str(data / "all-bad")),
                   dataset=[{"prompt": "no target"}, {"prompt": "no target either"}])
    assert result.step == 1 and result.losses == [0.0] and sum(result.skipped.values()) == 2


def test_a_later_stage_replays_text_to_image_samples(data, capsys):
    out = data / "edit-replay"
    common = ["--stage", "edit", "--config", str(data / "cfg.json"), "--data", str(data / "edits"), "--out", str(out), "--steps", "2", "--batch-size", "2", "--no-progress"]
    assert main([*common, "--replay-share", "0.5", "--replay-data", str(data / "pairs.jsonl")]) == 0
    log = (out / "train.log").read_text()
    assert "data (edit): 3 samples" in log and "data (t2i): 5 samples" in log and "replay: " in log and "done: step 2" in log
    assert json.loads((out / "run.json").read_text())["settings"]["replay_share"] == 0.5
    capsys.readouterr()
    assert main([*common, "--resume"]) == 2  # resuming without the replay would train on other samples
    assert "replay_share 0.5 (now 0.0)" in capsys.readouterr().err
    for bad, message in ((["--stage", "t2i", "--replay-share", "0.3"], "means nothing with --stage t2i"), (["--replay-share", "1"], "must be in [0, 1)"),
                         (["--replay-data", "shapesworld"], "only read with --replay-share"), (["--replay-share", "0.5"], "needs --replay-data")):
        assert main([*common, "--out", str(data / "edit-bad"), *bad]) == 2 and message in capsys.readouterr().err


def test_edit_distractors_flag_is_recorded_checked_and_compared_on_resume(data, capsys):
    out = data / "edit-distractors"
    common = ["--stage", "edit", "--config", str(data / "cfg.json"), "--data", "shapesworld", "--shapesworld-samples", "4", "--out", str(out),
              "--steps", "1", "--batch-size", "2", "--save-every", "1", "--no-progress"]
    assert main([*common, "--edit-distractors", "0.5"]) == 0
    assert json.loads((out / "run.json").read_text())["settings"]["edit_distractors"] == 0.5
    capsys.readouterr()
    assert main([*common, "--steps", "2", "--resume"]) == 2  # other triplets than the checkpoint's run
    assert "edit_distractors 0.5 (now 0.0)" in capsys.readouterr().err
    for bad, message in ((["--edit-distractors", "1.5"], "must be in [0, 1]"), (["--edit-distractors", "0.5", "--stage", "t2i"], "needs --stage edit and --data shapesworld"),
                         (["--edit-distractors", "0.5", "--data", str(data / "edits")], "needs --stage edit and --data shapesworld")):
        assert main([*common, "--out", str(data / "distractors-bad"), *bad]) == 2 and message in capsys.readouterr().err


SHAPESWORLD_DATA_OPTIONS = {
    "caption_order": (["--caption-order"], True, "caption_order True (now False)", [(["--caption-order", "--data", "{data}/pairs.jsonl"], "it needs --data shapesworld")]),
    "category_weights": (["--category-weights", "position=3"], "position=3", "category_weights position=3 (now )", [
        (["--category-weights", "pose=3"], "is not CATEGORY=WHOLE_NUMBER"), (["--category-weights", "position=-1"], "is not CATEGORY=WHOLE_NUMBER"),
        (["--category-weights", ",".join(f"{c}=0" for c in ("single_object", "two_object", "counting", "colors", "position", "color_attr"))], "leaves no category to draw"),
        (["--category-weights", "position=3", "--data", "{data}/pairs.jsonl"], "it needs --data shapesworld")]),
    "position_colours": (["--position-colours", "0.5"], 0.5, "position_colours 0.5 (now 0.0)", [
        (["--position-colours", "1.5"], "give a value in [0, 1]"), (["--position-colours", "-0.1"], "give a value in [0, 1]"),
        (["--position-colours", "0.5", "--data", "{data}/pairs.jsonl"], "it needs --data shapesworld")]),
    "min_gap": (["--min-gap", "4"], 4, "min_gap 4 (now 2)", [
        (["--min-gap", "1"], "give 2 or more"), (["--min-gap", "4", "--data", "{data}/pairs.jsonl"], "it needs --data shapesworld")]),
}


@pytest.mark.parametrize("setting", sorted(SHAPESWORLD_DATA_OPTIONS))
def test_shapesworld_data_option_is_recorded_checked_and_compared_on_resume(data, capsys, setting):
    """Each ShapesWorld training-data option (``--caption-order``, ``--category-weights``, ``--position-colours``, ``--min-gap``)
    lands in run.json; a resume without it is refused (its samples differ from the checkpoint's run); a checkpoint
    written before the option existed (no such key) resumes a run without it; a bad value or other data is one error
    before anything is written."""
    flag, recorded, mismatch, bad_cases = SHAPESWORLD_DATA_OPTIONS[setting]
    out = data / setting
    common = ["--stage", "t2i", "--config", str(data / "cfg.json"), "--data", "shapesworld", "--shapesworld-samples", "4", "--out", str(out),
              "--steps", "1", "--batch-size", "2", "--save-every", "1", "--no-progress"]
    assert main([*common, *flag]) == 0
    assert json.loads((out / "run.json").read_text())["settings"][setting] == recorded
    capsys.readouterr()
    assert main([*common, "--steps", "2", "--resume"]) == 2
    assert mismatch in capsys.readouterr().err
    older = data / f"{setting}-older"
    assert main([*common, "--out", str(older)]) == 0
    state = next((older / "checkpoints").iterdir()) / STATE_NAME
    state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != setting}))
    assert main([*common, "--out", str(older), "--steps", "2", "--resume"]) == 0
    bad_out = data / f"{setting}-bad"
    for bad, message in bad_cases:
        assert main([*common, "--out", str(bad_out), *(arg.format(data=data) for arg in bad)]) == 2 and message in capsys.readouterr().err
    assert not bad_out.exists()  # refused before anything was written


def test_mllm_flag_replaces_the_frozen_mllm_of_the_init_model(data, tmp_path, capsys):
    """``--init-from X --mllm DIR``: the run starts from X's trained parts with the MLLM in DIR (e.g. a retrained
    vision tower), and its checkpoints embed DIR's MLLM; one of other sizes, or --mllm with --config, is a one-line error."""
    from hieraquery_core.backbones import build_mllm
    from hieraquery_core.checkpoint import save_checkpoint
    from hieraquery_core.config import BackboneSpec
    from hieraquery_core.tiny import tiny_mllm
    from tests.tiny_models import make_model
    from train.shapesworld_mllm import save_mllm, shapesworld_mllm_spec

    start = save_checkpoint(make_model(seed=1), tmp_path / "start")
    torch.manual_seed(7)
    save_mllm(build_mllm(tiny_mllm()), tmp_path / "mllm")
    common = ["--stage", "reconstruction", "--data", str(data / "pairs.jsonl"), "--steps", "1", "--batch-size", "2", "--no-progress"]
    assert main([*common, "--init-from", str(start), "--mllm", str(tmp_path / "mllm"), "--out", str(tmp_path / "run")]) == 0
    trained, before = load_checkpoint(tmp_path / "run" / "final"), load_checkpoint(start)
    wanted = build_mllm(BackboneSpec("qwen2_5_vl", path=str(tmp_path / "mllm")))
    assert all(torch.equal(a, b) for a, b in zip(trained.mllm.state_dict().values(), wanted.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(trained.mllm.state_dict().values(), before.mllm.state_dict().values()))
    assert trained.config.mllm.path == "mllm" and "its frozen MLLM replaced by" in (tmp_path / "run" / "train.log").read_text()
    save_mllm(build_mllm(shapesworld_mllm_spec(width=32, layers=1, vision_width=16, vision_depth=1)), tmp_path / "other")
    assert main([*common, "--init-from", str(start), "--mllm", str(tmp_path / "other"), "--out", str(tmp_path / "bad")]) == 2
    assert "only an MLLM of the same sizes can replace it" in capsys.readouterr().err
    assert main([*common, "--config", str(data / "cfg.json"), "--mllm", str(tmp_path / "mllm"), "--out", str(tmp_path / "bad2")]) == 2
    assert "set mllm.path in the config" in capsys.readouterr().err


def test_read_source_flag_widens_the_init_models_dit_and_the_edit_stage_trains_the_new_channels(data, tmp_path):
    """``--read-source``: the DiT of the --init-from model also reads the source image's latents, starting from zero
    weights that the edit stage trains; the checkpoint keeps the wider DiT, and a run resumed from it needs no flag."""
    from hieraquery_core.checkpoint import save_checkpoint
    from tests.tiny_models import make_model

    start = save_checkpoint(make_model(seed=2), tmp_path / "start")
    common = ["--stage", "edit", "--data", str(data / "edits"), "--steps", "2", "--batch-size", "2", "--no-progress", "--lr", "1e-3"]
    assert main([*common, "--init-from", str(start), "--read-source", "--out", str(tmp_path / "run")]) == 0
    trained = load_checkpoint(tmp_path / "run" / "final")
    assert trained.reads_source and "now also reads the input image's latents" in (tmp_path / "run" / "train.log").read_text()
    assert trained.dit.patch_projection().weight[:, trained.codec.channels:].abs().sum() > 0
    assert main([*common, "--init-from", str(tmp_path / "run" / "final"), "--out", str(tmp_path / "again")]) == 0
    assert load_checkpoint(tmp_path / "again" / "final").reads_source


def test_coarse_input_flag_widens_the_init_models_dit_trains_it_and_must_match_on_resume(data, tmp_path, capsys):
    """``--coarse-input NOISE``: the DiT of the --init-from model also reads the previous scale's image, from zero weights
    that text-to-image training wakes; the level is recorded, compared on resume, and kept by later runs (or replaced)."""
    from hieraquery_core.checkpoint import save_checkpoint
    from tests.tiny_models import make_model

    start = save_checkpoint(make_model(seed=2), tmp_path / "start")
    common = ["--stage", "t2i", "--data", str(data / "pairs.jsonl"), "--batch-size", "2", "--no-progress", "--lr", "1e-3", "--save-every", "1"]
    run = [*common, "--init-from", str(start), "--out", str(tmp_path / "run")]
    assert main([*run, "--steps", "2", "--coarse-input", "0.2"]) == 0
    trained = load_checkpoint(tmp_path / "run" / "final")
    assert trained.reads_coarse and trained.config.coarse_input_noise == 0.2 and not trained.reads_source
    assert trained.dit.patch_projection().weight[:, trained.codec.channels:].abs().sum() > 0
    assert "now also reads the previous scale's image" in (tmp_path / "run" / "train.log").read_text()
    assert main([*run, "--steps", "3", "--coarse-input", "0.2", "--resume"]) == 0 and "resumed at step 2" in (tmp_path / "run" / "train.log").read_text()
    capsys.readouterr()
    assert main([*run, "--steps", "4", "--resume"]) == 2
    assert "coarse_input_noise: checkpoint 0.2 vs this run None" in capsys.readouterr().err
    later = [*common, "--steps", "1", "--init-from", str(tmp_path / "run" / "final")]
    assert main([*later, "--out", str(tmp_path / "kept")]) == 0
    assert load_checkpoint(tmp_path / "kept" / "final").config.coarse_input_noise == 0.2
    assert main([*later, "--coarse-input", "0.1", "--out", str(tmp_path / "lower")]) == 0
    lower = load_checkpoint(tmp_path / "lower" / "final")
    assert lower.config.coarse_input_noise == 0.1 and lower.dit.in_channels == 2 * lower.codec.channels
    assert main([*later, "--coarse-input", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "noise level must be in [0, 1), got 1.0" in capsys.readouterr().err


def test_dit_blocks_flag_grows_the_init_models_dit_and_training_wakes_the_new_blocks(data, tmp_path, capsys):
    """``--dit-blocks N``: the --init-from model's DiT grows to N blocks whose new residual branches start at zero and
    train (``--softmax-new-blocks``: with softmax self-attention); a later run from that model keeps its depth and
    attention, and asking for fewer blocks is one clear error."""
    from hieraquery_core.checkpoint import save_checkpoint
    from tests.tiny_models import make_model

    start = save_checkpoint(make_model(seed=2), tmp_path / "start")
    common = ["--stage", "t2i", "--data", str(data / "pairs.jsonl"), "--steps", "2", "--batch-size", "2", "--no-progress", "--lr", "1e-3"]
    assert main([*common, "--init-from", str(start), "--dit-blocks", "4", "--softmax-new-blocks", "--out", str(tmp_path / "run")]) == 0
    resumed = [*common, "--steps", "3", "--init-from", str(start), "--dit-blocks", "4", "--softmax-new-blocks", "--out", str(tmp_path / "run"), "--resume"]
    assert main(resumed) == 0 and "resumed at step 2" in (tmp_path / "run" / "train.log").read_text()  # the grown model is what the run trains
    trained = load_checkpoint(tmp_path / "run" / "final")
    assert len(trained.dit.blocks) == 4 and trained.dit.softmax_self_attention_blocks() == [1, 3]
    assert "the DiT now has 4 blocks" in (tmp_path / "run" / "train.log").read_text()
    assert all(trained.dit.blocks[i].ff.conv_point.weight.abs().sum() > 0 for i in (1, 3))
    assert main([*common, "--init-from", str(tmp_path / "run" / "final"), "--dit-blocks", "4", "--out", str(tmp_path / "again")]) == 0
    again = load_checkpoint(tmp_path / "again" / "final")
    assert len(again.dit.blocks) == 4 and again.dit.softmax_self_attention_blocks() == [1, 3]
    assert main([*common, "--init-from", str(tmp_path / "run" / "final"), "--dit-blocks", "3", "--out", str(tmp_path / "fewer")]) == 2
    assert "give more than that" in capsys.readouterr().err


def test_dit_depth_reads_the_inline_config_its_default_or_the_dit_folder(tmp_path):
    """What ``--dit-blocks`` grows from (and what a resumed grown run is compared with): the DiT's block count."""
    import dataclasses

    from hieraquery_core.checkpoint import save_checkpoint
    from tests.tiny_models import make_model

    config = tiny_config("sana", "qwen2_5_vl", "pixel")
    assert dit_depth(config, None) == 2
    unstated = dataclasses.replace(config, dit=dataclasses.replace(config.dit, config={k: v for k, v in config.dit.config.items() if k != "num_layers"}))
    assert dit_depth(unstated, None) == 20  # diffusers' SanaTransformer2DModel default
    folder = save_checkpoint(make_model(seed=2), tmp_path / "ckpt")
    assert dit_depth(HieraQueryConfig.load(folder / "config.json"), folder) == 2
