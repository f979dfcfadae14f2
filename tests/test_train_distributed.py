"""Two CPU processes under ``accelerate launch`` (DDP over gloo, the shipped train/accelerate/ddp.yaml):
the replicas stay in sync, and a run stopped and resumed under DDP ends bit-identical to a straight one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from hieraquery_core.tiny import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_cpu_processes(*program: str) -> subprocess.CompletedProcess:
    """``accelerate launch`` with the shipped ddp.yaml, two CPU processes (gloo), one thread each; ``program``: a script and
    its arguments, or ``-m module ...``. Returns the finished launch (stdout and stderr captured)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "train" / "accelerate" / "ddp.yaml"),
               "--num_processes", "2", "--mixed_precision", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), *program]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_stay_in_sync_and_resume_exactly(tmp_path):
    tiny_config("sana", "qwen2_5_vl", "pixel").save(tmp_path / "cfg.json")
    started = time.time()
    proc = launch_two_cpu_processes(str(ROOT / "tests" / "train_ddp_script.py"), str(tmp_path))
    wall = time.time() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((tmp_path / "result.json").read_text())
    print(f"2-process launch: {wall:.1f} s wall; {result}")
    assert result["num_processes"] == 2 and "MULTI_CPU" in result["distributed_type"]
    a, b = result["checksums_straight"]
    assert a == b, "the two processes' parameters differ after training"
    c, d = result["checksums_resumed"]
    assert c == d
    assert result["resumed_from"] == 2
    assert result["bit_identical"], f"resumed run differs from the straight one by {result['max_abs_diff']}"
    assert a == c
    # Every process wrote its own RNG state, and the log reports the sync check.
    step = tmp_path / "resumed" / "checkpoints" / "step-0000004"
    assert (step / "rng-rank0.safetensors").is_file() and (step / "rng-rank1.safetensors").is_file()
    assert "parameter checksums of 2 processes: identical" in (tmp_path / "straight" / "train.log").read_text()


def test_shipped_accelerate_configs_load_and_name_real_layers():
    from accelerate.commands.config.config_args import load_config_from_file

    from tiny_models import make_model

    kinds = {}
    for path in sorted((ROOT / "train" / "accelerate").glob("*.yaml")):
        config = load_config_from_file(str(path))
        kinds[path.stem] = str(config.distributed_type)
        if config.fsdp_config:
            dit = "sd3" if "sd3" in path.stem else "sana"
            present = {type(m).__name__ for m in make_model(dit, "qwen2_5_vl", "pixel").modules()}
            wanted = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")
            assert set(wanted) <= present, (path.name, set(wanted) - present)
    assert kinds == {"ddp": "DistributedType.MULTI_GPU", "deepspeed_zero2": "DistributedType.DEEPSPEED", "fsdp_sana": "DistributedType.FSDP",
                     "fsdp_sd3": "DistributedType.FSDP", "single": "DistributedType.NO"}


def test_gathered_state_dict_path_writes_the_same_model(tmp_path):
    """The FSDP / DeepSpeed save path (a CPU copy filled from the gathered full state dict), run on one process."""
    import torch

    from hieraquery_core.checkpoint import load_checkpoint
    from train.train import Trainer, TrainConfig

    tiny_config("sd3", "causal_lm", "pixel").save(tmp_path / "cfg.json")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(TrainConfig(stage="t2i", config=str(tmp_path / "cfg.json"), data="shapesworld", shapesworld_samples=4, steps=1, batch_size=2,
                                      out=str(tmp_path / "run"), progress=False))
        trainer.fit()
        trainer.sharded = True
        copy = trainer._model_for_saving()
        assert copy is not trainer.model
        expected, got = trainer.model.state_dict(), copy.state_dict()
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
        trainer.step = 2
        folder = trainer.save()
        saved = load_checkpoint(folder / "model").state_dict()
        assert all(torch.equal(expected[k], saved[k]) for k in expected)
    finally:
        torch.set_num_threads(before)
