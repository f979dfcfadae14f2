"""Training throughput (issue item 5): one step = ``model.training_loss`` (section 4.2: the flow-matching
loss summed over scales, plus the weighted alignment loss of section 3.2) + backward + an AdamW step.

Variants: plain; with the multi-scale representation alignment on (its extra cost); with gradient
checkpointing on the DiT (diffusers' ``enable_gradient_checkpointing``) and the connector
(transformers' ``activation_checkpointing_enable``).

Peak memory: on a CPU, ``tracemalloc`` does not see torch's allocations, so each variant runs in a
fresh subprocess and reports ``resource.getrusage().ru_maxrss`` (the process's resident-set high-water
mark). Parameters, gradients and AdamW's two moment buffers are allocated *before* the baseline
reading (a zero-gradient optimizer step), so the delta over the timed steps is the step's own
working memory: activations kept for backward, plus temporaries. On CUDA the same delta is read
from ``torch.cuda.max_memory_allocated``.

The optimizer step alone is also timed with AdamW's default (per-parameter loop on a CPU) and with
``fused=True``, over the same parameters.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hieraquery_core.model import TrainingBatch

from .configs import PROMPT, build_model
from .timing import interleaved

ALIGNMENT_WEIGHT = 0.5
VARIANTS = {"plain": (False, False), "alignment": (True, False), "checkpointing": (False, True)}
"""name -> (alignment loss on, gradient checkpointing on)."""


@dataclass
class TrainingRow:
    size: str
    variant: str
    batch: int
    step_seconds: float
    samples_per_second: float
    working_memory_mb: float
    peak_memory_mb: float
    adamw_seconds: float
    adamw_fused_seconds: float


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def adamw_seconds(params: list[torch.nn.Parameter], device: torch.device, fused: bool) -> float:
    """Median time of one AdamW step over ``params`` (which must have gradients)."""
    optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1, fused=fused or None)
    return interleaved({"adamw": lambda r: optimizer.step()}, 3, device)["adamw"].median


def measure_variant(size: str, variant: str, batch: int, steps: int, device: torch.device, dtype: torch.dtype) -> TrainingRow:
    """Median seconds of ``steps`` training steps (after one warm-up step) and the working memory."""
    alignment, checkpointing = VARIANTS[variant]
    model = build_model(size, device, dtype, alignment_weight=ALIGNMENT_WEIGHT if alignment else 0.0).train()
    if checkpointing:
        model.dit.transformer.enable_gradient_checkpointing()
        model.connector.encoder.activation_checkpointing_enable()
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)
    for p in params:  # allocate gradients and AdamW's moments before the baseline memory reading
        p.grad = torch.zeros_like(p)
    optimizer.step()
    generator = torch.Generator("cpu").manual_seed(0)
    side = model.config.image_size
    targets = torch.rand(batch, 3, side, side, generator=generator).to(device=device, dtype=dtype)
    data = TrainingBatch([PROMPT] * batch, targets)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = peak_memory_mb(device)

    def step(_r: int) -> None:
        loss = model.training_loss(data, generator=generator).total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    seconds = interleaved({"step": step}, steps, device)["step"].median
    peak = peak_memory_mb(device)
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    optimizers = {fused: adamw_seconds(params, device, fused) for fused in (False, True)}
    return TrainingRow(size, variant, batch, seconds, batch / seconds, peak - baseline, peak, optimizers[False], optimizers[True])


def measure(size: str, batch: int, steps: int, device: torch.device, dtype: torch.dtype, isolate: bool = True) -> list[TrainingRow]:
    """Every variant, each in a fresh subprocess (``isolate``) so its memory high-water mark is its own;
    without ``isolate`` (the smoke run) in this process, where the memory columns mean little."""
    if not isolate:
        return [measure_variant(size, v, batch, steps, device, dtype) for v in VARIANTS]
    rows = []
    for variant in VARIANTS:
        command = [sys.executable, "-m", "bench.training", "--size", size, "--variant", variant, "--batch", str(batch), "--steps", str(steps),
                   "--device", str(device), "--dtype", str(dtype).removeprefix("torch."), "--threads", str(torch.get_num_threads())]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parent.parent)
        if done.returncode != 0:
            raise RuntimeError(f"training benchmark {size}/{variant} failed:\n{done.stderr[-4000:]}")
        rows.append(TrainingRow(**json.loads(done.stdout.strip().splitlines()[-1])))
    return rows


def main(argv: list[str] | None = None) -> None:
    """One variant in this process; prints its row as JSON (the last line of stdout)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", required=True)
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    row = measure_variant(args.size, args.variant, args.batch, args.steps, torch.device(args.device), getattr(torch, args.dtype))
    print(json.dumps(asdict(row)))


if __name__ == "__main__":
    main()
