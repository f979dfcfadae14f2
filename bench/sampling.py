"""What the coarse-to-fine cascade costs (issue items 1, 2 and 4), all in one process, same DiT weights,
same steps per scale, same guidance, same final resolution:

(a) ``single_scale``: the floor for any pipeline, MetaQuery-style: one precomputed condition (the finest
    scale's), a plain loop over diffusers' transformer and ``FlowMatchEulerDiscreteScheduler`` with a CFG
    batch of 2, one VAE decode. ``single_scale_cached`` (a') is the same loop inside the DiT's caption-path
    cache (``DiffusionTransformer.constant_condition``) that the pipeline uses: b/a' compares like with like.
(b) ``cascade``: ``HieraQueryPipeline.sample`` with mode="cascade" on a pre-encoded prompt: scale k at its
    own resolution (Eq. 5, Fig. 2), every scale decoded. Each round uses a new seed, so this is also the
    re-sample of item 4.
(c) ``ming``: mode="ming", every scale at the full resolution (Ming-Lite-Uni's inference).
(b_r) ``cascade_refined``: the cascade as the bundled demo is sampled (``BUNDLED_DEMO_SAMPLING``): each scale
    after the first starts from the previous one re-noised to the demo's refine strength s, so it runs round(s x steps) of
    its steps (at least 1). Not an equal-steps comparison: it is what an artist's image costs at the demo's best quality.
(b_s) ``cascade_checked``: (b_r) with the self-check (``SamplingOptions.candidates``, :mod:`hieraquery_core.self_check`)
    choosing among :data:`CHECK_CANDIDATES` cascades: the price of one more candidate. The demo samples more of them
    (``BUNDLED_DEMO_SAMPLING["candidates"]``); they are rows of one batch, so on a CPU the time grows with their number.

Item 4 adds ``encode`` (``pipeline.encode``: MLLM + connector, both guidance branches) and, after the
rounds, one re-sample with a new guidance value. A full run is ``pipeline.generate``, which is exactly
``encode`` followed by ``sample``, so its time is encode + cascade. MLLM forward calls are counted in
every run. ``cascade`` and ``encode`` run with the stopwatch hooks of :mod:`bench.breakdown` on
(item 2). Warm-up calls run one step per scale (every shape is still seen once).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from hieraquery_core.checkpoint import BUNDLED_DEMO_SAMPLING
from hieraquery_core.connector import ScaleCondition
from hieraquery_core.model import HieraQuery
from hieraquery_core.pipeline import HieraQueryPipeline, SamplingOptions

from .breakdown import dit_labels, shares, stopwatch
from .configs import PROMPT
from .efficiency import dit_flops
from .timing import WARMUP, Timing, interleaved, primary_clock, timed

GUIDANCE = 4.0
CHECK_CANDIDATES = 2
"""Candidates of (b_s)."""


@torch.no_grad()
def single_scale_loop(pipeline: HieraQueryPipeline, condition: ScaleCondition, size: tuple[int, int], steps: int, guidance: float, seed: int,
                      cached: bool = False) -> torch.Tensor:
    """(a): the bare denoising loop over the diffusers transformer; ``condition`` holds [uncond, cond]. ``cached``: (a')."""
    model = pipeline.model
    transformer = model.dit.transformer
    dtype = transformer.dtype
    factor = model.codec.downsample
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = randn_tensor((1, model.codec.channels, size[0] // factor, size[1] // factor), generator=generator, device=model.device, dtype=torch.float32)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler_config)
    scheduler.set_timesteps(steps, device=model.device)
    tokens = condition.tokens.to(dtype)
    pooled = {} if condition.pooled is None else {"pooled_projections": condition.pooled.to(dtype)}
    with model.dit.constant_condition() if cached else nullcontext():
        for t in scheduler.timesteps:
            velocity = transformer(hidden_states=torch.cat([latents, latents]).to(dtype), encoder_hidden_states=tokens, timestep=t.expand(2).to(dtype), return_dict=False, **pooled)[0].float()
            uncond, cond = velocity.chunk(2)
            latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents, return_dict=False)[0]
    return pipeline.decode(latents)


def expected_dit_ratios(model: HieraQuery, conditions: list[ScaleCondition]) -> dict[str, float]:
    """FLOPs per denoising step of each mode (CFG batch), and the DiT-only ratios they predict."""
    sizes = model.scale_sizes()
    per_scale = [dit_flops(model, size, c) for size, c in zip(sizes, conditions)]
    cascade, single = sum(per_scale), per_scale[-1]
    ming = single + sum(dit_flops(model, sizes[-1], c) for c in conditions[:-1])
    return {
        "single_scale_gflop": single / 1e9, "cascade_gflop": cascade / 1e9, "ming_gflop": ming / 1e9,
        "cascade_over_single": cascade / single, "ming_over_cascade": ming / cascade, "per_scale_gflop": [f / 1e9 for f in per_scale],
    }


class CallCounter:
    """Counts forward calls of one module (here: the frozen MLLM) while attached."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_args) -> None:
        self.count += 1

    def counting(self, fn: Callable[[int], object], into: list[int]) -> Callable[[int], object]:
        """``fn`` that appends how many calls it made to ``into``."""

        def wrapped(r: int) -> object:
            before = self.count
            out = fn(r)
            into.append(self.count - before)
            return out

        return wrapped


def median_run(timing: Timing, runs: list[dict[str, float]]) -> tuple[float, dict[str, float]]:
    """The total and the components of the run whose total is the median."""
    return sorted(zip(timing.samples, runs), key=lambda pair: pair[0])[len(runs) // 2]


def measure(model: HieraQuery, steps: int, repeats: int) -> dict[str, object]:
    """Items 1, 2 and 4 for one model: medians, ratios, per-image breakdown, re-sample speed-up."""
    pipeline = HieraQueryPipeline(model)
    encoded = pipeline.encode(PROMPT)
    sizes = model.scale_sizes()
    cascade = SamplingOptions(steps=steps, guidance=GUIDANCE, mode="cascade")
    ming = replace(cascade, mode="ming")
    refined = replace(cascade, refine_strength=BUNDLED_DEMO_SAMPLING["refine_strength"])
    checked = replace(refined, candidates=CHECK_CANDIDATES)
    baseline = ScaleCondition.cat([encoded.uncond[-1], encoded.cond[-1]])
    counter = CallCounter(model.mllm)
    mllm_calls: dict[str, list[int]] = {}
    runs: dict[str, list[dict[str, float]]] = {"encode": [], "cascade": []}

    def options(r: int, base: SamplingOptions) -> SamplingOptions:
        return replace(base, steps=1) if r == WARMUP else base

    def watched(name: str, fn: Callable[[int], object]) -> Callable[[int], object]:
        """``fn`` with the breakdown's hooks on; the components of timed runs are kept."""

        def run(r: int) -> None:
            with stopwatch(model, model.device) as watch:
                fn(r)
            if r != WARMUP:
                runs[name].append(watch.collect())

        return run

    candidates: dict[str, Callable[[int], object]] = {
        "single_scale": lambda r: single_scale_loop(pipeline, baseline, sizes[-1], 1 if r == WARMUP else steps, GUIDANCE, seed=r),
        "single_scale_cached": lambda r: single_scale_loop(pipeline, baseline, sizes[-1], 1 if r == WARMUP else steps, GUIDANCE, seed=r, cached=True),
        "cascade": watched("cascade", lambda r: pipeline.sample(encoded, seed=r, options=options(r, cascade))),
        "ming": lambda r: pipeline.sample(encoded, seed=r, options=options(r, ming)),
        "cascade_refined": lambda r: pipeline.sample(encoded, seed=r, options=options(r, refined)),
        "cascade_checked": lambda r: pipeline.sample(encoded, seed=r, options=options(r, checked)),
        "encode": watched("encode", lambda r: pipeline.encode(PROMPT)),
    }
    candidates = {name: counter.counting(fn, mllm_calls.setdefault(name, [])) for name, fn in candidates.items()}
    new_guidance: list[int] = []
    try:
        times = interleaved(candidates, repeats, model.device)
        reguided = counter.counting(lambda r: pipeline.sample(encoded, seed=0, options=replace(cascade, guidance=GUIDANCE + 1.0)), new_guidance)
        guidance_seconds = timed(lambda: reguided(0), model.device)[primary_clock(model.device)]
    finally:
        counter.handle.remove()
    medians = {name: t.median for name, t in times.items()}
    encode_total, encode_parts = median_run(times["encode"], runs["encode"])
    sample_total, sample_parts = median_run(times["cascade"], runs["cascade"])
    full = medians["encode"] + medians["cascade"]
    flops = expected_dit_ratios(model, [ScaleCondition.cat([u, c]) for u, c in zip(encoded.uncond, encoded.cond)])
    breakdown = shares({**encode_parts, **sample_parts}, encode_total + sample_total)
    for label, gflop in zip(dit_labels(model), flops["per_scale_gflop"]):
        breakdown[label]["gflops"] = steps * gflop / breakdown[label]["seconds"]
    return {
        "steps": steps,
        "repeats": repeats,
        "sizes": [list(s) for s in sizes],
        "seconds": medians,
        "wall_seconds": {name: t.wall_median for name, t in times.items()},
        "spread": {name: t.spread for name, t in times.items()},
        "ratios": {"cascade_over_single": medians["cascade"] / medians["single_scale"], "ming_over_cascade": medians["ming"] / medians["cascade"],
                   "cascade_over_single_cached": medians["cascade"] / medians["single_scale_cached"],
                   "refined_over_single": medians["cascade_refined"] / medians["single_scale"],
                   "checked_over_refined": medians["cascade_checked"] / medians["cascade_refined"]},
        "flops": flops,
        "breakdown": breakdown,
        "resample": {
            "full_seconds": full,
            "encode_seconds": medians["encode"],
            "resample_seconds": medians["cascade"],
            "resample_guidance_seconds": guidance_seconds,
            "speedup": full / medians["cascade"],
            "mllm_calls_per_encode": max(mllm_calls["encode"]),
            "mllm_calls_per_resample": max(mllm_calls["cascade"] + mllm_calls["ming"] + mllm_calls["cascade_refined"] + mllm_calls["cascade_checked"] + new_guidance),
        },
    }
