"""How close the DiT runs to the machine's limit (issue item 3), and what the thread count does to it.

FLOPs of one DiT forward are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
convolutions and attention; elementwise work is not counted, so the achieved rate is a lower bound
of the useful work done). The peak is a large square matmul in the model's dtype, timed interleaved
with the DiT forward so both see the same load from other jobs: the faster of ``torch.mm`` and the product of the
DiT's own linear layer (:class:`~hieraquery_core.cpu_linear.CpuLinear`, which on the CPU multiplies with a packed
weight and runs faster than ``torch.mm`` there), so the DiT is never measured against a product slower than its own.
"""

from __future__ import annotations

import math
import os

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from hieraquery_core.connector import ScaleCondition
from hieraquery_core.cpu_linear import CpuLinear
from hieraquery_core.model import HieraQuery
from hieraquery_core.pipeline import HieraQueryPipeline

from .configs import PROMPT
from .timing import interleaved


def cfg_condition(model: HieraQuery, k: int = -1) -> ScaleCondition:
    """Scale k's [uncond, cond] condition for the benchmark prompt: the CFG batch of 2 the samplers run."""
    encoded = HieraQueryPipeline(model).encode(PROMPT)
    return ScaleCondition.cat([encoded.uncond[k], encoded.cond[k]])


def dit_inputs(model: HieraQuery, size: tuple[int, int], condition: ScaleCondition) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents for one forward at pixel ``size`` with the condition's batch (a CFG batch), and sigma."""
    factor = model.codec.downsample
    generator = torch.Generator("cpu").manual_seed(0)
    latents = torch.randn(condition.tokens.shape[0], model.codec.channels, size[0] // factor, size[1] // factor, generator=generator).to(model.device)
    return latents, torch.tensor(0.5, device=model.device)


@register_flop_formula(torch.ops.mkldnn._linear_pointwise)
def packed_linear_flops(x_shape, w_shape, *args, **kwargs) -> int:
    """FLOPs of oneDNN's product with a packed weight [out, in] (:mod:`hieraquery_core.cpu_linear`), which
    ``FlopCounterMode`` does not count by itself: those of the ``F.linear`` it replaces."""
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


@torch.no_grad()
def dit_flops(model: HieraQuery, size: tuple[int, int], condition: ScaleCondition) -> int:
    """FLOPs of one DiT forward (Eq. 5) at pixel ``size`` under ``condition``."""
    latents, sigma = dit_inputs(model, size, condition)
    counter = FlopCounterMode(display=False)
    with counter:
        model.dit(latents, sigma, condition)
    return counter.get_total_flops()


@torch.no_grad()
def dit_against_peak(model: HieraQuery, condition: ScaleCondition, repeats: int, matmul_size: int) -> dict[str, float]:
    """Achieved FLOP/s of the full-resolution DiT forward against the matmul peak, both medians."""
    size = model.scale_sizes()[-1]
    flops = dit_flops(model, size, condition)
    latents, sigma = dit_inputs(model, size, condition)
    a = torch.randn(matmul_size, matmul_size, device=model.device, dtype=model.dtype)
    b = torch.randn(matmul_size, matmul_size, device=model.device, dtype=model.dtype)
    layer = CpuLinear(matmul_size, matmul_size, bias=False, device=model.device, dtype=model.dtype).requires_grad_(False)
    layer.weight.copy_(b.t())
    products = {"torch.mm": lambda r: torch.mm(a, b), "the DiT's linear layer": lambda r: layer(a)}
    times = interleaved({**products, "dit": lambda r: model.dit(latents, sigma, condition)}, repeats, model.device)
    best = min(products, key=lambda name: times[name].median)
    peak = 2 * matmul_size**3 / times[best].median
    achieved = flops / times["dit"].median
    peak_wall = 2 * matmul_size**3 / min(times[name].wall_median for name in products)
    return {
        "dit_gflop": flops / 1e9,
        "dit_seconds": times["dit"].median,
        "dit_spread": times["dit"].spread,
        "achieved_gflops": achieved / 1e9,
        "peak_gflops": peak / 1e9,
        "percent_of_peak": 100.0 * achieved / peak,
        "matmul_size": matmul_size,
        "peak_product": best,
        "dit_wall_seconds": times["dit"].wall_median,
        "peak_wall_gflops": peak_wall / 1e9,
        "percent_of_peak_wall": 100.0 * flops / times["dit"].wall_median / peak_wall,
    }


def across_threads(model: HieraQuery, condition: ScaleCondition, repeats: int, matmul_size: int) -> dict[int, dict[str, float]]:
    """:func:`dit_against_peak` at one thread, at every core (the two ends of a CPU user's choice) and at the current count;
    the caller's thread count is restored."""
    previous = torch.get_num_threads()
    rows = {}
    try:
        for threads in sorted({1, len(os.sched_getaffinity(0)), previous}):
            torch.set_num_threads(threads)
            rows[threads] = dit_against_peak(model, condition, repeats, matmul_size)
    finally:
        torch.set_num_threads(previous)
    return rows
