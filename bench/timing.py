"""Timing on a noisy machine, the matmul peak, and the description of the machine.

Every benchmark times its candidates *interleaved* (round r runs every candidate once, in the same
order) after one warm-up call each, and reports the median over rounds: on a machine shared with other
jobs the load drifts over minutes, and interleaving spreads that drift evenly over the candidates
being compared, so ratios stay meaningful even when absolute times move.

Two clocks are recorded for every sample: wall time (``time.perf_counter``, after synchronising the
device) and the process's CPU time (``time.process_time``). With one intra-op thread on a CPU, CPU time
is the time the work took while it held a core: it leaves out the time the scheduler gave the core to
other jobs, which on a shared machine is most of the noise. It is the primary clock there
(:func:`primary_clock`); with several threads or on a GPU the wall clock is.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (CUDA); CPU ops are synchronous already."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def primary_clock(device: torch.device) -> str:
    """'cpu' (process CPU time) for single-threaded CPU runs, else 'wall'."""
    return "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn: Callable[[], object], device: torch.device) -> dict[str, float]:
    """Seconds one call of ``fn`` takes on both clocks, queued device work included."""
    synchronize(device)
    start = {name: clock() for name, clock in CLOCKS.items()}
    fn()
    synchronize(device)
    return {name: clock() - start[name] for name, clock in CLOCKS.items()}


@dataclass
class Timing:
    """Repeated samples of one candidate on the primary clock, in seconds (and the wall clock's)."""

    samples: list[float]
    wall: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median: how much the machine's load moved the samples."""
        return (max(self.samples) - min(self.samples)) / self.median


    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall)


WARMUP = -1
"""The round index of the untimed warm-up call (a candidate may make it cheaper, e.g. one step)."""


def interleaved(candidates: dict[str, Callable[[int], object]], repeats: int, device: torch.device) -> dict[str, Timing]:
    """Time every candidate ``repeats`` times, interleaved; each is called with the round index
    (a candidate may use it as a seed), after one untimed warm-up call each (round :data:`WARMUP`)."""
    for fn in candidates.values():
        fn(WARMUP)
    clock = primary_clock(device)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in candidates}
    for r in range(repeats):
        for name, fn in candidates.items():
            samples[name].append(timed(lambda: fn(r), device))
    return {name: Timing([t[clock] for t in s], [t["wall"] for t in s]) for name, s in samples.items()}


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (other jobs competing for the cores)."""
    return os.getloadavg()


def machine(device: torch.device) -> dict[str, object]:
    """What the numbers were measured on."""
    import diffusers
    import transformers

    info: dict[str, object] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "clock": primary_clock(device),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "load_before": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
