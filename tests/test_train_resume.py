"""Checkpoints of the trainer: exact resume, atomic pickle-free files, clear errors for the wrong checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from hieraquery_core.checkpoint import load_checkpoint
from hieraquery_core.config import ScaleSpec
from hieraquery_core.errors import HieraQueryError
from hieraquery_core.tiny import tiny_config
from train import state as st
from train.train import TrainConfig, Trainer, train


pytestmark = pytest.mark.usefixtures("one_thread")


class Stop(Exception):
    """Stands for the process being killed right after a checkpoint."""


def stop_at(step):
    def callback(trainer, now):
        if now == step:
            raise Stop()
    return callback


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One straight 6-step edit run and one stopped after the step-3 checkpoint and resumed (tiny Qwen2.5-VL + SANA, 32 px;
    half the samples are text-to-image replay, so batches mix samples with and without a source image; a moving
    average of the weights is kept, so final/ holds averaged weights)."""
    root = tmp_path_factory.mktemp("resume")
    tiny_config("sana", "qwen2_5_vl", "pixel").save(root / "cfg.json")
    common = dict(stage="edit", config=str(root / "cfg.json"), data="shapesworld", shapesworld_samples=10, steps=6, warmup=2,
                  batch_size=2, grad_accum=2, log_every=1, progress=False, replay_share=0.5,
                  ema_decay=0.9)
    straight = train(TrainConfig(out=str(root / "straight"), **common))
    with pytest.raises(Stop):
        train(TrainConfig(out=str(root / "resumed"), save_every=3, eval_every=3, **common), callbacks=[stop_at(3)])
    interrupted = sorted(p.name for p in (root / "resumed" / "checkpoints").iterdir())
    resumed = train(TrainConfig(out=str(root / "resumed"), save_every=3, resume="latest", **common))
    return root, common, straight, resumed, interrupted


def test_resumed_run_ends_bit_identical(runs):
    root, _, straight, resumed, interrupted = runs
    assert interrupted == ["step-0000003"]
    a = load_checkpoint(root / "straight" / "final").state_dict()
    b = load_checkpoint(root / "resumed" / "final").state_dict()
    assert a.keys() == b.keys()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff == 0.0, f"resumed weights differ by {diff}"
    assert straight.losses == pytest.approx(resumed.losses, abs=0)
    assert resumed.step == 6
    log = (root / "resumed" / "train.log").read_text()
    assert "resumed at step 3 (epoch 1, batch 1)" in log  # 5 batches per epoch, 2 per step: mid-epoch
    assert "replay: 5 of 10 samples (50%)" in log


def test_checkpoint_files_are_safetensors_and_json_only(runs):
    root = runs[0]
    step = root / "resumed" / "checkpoints" / "step-0000006"
    files = [p for p in step.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".json", ".safetensors"}, sorted(p.name for p in files)
    for p in files:  # no pickle stream anywhere (protocol 2+ pickles start with 0x80)
        assert not p.read_bytes()[:2].startswith(b"\x80"), p
    state = json.loads((step / st.STATE_NAME).read_text())
    assert state["step"] == 6 and state["scheduler"]["last_epoch"] == 6
    assert not list((root / "resumed" / "checkpoints").glob(".*")), "a temporary checkpoint folder was left behind"
    assert load_checkpoint(step / "model") is not None


def test_final_model_is_the_moving_average(runs):
    """With --ema-decay, final/ holds the averaged weights (saved beside the raw ones in every checkpoint), not the raw ones."""
    from safetensors.torch import load_file

    root = runs[0]
    step = root / "resumed" / "checkpoints" / "step-0000006"
    state = json.loads((step / st.STATE_NAME).read_text())
    assert state["ema_decay"] == 0.9 and state["ema_step"] == 6
    averaged = load_file(str(step / st.EMA_NAME))
    raw = load_checkpoint(step / "model").state_dict()
    final = load_checkpoint(root / "resumed" / "final").state_dict()
    assert set(averaged) == set(state["parameters"])
    assert all(torch.equal(final[k], averaged[k]) for k in averaged)
    moved = [k for k in averaged if not torch.equal(raw[k], averaged[k])]
    assert len(moved) > len(averaged) // 2, "the average should differ from the raw weights after 6 steps"
    assert "wrote the averaged model" in (root / "resumed" / "train.log").read_text()


def test_resume_with_another_ema_decay_is_refused(runs, tmp_path):
    root, common, *_ = runs
    with pytest.raises(HieraQueryError, match="ema_decay 0.9 \\(now 0.99\\)"):
        Trainer(TrainConfig(out=str(root / "resumed"), resume="latest", **{**common, "ema_decay": 0.99}))
    import shutil

    shutil.copytree(root / "resumed", tmp_path / "damaged")
    (tmp_path / "damaged" / "checkpoints" / "step-0000006" / st.EMA_NAME).unlink()
    with pytest.raises(HieraQueryError, match="has no ema.safetensors.*resume from an older one"):
        Trainer(TrainConfig(out=str(tmp_path / "damaged"), resume="latest", **common))


