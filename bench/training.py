"""Training throughput (issue item 5): one step = ``model.training_loss`` (section 4.2: the flow-matching
loss summed over scales, plus the weighted alignment loss of section 3.2) + backward + an AdamW step.

Variants: plain; with the multi-scale representation alignment on (its extra cost); with gradient
checkpointing on the DiT (diffusers' ``enable_gradient_checkpointing``) and the connector
(transformers' ``activation_checkpointing_enable``).

Step time: the three variants are timed interleaved on one model (:func:`step_times`: round r runs a step of
each; alignment off is ``training_loss(align=False)``, checkpointing is switched on and off around its steps), so a
change in the machine's load hits all three alike. Timed one after another, each in its own process, the
alignment's extra cost read anywhere from -15 % to +15 % on this 2-core machine from one run to the next, where
the same steps interleaved differ by a few per cent (BENCHMARKS.md).

Peak memory: on a CPU, ``tracemalloc`` does not see torch's allocations, so each variant's memory is read in a
fresh subprocess (:func:`measure_memory`) from its resident-set high-water mark: ``VmHWM`` of ``/proc/self/status``
on Linux, not ``ru_maxrss``, which Linux carries over from the parent a child was spawned from (a child of the
benchmark, once it held a medium model, read 4.5 GB before its first step); ``ru_maxrss`` elsewhere. Parameters,
gradients and AdamW's two moment buffers are allocated *before* the baseline reading (a zero-gradient optimizer
step), so the delta over a warm-up step and a second step is the step's own working memory: activations kept for
backward, plus temporaries. On CUDA the same delta is read from ``torch.cuda.max_memory_allocated``.

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

from hieraquery_core.model import HieraQuery, TrainingBatch

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


@dataclass
class MemoryRow:
    """What :func:`measure_memory` reads for one variant."""

    working_memory_mb: float
    peak_memory_mb: float
    adamw_seconds: float
    adamw_fused_seconds: float


def peak_memory_mb(device: torch.device) -> float:
    """This process's memory high-water mark (module docstring)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.is_file():
        return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:")) / 1024  # kB
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 2**20 if sys.platform == "darwin" else usage / 1024  # macOS reports bytes, the others KiB


def adamw_seconds(params: list[torch.nn.Parameter], device: torch.device, fused: bool) -> float:
    """Median time of one AdamW step over ``params`` (which must have gradients)."""
    optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1, fused=fused or None)
    return interleaved({"adamw": lambda r: optimizer.step()}, 3, device)["adamw"].median


def set_checkpointing(model: HieraQuery, on: bool) -> None:
    """Gradient checkpointing of the DiT (diffusers) and the connector (transformers), on or off."""
    transformer, connector = model.dit.transformer, model.connector.encoder
    if on:
        transformer.enable_gradient_checkpointing()
        connector.activation_checkpointing_enable()
    else:
        transformer.disable_gradient_checkpointing()
        connector.activation_checkpointing_disable()


class Trainer:
    """One benchmark model with its AdamW and a fixed batch; :meth:`step` runs one training step of a variant."""

    def __init__(self, size: str, batch: int, device: torch.device, dtype: torch.dtype, alignment: bool = True) -> None:
        self.model = build_model(size, device, dtype, alignment_weight=ALIGNMENT_WEIGHT if alignment else 0.0).train()
        self.params = self.model.trainable_parameters()
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)
        for p in self.params:  # allocate gradients and AdamW's moments before any baseline memory reading
            p.grad = torch.zeros_like(p)
        self.optimizer.step()
        self.generator = torch.Generator("cpu").manual_seed(0)
        side = self.model.config.image_size
        self.data = TrainingBatch([PROMPT] * batch, torch.rand(batch, 3, side, side, generator=self.generator).to(device=device, dtype=dtype))

    def step(self, variant: str) -> None:
        alignment, checkpointing = VARIANTS[variant]
        set_checkpointing(self.model, checkpointing)
        self.model.training_loss(self.data, generator=self.generator, align=alignment).total.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()


def step_times(size: str, batch: int, rounds: int, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Median seconds of one training step of every variant, timed interleaved on one model (module docstring)."""
    trainer = Trainer(size, batch, device, dtype)
    timings = interleaved({variant: lambda r, v=variant: trainer.step(v) for variant in VARIANTS}, rounds, device)
    return {variant: t.median for variant, t in timings.items()}


def measure_memory(size: str, variant: str, batch: int, device: torch.device, dtype: torch.dtype) -> MemoryRow:
    """Working and peak memory of a variant's step (run it in a fresh process), and AdamW's step time."""
    trainer = Trainer(size, batch, device, dtype, alignment=VARIANTS[variant][0])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = peak_memory_mb(device)
    for _ in range(2):  # a warm-up step, then one more
        trainer.step(variant)
    peak = peak_memory_mb(device)
    for p in trainer.params:
        p.grad = torch.full_like(p, 1e-3)
    # Linux reads VmHWM as max(its recorded high-water mark, the current RSS) and records the mark lazily, so a
    # reading can fall by a few pages: a step that never rises above the baseline reads 0, not a negative delta.
    working = max(0.0, peak - baseline)
    return MemoryRow(working, peak, adamw_seconds(trainer.params, device, fused=False), adamw_seconds(trainer.params, device, fused=True))


def measure(size: str, batch: int, rounds: int, device: torch.device, dtype: torch.dtype, isolate: bool = True) -> list[TrainingRow]:
    """Every variant: step time from :func:`step_times`, memory from :func:`measure_memory`, each variant's in a
    fresh subprocess (``isolate``) so its memory high-water mark is its own; without ``isolate`` (the smoke run)
    in this process, where the memory columns mean little."""
    seconds = step_times(size, batch, rounds, device, dtype)
    rows = []
    for variant in VARIANTS:
        if isolate:
            command = [sys.executable, "-m", "bench.training", "--size", size, "--variant", variant, "--batch", str(batch),
                       "--device", str(device), "--dtype", str(dtype).removeprefix("torch."), "--threads", str(torch.get_num_threads())]
            done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parent.parent)
            if done.returncode != 0:
                raise RuntimeError(f"training benchmark {size}/{variant} failed:\n{done.stderr[-4000:]}")
            memory = MemoryRow(**json.loads(done.stdout.strip().splitlines()[-1]))
        else:
            memory = measure_memory(size, variant, batch, device, dtype)
        rows.append(TrainingRow(size, variant, batch, seconds[variant], batch / seconds[variant], **asdict(memory)))
    return rows


def main(argv: list[str] | None = None) -> None:
    """One variant's memory in this process; prints it as JSON (the last line of stdout)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", required=True)
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    row = measure_memory(args.size, args.variant, args.batch, torch.device(args.device), getattr(torch, args.dtype))
    print(json.dumps(asdict(row)))


if __name__ == "__main__":
    main()
