"""Run by tests/test_train_distributed.py under ``accelerate launch`` with 2 CPU processes (gloo).

In one launch: (a) 4 steps straight; (b) the same run stopped after the step-2 checkpoint and resumed to
step 4. Writes ``result.json`` (main process) with every process's parameter checksums after each run and
whether (a) and (b) end bit-identical.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from hieraquery_core.checkpoint import own_state_dict
from train.train import Trainer, TrainConfig


class Stop(Exception):
    pass


def stop_at(step: int):
    def callback(trainer, now):
        if now == step:
            raise Stop()
    return callback


def main() -> None:
    root = Path(sys.argv[1])
    common = dict(stage="edit", config=str(root / "cfg.json"), data="shapesworld", shapesworld_samples=12, steps=4, warmup=1, batch_size=2,
                  save_every=2, log_every=1, progress=False)
    straight = Trainer(TrainConfig(out=str(root / "straight"), **common))
    straight.fit()
    sums_straight = straight.parameter_checksums()
    weights_straight = own_state_dict(straight.model)
    dit_straight = {k: v.clone() for k, v in straight.model.dit.state_dict().items()}
    acc = straight.accelerator

    try:
        Trainer(TrainConfig(out=str(root / "resumed"), eval_every=2, **common), callbacks=[stop_at(2)]).fit()
    except Stop:
        pass
    resumed = Trainer(TrainConfig(out=str(root / "resumed"), resume="latest", **common))
    start = resumed.step
    resumed.fit()
    sums_resumed = resumed.parameter_checksums()
    weights_resumed = own_state_dict(resumed.model)
    dit_resumed = resumed.model.dit.state_dict()
    max_diff = max(
        [(weights_straight[k] - weights_resumed[k]).abs().max().item() for k in weights_straight]
        + [(dit_straight[k] - dit_resumed[k]).abs().max().item() for k in dit_straight]
    )
    equal = all(torch.equal(weights_straight[k], weights_resumed[k]) for k in weights_straight) and all(torch.equal(dit_straight[k], dit_resumed[k]) for k in dit_straight)
    if acc.is_main_process:
        (root / "result.json").write_text(json.dumps({
            "num_processes": acc.num_processes, "distributed_type": str(acc.distributed_type),
            "checksums_straight": sums_straight, "checksums_resumed": sums_resumed, "resumed_from": start,
            "max_abs_diff": max_diff, "bit_identical": equal,
        }))
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