def test_resume_with_more_steps_continues(runs, tmp_path):
    root, common, *_ = runs
    import shutil

    shutil.copytree(root / "resumed", tmp_path / "longer")
    result = train(TrainConfig(out=str(tmp_path / "longer"), resume="latest", **{**common, "steps": 8}))
    assert result.step == 8
    log = (tmp_path / "longer" / "train.log").read_text()
    assert "the schedule changed" in log and "resumed at step 6" in log


def test_resume_with_another_config_is_refused(runs):
    root, common, *_ = runs
    other = tiny_config("sana", "qwen2_5_vl", "pixel", scales=[ScaleSpec((4, 4), 0.5), ScaleSpec((8, 8), 1.0)])
    other.save(root / "other.json")
    with pytest.raises(HieraQueryError, match="different model configuration.*scales"):
        Trainer(TrainConfig(out=str(root / "resumed"), resume="latest", **{**common, "config": str(root / "other.json")}))


def test_resume_from_a_checkpoint_written_before_replay_existed_means_no_replay(runs, tmp_path):
    root, common, *_ = runs
    import shutil

    shutil.copytree(root / "resumed", tmp_path / "old")
    state_file = tmp_path / "old" / "checkpoints" / "step-0000006" / st.STATE_NAME
    state = json.loads(state_file.read_text())
    assert state.pop("replay_share") == 0.5
    state_file.write_text(json.dumps(state))
    with pytest.raises(HieraQueryError, match="replay_share 0.0 \\(now 0.5\\)"):
        Trainer(TrainConfig(out=str(tmp_path / "old"), resume="latest", **common))


def test_resume_with_other_batch_size_is_refused(runs):
    root, common, *_ = runs
    with pytest.raises(HieraQueryError, match="batch_size 2 \\(now 4\\)"):
        Trainer(TrainConfig(out=str(root / "resumed"), resume="latest", **{**common, "batch_size": 4}))


def test_existing_run_needs_resume_flag(runs):
    root, common, *_ = runs
    with pytest.raises(HieraQueryError, match="pass --resume"):
        Trainer(TrainConfig(out=str(root / "resumed"), **common))


def test_optimizer_state_round_trip(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)  # as in the trainer: a fresh optimizer's state is initialised with zero grads
    saved = st.optimizer_state_dict(model, opt)
    part = st.save_optimizer(tmp_path / "opt.safetensors", saved)
    json.dumps(part)
    fresh = torch.optim.AdamW(model.parameters(), lr=5.0)
    st.load_optimizer_state_dict(model, fresh, st.load_optimizer(tmp_path / "opt.safetensors", part))
    a, b = opt.state_dict(), fresh.state_dict()
    assert b["param_groups"][0]["lr"] == 1e-3 and tuple(b["param_groups"][0]["betas"]) == (0.9, 0.95)
    for k in a["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a["state"][k][name], b["state"][k][name])


def test_rng_states_round_trip(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    np.random.standard_normal()  # leave a cached gaussian in numpy's state
    st.save_rng(tmp_path / "rng.safetensors")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    st.load_rng(tmp_path / "rng.safetensors")
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
    with st.preserved_rng():
        torch.rand(10)
    after = torch.rand(1)
    st.load_rng(tmp_path / "rng.safetensors")
    torch.rand(3)
    assert torch.equal(after, torch.rand(1))


def test_half_written_checkpoint_is_ignored(tmp_path):
    """A save killed before its rename leaves only a hidden temporary folder, which never counts as a checkpoint."""
    root = tmp_path / "checkpoints"
    done = root / st.step_dir_name(3)
    done.mkdir(parents=True)
    st.write_json(done / st.STATE_NAME, {"format": st.STATE_FORMAT, "format_version": st.STATE_VERSION})
    partial = st.temporary_dir(root / st.step_dir_name(6))
    partial.mkdir()
    (partial / "rng-rank0.safetensors").write_bytes(b"")
    (root / st.step_dir_name(9)).mkdir()  # no trainer_state.json: incomplete
    assert st.latest_checkpoint(root) == done
    assert [p.name for p in st.list_checkpoints(root)] == ["step-0000003"]


def test_process_killed_by_sigkill_resumes_exactly(tmp_path):
    """A real SIGKILL of a command-line run right after its step-4 checkpoint; `--resume` then ends with the
    same weights as a run that was never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tiny_config("sd3", "causal_lm", "pixel").save(tmp_path / "cfg.json")
    settings = dict(stage="t2i", config=str(tmp_path / "cfg.json"), data="shapesworld", shapesworld_samples=6, steps=6, warmup=2, batch_size=2,
                    save_every=2, progress=False)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items() if k != "progress"] + ["--no-progress"]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'tests'}", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    killed = subprocess.run([sys.executable, "-m", "train.train", *flags, "--out", str(tmp_path / "killed"), "--eval-every", "4",
                             "--eval-hook", "train_kill_hook:kill_at_step_4"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [p.name for p in st.list_checkpoints(tmp_path / "killed" / "checkpoints")] == ["step-0000002", "step-0000004"]
    assert not (tmp_path / "killed" / "final").exists()
    resumed = train(TrainConfig(out=str(tmp_path / "killed"), resume="latest", **settings))
    straight = train(TrainConfig(out=str(tmp_path / "straight"), **settings))
    a = load_checkpoint(tmp_path / "straight" / "final").state_dict()
    b = load_checkpoint(tmp_path / "killed" / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.losses == straight.losses
