"""Retrain the bundled ShapesWorld demo checkpoint from a fresh checkout, in one command.

    python -m train.make_demo                        # everything below (default budget 550,40,150)
    python -m train.make_demo --steps 4000,200,1500  # per-stage budgets (t2i, reconstruction, edit)

Steps (paper section 4.2, in miniature):

0. the frozen MLLM: :mod:`train.shapesworld_mllm` pretrains a small Qwen2.5-VL on ShapesWorld captions and
   questions once (skipped when ``hieraquery_core/assets/shapesworld-mllm`` exists);
1. text-to-image pretraining on ``train_pairs`` (held-out prompts and scenes are never drawn);
2. image reconstruction: empty prompt + the image as MLLM input -> the same image (the editing stage's
   image-only guidance branch, see ``train/data.py``);
3. editing fine-tuning on edit triplets from a training stream (half of every batch stays text-to-image so
   the short budget does not forget it).

The MLLM is frozen throughout; the queries, connector, DiT and alignment projector train (AdamW, warm-up then
cosine decay, as the paper). Each stage writes ``runs/demo/<stage>`` (resumable: a finished stage is skipped)
and the latest weights are copied to ``hieraquery_core/assets/shapesworld-demo`` every ``--save-every`` steps,
so partial progress is always a usable checkpoint. The architecture is ``train/configs/shapesworld-demo.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from hieraquery_core.checkpoint import load_checkpoint, save_checkpoint
from hieraquery_core.config import HieraQueryConfig
from hieraquery_core.model import HieraQuery, TrainingBatch
from hieraquery_core.shapesworld import render, sample_edit, train_pairs
from train import shapesworld_mllm

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "train" / "configs" / "shapesworld-demo.json"
ASSET = ROOT / "hieraquery_core" / "assets" / "shapesworld-demo"
STAGES = ("t2i", "reconstruction", "edit")
TRAIN_STREAM = 0x545241  # "TRA": training samples never share a stream with evaluation


def pixels(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def stage_batches(stage: str, batch: int, seed: int) -> Iterator[TrainingBatch]:
    """Endless ShapesWorld batches for one stage (fresh samples every step)."""
    rng = np.random.default_rng([seed, TRAIN_STREAM, STAGES.index(stage)])
    pairs = train_pairs(rng)
    while True:
        prompts, targets, images = [], [], []
        for i in range(batch):
            if stage == "edit" and i % 2 == 0:
                triplet = sample_edit(rng)
                prompts.append(triplet.instruction), targets.append(render(triplet.target)), images.append([pixels([render(triplet.source)])[0]])
                continue
            _, prompt, scene = next(pairs)
            image = render(scene)
            prompts.append("" if stage == "reconstruction" else prompt), targets.append(image)
            images.append([pixels([image])[0]] if stage == "reconstruction" else [])
        yield TrainingBatch(prompts, pixels(targets), images if stage != "t2i" else None)


def train_stage(model: HieraQuery, stage: str, steps: int, batch: int, lr: float, seed: int, save_every: int, out: Path,
                on_save: Callable[[Path], None] | None = None) -> None:
    """One stage: AdamW with linear warm-up and cosine decay to lr/10; saves ``out/latest`` every ``save_every`` steps
    (then calls ``on_save`` with it) and ``out/final`` at the end."""
    torch.manual_seed(seed)
    model.train()
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, min(50, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    generator = torch.Generator().manual_seed(seed)
    batches = stage_batches(stage, batch, seed)
    start, recent = time.time(), []
    for step in range(1, steps + 1):
        loss = model.training_loss(next(batches), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        recent.append([loss.total.item(), *(f.item() for f in loss.flow), *(a.item() for a in loss.alignment)])
        if step % 25 == 0:
            print(f"[{stage}] step {step}/{steps} loss(total, flow per scale, align per scale) {np.round(np.mean(recent, 0), 4).tolist()} ({time.time() - start:.0f}s)", flush=True)
            recent = []
        if step % save_every == 0 or step == steps:
            model.eval()
            save_checkpoint(model, out / "latest")
            if on_save is not None:
                on_save(out / "latest")
            model.train()
    model.eval()
    save_checkpoint(model, out / "final")
    (out / "final" / "stage.json").write_text(json.dumps({"stage": stage, "steps": steps, "batch": batch, "lr": lr, "seed": seed}) + "\n")


def publish(checkpoint: Path) -> None:
    """Copy a checkpoint to the bundled asset folder (atomically: temp copy + rename)."""
    tmp = ASSET.with_name(ASSET.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp)
    shutil.rmtree(ASSET, ignore_errors=True)
    tmp.rename(ASSET)


def build_model(config_path: Path) -> HieraQuery:
    """The demo model: the frozen ShapesWorld MLLM (paths in the config are relative to the repository root)."""
    return HieraQuery.from_config(HieraQueryConfig.load(config_path), base_dir=ROOT)


def pretrain_mllm(runs: Path) -> None:
    """Step 0, the recipe of the committed MLLM: 2000 steps at lr 2e-3, then 1200 more at lr 1e-3 on a fresh stream."""
    phase1 = runs / "mllm-phase1"
    if not (phase1 / "model.safetensors").is_file():
        shapesworld_mllm.main(["--steps", "2000", "--lr", "2e-3", "--seed", "1", "--out", str(phase1)])
    shapesworld_mllm.main(["--resume", str(phase1), "--steps", "1200", "--lr", "1e-3", "--seed", "2", "--out", str(shapesworld_mllm.ASSET_DIR)])


def run(steps: list[int], batch: int, lr: float, seed: int, save_every: int, runs: Path, config: Path, threads: int, publish_to_assets: bool = True) -> None:
    if not (shapesworld_mllm.ASSET_DIR / "model.safetensors").is_file():
        pretrain_mllm(runs)
    torch.set_num_threads(threads)
    previous: Path | None = None
    for stage, n in zip(STAGES, steps):
        out = runs / stage
        if (out / "final" / "stage.json").is_file():
            print(f"[{stage}] already trained ({out / 'final'}), skipping", flush=True)
        elif n > 0:
            model = load_checkpoint(previous) if previous is not None else build_model(config)
            train_stage(model, stage, n, batch, lr, seed, save_every, out, on_save=publish if publish_to_assets else None)
        else:
            continue
        previous = out / "final"
    if previous is not None and publish_to_assets:
        publish(previous)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="550,40,150", help="steps of the t2i, reconstruction and edit stages")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--no-publish", action="store_true", help="keep checkpoints under --runs only (do not touch the bundled asset)")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    if len(steps) != len(STAGES):
        parser.error(f"--steps needs {len(STAGES)} comma-separated counts (t2i, reconstruction, edit)")
    run(steps, args.batch, args.lr, args.seed, args.save_every, args.runs, args.config, args.threads, publish_to_assets=not args.no_publish)


if __name__ == "__main__":
    main()
