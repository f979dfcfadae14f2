"""Where the time of one image goes (issue item 2): MLLM encode, connector, DiT per scale, VAE decode.

Measured with forward hooks on the model's own modules (nothing in the library changes): a pre-hook
starts a clock and the matching post-hook charges the elapsed time to the component. Whatever the
hooks do not cover (the pipeline's Python, the scheduler's step, noise, copies, the query sequence of
Eq. 3) is "everything else" = total time - the sum of the components.

One nested row (inside the DiT's time, not added to the sum) measures the caption path
(``DiffusionTransformer.caption_path``: for SANA the caption projection, its norm and every block's
cross-attention keys and values). It depends only on the condition, so the pipeline computes it once per
scale (``constant_condition``); before that cache it ran at every denoising step (4% of a medium image).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from hieraquery_core.model import HieraQuery

from .timing import CLOCKS, primary_clock, synchronize

OTHER = "everything else"
CAPTION = "of which: DiT caption path (once per scale)"
NESTED = {CAPTION}
"""Rows measured inside another component's time: shown, not added to the sum."""


class Stopwatch:
    """Accumulated seconds per component over the hooked calls.

    On a CPU each hook reads the primary clock of :mod:`bench.timing`. On CUDA the hooks record CUDA
    events instead (no synchronisation inside the run, so the hooked run keeps its asynchrony); the
    events are read in :meth:`collect` after one synchronisation.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.clock = CLOCKS[primary_clock(device)]
        self.seconds: dict[str, float] = defaultdict(float)
        self.pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    def mark(self) -> object:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return self.clock()

    def watch(self, module: nn.Module, label) -> list:
        """Charge every forward of ``module`` to ``label`` (a string, or a function of the call's args)."""
        started: list = []

        def before(_module: nn.Module, args: tuple) -> None:
            started.append(self.mark())

        def after(_module: nn.Module, args: tuple, _output) -> None:
            name = label(args) if callable(label) else label
            begin, end = started.pop(), self.mark()
            if self.device.type == "cuda":
                self.pending.append((name, begin, end))
            else:
                self.seconds[name] += end - begin

        return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def collect(self) -> dict[str, float]:
        """Seconds per component (reads the CUDA events once the device is done)."""
        synchronize(self.device)
        for name, begin, end in self.pending:
            self.seconds[name] += begin.elapsed_time(end) / 1000.0
        self.pending.clear()
        return dict(self.seconds)


def dit_labels(model: HieraQuery) -> list[str]:
    """The breakdown's row name of each scale's DiT time."""
    return [f"DiT scale {k} ({scale.name} queries, {h}x{w} px)" for k, (scale, (h, w)) in enumerate(zip(model.config.scales, model.scale_sizes()))]


def components(model: HieraQuery) -> list[tuple[nn.Module, object]]:
    """The hooked modules and their labels: the DiT's time is split by scale via the latent size."""
    factor = model.codec.downsample
    latent_sides = {(h // factor, w // factor): label for (h, w), label in zip(model.scale_sizes(), dit_labels(model))}
    watched: list[tuple[nn.Module, object]] = [
        (model.mllm, "MLLM encode"),
        (model.connector, "connector"),
        (model.dit, lambda args: latent_sides.get(tuple(args[0].shape[-2:]), "DiT (other size)")),
    ]
    if model.codec.vae is not None:
        watched.append((model.codec.vae.decoder, "VAE decode"))
    watched += [(module, CAPTION) for module in model.dit.caption_path()]
    return watched


@contextmanager
def stopwatch(model: HieraQuery, device: torch.device) -> Iterator[Stopwatch]:
    """Hooks on while inside; removed on exit."""
    watch = Stopwatch(device)
    handles = [h for module, label in components(model) for h in watch.watch(module, label)]
    try:
        yield watch
    finally:
        for handle in handles:
            handle.remove()


def shares(seconds: dict[str, float], total: float) -> dict[str, dict[str, float]]:
    """Seconds and percent of total per component, plus "everything else" (the remainder of the
    non-nested components)."""
    order = ("MLLM", "connector", "DiT", "of which", "VAE")
    ranked = sorted(seconds.items(), key=lambda kv: (next(i for i, p in enumerate(order) if kv[0].startswith(p)), kv[0]))
    rows = {name: {"seconds": s, "percent": 100.0 * s / total} for name, s in ranked}
    other = total - sum(s for name, s in seconds.items() if name not in NESTED)
    rows[OTHER] = {"seconds": other, "percent": 100.0 * other / total}
    rows["total"] = {"seconds": total, "percent": 100.0}
    return rows
