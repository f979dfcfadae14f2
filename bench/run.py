"""The benchmark: ``python -m bench.run`` (``make bench``) writes BENCHMARKS.md; ``--smoke`` is the quick
version CI runs (tiny model, one round, nothing written, no thresholds).

Per size: sampling cost of single-scale vs cascade vs Ming-style, the per-image breakdown and the
re-sample speed-up (:mod:`bench.sampling`), the DiT forward against the matmul peak
(:mod:`bench.efficiency`), and training throughput (:mod:`bench.training`). ``--device cuda --dtype
bfloat16 --sizes real`` (or ``python -m bench.gpu``) runs the paper's sizes on a GPU.

On a CPU the default is one intra-op thread, timed on the process's CPU clock (see
:mod:`bench.timing`): on a machine shared with other jobs, two threads wait on each other at every
op while the scheduler hands their cores to others; the "threads" table shows what that costs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from . import efficiency, report, sampling, training
from .configs import SIZES, build_model
from .timing import load_average, machine

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
BATCH = {"tiny": 4, "medium": 1, "real": 2}
"""Training batch per size (medium: one sample keeps a step to seconds on a CPU core)."""
MATMUL_SIZE = {"cpu": 2048, "cuda": 8192}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="HieraQuery benchmarks: cascade vs single-scale vs Ming-style sampling, time breakdown, efficiency, training.")
    parser.add_argument("--smoke", action="store_true", help="quick check (tiny, 2 steps, 1 round); writes nothing unless --output is given")
    parser.add_argument("--sizes", default=None, help=f"comma-separated, from {', '.join(SIZES)} (default tiny,medium; smoke: tiny)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads on a CPU (default 1)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per scale (default 4 on a CPU, 20 on a GPU; smoke 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per candidate (default 5; smoke 1)")
    parser.add_argument("--train-steps", type=int, default=None, help="timed training steps per variant, interleaved (default 5; smoke 1)")
    parser.add_argument("--output", type=Path, default=None, help="the markdown file to update (default BENCHMARKS.md; smoke: none)")
    parser.add_argument("--json", type=Path, default=None, help="also save the raw results here")
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.sizes = (args.sizes or ("tiny" if args.smoke else "tiny,medium")).split(",")
    for size in args.sizes:
        if size not in SIZES:
            parser.error(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    args.steps = args.steps or (2 if args.smoke else 20 if gpu else 4)
    args.repeats = args.repeats or (1 if args.smoke else 5)
    args.train_steps = args.train_steps or (1 if args.smoke else 5)
    if args.output is None and not args.smoke:
        args.output = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
    return args


def measure_size(size: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    model = build_model(size, device, dtype)
    condition = efficiency.cfg_condition(model)
    matmul = 256 if args.smoke else MATMUL_SIZE[device.type]
    out = {"sampling": sampling.measure(model, args.steps, args.repeats)}
    if device.type == "cpu" and not args.smoke:
        out["threads"] = efficiency.across_threads(model, condition, args.repeats, matmul)
        out["efficiency"] = out["threads"][torch.get_num_threads()]
    else:
        out["efficiency"] = efficiency.dit_against_peak(model, condition, args.repeats, matmul)
    del model, condition
    gc.collect()
    rows = training.measure(size, BATCH[size], args.train_steps, device, dtype, isolate=not args.smoke)
    out["training"] = [asdict(row) for row in rows]
    return out


def summary(results: dict) -> str:
    lines = []
    for size, r in results["sizes"].items():
        ratios, x = r["sampling"]["ratios"], r["sampling"]["resample"]
        train = {row["variant"]: row for row in r["training"]}
        lines.append(
            f"{size}: b/a {ratios['cascade_over_single']:.2f}  c/b {ratios['ming_over_cascade']:.2f}  "
            f"other {r['sampling']['breakdown']['everything else']['percent']:.1f}%  "
            f"peak {r['efficiency']['percent_of_peak']:.0f}%  re-sample x{x['speedup']:.2f}  "
            f"train {train['plain']['samples_per_second']:.2f} samples/s  "
            f"alignment {100 * (train['alignment']['step_seconds'] / train['plain']['step_seconds'] - 1):+.0f}%  "
            f"checkpointing {100 * (train['checkpointing']['step_seconds'] / train['plain']['step_seconds'] - 1):+.0f}%"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmarks; returns the results (and writes them where asked)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    previous_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    try:
        return measure_all(args, argv, device, dtype)
    finally:
        torch.set_num_threads(previous_threads)


def measure_all(args: argparse.Namespace, argv: list[str], device: torch.device, dtype: torch.dtype) -> dict:
    results: dict = {"command": f"python -m bench.run {shlex.join(argv)}".strip(), "machine": machine(device), "settings": {"steps": args.steps, "repeats": args.repeats, "train_steps": args.train_steps, "dtype": str(dtype).removeprefix("torch.")}, "sizes": {}}
    for size in args.sizes:
        results["sizes"][size] = measure_size(size, args, device, dtype)
    results["machine"]["load_after"] = load_average()
    print(summary(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.output:
        report.write(args.output, results)
        print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
