"""Where a ShapesWorld model loses a prompt's words: variance shares of the conditions, and what the MLLM sees.

HieraQuery's conditions (section 3.1) are the frozen MLLM's hidden states at the learnable query positions
(Eq. 4), passed through the connector (Eq. 5). If a word of the prompt barely moves those states, the DiT
cannot follow it, however long it trains. This module measures, on the 36 single-object prompts
"a {colour} {shape}[, outline style]" (every combination, so the design is balanced):

* the share of the variance of the query states that each word (colour, shape, style) explains: the
  between-group sum of squares of that factor over the total sum of squares (a one-way ANOVA per factor;
  in a balanced full factorial the shares of the main effects add up to at most 1);
* the same after the connector (the DiT's condition), for a trained checkpoint;
* for an MLLM alone (before any HieraQuery training), the same with random queries of the size HieraQuery
  initialises them with, so two MLLMs can be compared before an hour of DiT training is spent on either;
* how well the vision encoder separates the shapes: a ridge probe of the shape from the vision feature at
  the object's centre in single-object scenes (fit on 300, tested on 300 others; chance is a third).

    python -m train.diagnose --mllm hieraquery_core/assets/shapesworld-mllm
    python -m train.diagnose --checkpoint hieraquery_core/assets/shapesworld-demo

These are diagnostics for docs/demo-and-ablations.md section 3, not scores of the paper.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from hieraquery_core.backbones import build_mllm
from hieraquery_core.checkpoint import load_checkpoint
from hieraquery_core.config import BackboneSpec, ScaleSpec
from hieraquery_core.mllm import FrozenMLLM
from hieraquery_core.model import HieraQuery
from hieraquery_core.queries import MultiScaleQueries
from hieraquery_core.shapesworld import spec
from hieraquery_core.shapesworld.scene import random_scene
from train.shapesworld_mllm import pixels_of

FACTORS = ("color", "shape", "style")
"""The words of a single-object prompt whose variance shares are measured."""


def factor_prompts() -> tuple[list[str], dict[str, list[str]]]:
    """Every single-object prompt "a {colour} {shape}[, outline style]" and, per factor, each prompt's level."""
    prompts, levels = [], {f: [] for f in FACTORS}
    for color, shape, style in itertools.product(spec.COLORS, spec.SHAPES, spec.STYLES):
        suffix = spec.OUTLINE_SUFFIX if style == "outline" else ""
        prompts.append(f"a {color} {shape}{suffix}")
        for factor, level in zip(FACTORS, (color, shape, style)):
            levels[factor].append(level)
    return prompts, levels


def variance_shares(states: torch.Tensor, levels: dict[str, list[str]]) -> dict[str, float]:
    """Per factor, the share of the total variance of ``states`` ([N, ...], one row a prompt) its levels explain."""
    x = states.reshape(states.shape[0], -1).double()
    centred = x - x.mean(dim=0)
    total = float(centred.pow(2).sum())
    shares = {}
    for factor, labels in levels.items():
        between = 0.0
        for level in sorted(set(labels)):
            rows = [i for i, label in enumerate(labels) if label == level]
            between += len(rows) * float(centred[rows].mean(dim=0).pow(2).sum())
        shares[factor] = between / total if total > 0 else 0.0
    return shares


@torch.no_grad()
def query_states(mllm: FrozenMLLM, queries: MultiScaleQueries, prompts: list[str]) -> list[torch.Tensor]:
    """Eq. 4's hidden states at every scale's query positions, [N, N_k, d] per scale."""
    return queries.split(mllm(queries(), prompts))


@torch.no_grad()
def checkpoint_shares(model: HieraQuery) -> dict[str, dict[str, dict[str, float]]]:
    """Variance shares of a trained model's query states (MLLM output) and conditions (connector output), per scale."""
    prompts, levels = factor_prompts()
    states = model.encode(prompts)
    conditions = model.condition(states)
    names = [s.name for s in model.config.scales]
    return {
        "query_states": {n: variance_shares(s, levels) for n, s in zip(names, states)},
        "conditions": {n: variance_shares(c.tokens, levels) for n, c in zip(names, conditions)},
    }


@torch.no_grad()
def random_query_shares(mllm: FrozenMLLM, grid: tuple[int, int] = (16, 16), seeds: int = 3) -> dict[str, float]:
    """Variance shares of the MLLM's states over freshly initialised queries (mean over ``seeds`` draws)."""
    prompts, levels = factor_prompts()
    draws = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        queries = MultiScaleQueries([ScaleSpec(grid=grid, resolution=1.0)], mllm.hidden_size)
        draws.append(variance_shares(query_states(mllm, queries, prompts)[0], levels))
    return {f: float(np.mean([d[f] for d in draws])) for f in FACTORS}


def ridge_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, alpha: float = 1.0) -> float:
    """Accuracy of a one-vs-rest ridge classifier (standardised features) fit on train, scored on test."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    classes = np.unique(train_y)
    targets = (train_y[:, None] == classes[None]).astype(float) * 2 - 1
    a1, b1 = np.hstack([a, np.ones((len(a), 1))]), np.hstack([b, np.ones((len(b), 1))])
    weights = np.linalg.solve(a1.T @ a1 + alpha * np.eye(a1.shape[1]), a1.T @ targets)
    return float(np.mean(classes[(b1 @ weights).argmax(1)] == test_y))


@torch.no_grad()
def vision_shape_probe(mllm: FrozenMLLM, n: int = 300, seed: int = 0, batch: int = 50) -> float:
    """Held-out accuracy of a ridge probe reading a single object's shape from the vision feature of the
    image token that holds the object's centre (fit on ``n`` scenes, scored on ``n`` others)."""
    rng = np.random.default_rng([seed, 17])
    features, shapes = [], []
    for start in range(0, 2 * n, batch):
        scenes = [random_scene(rng, n_objects=1, outline_prob=0.5) for _ in range(min(batch, 2 * n - start))]
        grid = mllm.vision_features(pixels_of(scenes))
        rows, cols = grid.shape[1:3]
        for cell, scene in zip(grid, scenes):
            obj = scene.objects[0]
            features.append(cell[int(obj.cy * rows / spec.CANVAS), int(obj.cx * cols / spec.CANVAS)].double().numpy())
            shapes.append(obj.shape)
    x, y = np.stack(features), np.array(shapes)
    return ridge_accuracy(x[:n], y[:n], x[n:], y[n:])


def diagnose_mllm(folder: Path) -> dict:
    """The report for an MLLM folder: random-query variance shares and the vision shape probe."""
    mllm = build_mllm(BackboneSpec("qwen2_5_vl", path=str(folder)))
    return {"mllm": str(folder), "random_query_shares_16x16": random_query_shares(mllm), "vision_shape_probe": vision_shape_probe(mllm)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mllm", type=Path, help="an MLLM folder: random-query shares and the vision shape probe")
    parser.add_argument("--checkpoint", type=Path, help="a HieraQuery checkpoint: shares of its query states and conditions")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the report here as JSON")
    args = parser.parse_args(argv)
    if args.mllm is None and args.checkpoint is None:
        parser.error("give --mllm DIR and/or --checkpoint DIR")
    torch.set_num_threads(args.threads)
    report = {}
    if args.mllm is not None:
        report.update(diagnose_mllm(args.mllm))
    if args.checkpoint is not None:
        report["checkpoint"] = str(args.checkpoint)
        report.update(checkpoint_shares(load_checkpoint(args.checkpoint)))
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
