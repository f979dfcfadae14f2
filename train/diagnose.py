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
  the object's centre in single-object scenes (fit on 300, tested on 300 others; chance is a third);
* how precisely it locates an object: a ridge regression of the object's centre from the whole feature grid
  (in-place reconstruction, the editing stage's premise, needs 2 px);
* for a trained checkpoint, whether its conditions still bind colours to shapes in two-object prompts
  (:func:`binding_probes`), and whether single condition tokens hold one object's shape or both (:func:`token_probes`);
* for a trained checkpoint, how far a position prompt's states move when its relation word, the order of its shapes
  or its style changes, and which training string a held-out one lies nearest to (:func:`relation_contrasts`).

    python -m train.diagnose --mllm hieraquery_core/assets/shapesworld-mllm
    python -m train.diagnose --checkpoint hieraquery_core/assets/shapesworld-demo

These are diagnostics for docs/demo-and-ablations.md section 3, not scores of the paper.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
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
from hieraquery_core.shapesworld.prompts import ALL_PROMPTS, HELDOUT_PROMPTS, TRAIN_PROMPTS, parse_prompt, relation_prompt
from hieraquery_core.shapesworld.scene import random_scene
from train.shapesworld_mllm import pixels_of, relation_text_answers

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
def random_query_draws(mllm: FrozenMLLM, prompts: list[str], grid: tuple[int, int], seeds: int) -> list[torch.Tensor]:
    """The MLLM's states for ``prompts`` over freshly initialised queries of the size HieraQuery initialises them with,
    one [N, N_q, d] tensor per seed (0, 1, ...)."""
    draws = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        draws.append(query_states(mllm, MultiScaleQueries([ScaleSpec(grid=grid, resolution=1.0)], mllm.hidden_size), prompts)[0])
    return draws


def random_query_shares(mllm: FrozenMLLM, grid: tuple[int, int] = (16, 16), seeds: int = 3) -> dict[str, float]:
    """Variance shares of the MLLM's states over freshly initialised queries (mean over ``seeds`` draws)."""
    prompts, levels = factor_prompts()
    draws = [variance_shares(states, levels) for states in random_query_draws(mllm, prompts, grid, seeds)]
    return {f: float(np.mean([d[f] for d in draws])) for f in FACTORS}


def ridge_fit(train_x: np.ndarray, targets: np.ndarray, alpha: float = 1.0):
    """A ridge regression on standardised features fit to ``targets`` [N, K], its intercept not penalised; returns its predictor."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    target_mean = targets.mean(0)
    a = (train_x - mean) / std
    if a.shape[1] > a.shape[0]:  # more features than samples: the same solution from the N x N system (the dual form)
        weights = a.T @ np.linalg.solve(a @ a.T + alpha * np.eye(a.shape[0]), targets - target_mean)
    else:
        weights = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (targets - target_mean))
    return lambda x: (x - mean) / std @ weights + target_mean


def ridge_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, alpha: float = 1.0) -> float:
    """Accuracy of a one-vs-rest ridge classifier (standardised features) fit on train, scored on test."""
    classes = np.unique(train_y)
    predict = ridge_fit(train_x, (train_y[:, None] == classes[None]).astype(float) * 2 - 1, alpha)
    return float(np.mean(classes[predict(test_x).argmax(1)] == test_y))


BINDING_SLOTS: dict[str, tuple[int, str]] = {"first colour": (0, "color"), "first shape": (0, "shape"),
                                             "second colour": (1, "color"), "second shape": (1, "shape")}
"""The words of a colour-attribution prompt "a {c1} {s1} and a {c2} {s2}" whose read-out :func:`binding_probes`
scores: each slot's object (in prompt order) and attribute."""


def slot_word(objects: Sequence, slot: str) -> str:
    """The word a :data:`BINDING_SLOTS` slot names among a prompt's parsed objects."""
    index, attribute = BINDING_SLOTS[slot]
    return getattr(objects[index], attribute)


def binding_design(seed: int, filled_only: bool = False) -> tuple[list[str], dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Every colour-attribution prompt of the grammar (360, both styles; ``filled_only``: the 180 without the outline
    suffix), each :data:`BINDING_SLOTS` slot's word per prompt, and a random half / other half split of the prompts
    (the probes' fit and test sets)."""
    prompts = [p for p in ALL_PROMPTS["color_attr"] if not (filled_only and "outline" in p)]
    requirements = [parse_prompt(p).objects for p in prompts]
    labels = {slot: np.array([slot_word(objects, slot) for objects in requirements]) for slot in BINDING_SLOTS}
    order = np.random.default_rng(seed).permutation(len(prompts))
    return prompts, labels, order[: len(order) // 2], order[len(order) // 2:]


@torch.no_grad()
def binding_probes(model: HieraQuery, seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """Whether a trained model's conditions still say which colour goes with which shape.

    Every colour-attribution prompt of the grammar (360, both styles) is encoded; a ridge probe reads each
    slot of :data:`BINDING_SLOTS` from the query states (MLLM output, Eq. 4) and from the conditions
    (connector output, Eq. 5) of each scale, fit on a random half of the prompts and scored on the other half
    (chance: a sixth for a colour, a third for a shape; ridge penalty: the square root of the feature count).
    A slot the probe reads well reaches the DiT; a
    two-object image that still binds it wrongly is then the DiT's failure, not the condition's."""
    prompts, labels, train, test = binding_design(seed)
    states = model.encode(prompts)
    features = {"query_states": states, "conditions": [c.tokens for c in model.condition(states)]}
    report = {}
    for name, per_scale in features.items():
        report[name] = {}
        for scale, tensor in zip(model.config.scales, per_scale):
            x = tensor.reshape(len(prompts), -1).double().cpu().numpy()
            report[name][scale.name] = {slot: ridge_accuracy(x[train], y[train], x[test], y[test], alpha=float(x.shape[1]) ** 0.5)
                                        for slot, y in labels.items()}
    return report


@torch.no_grad()
def token_probes(model: HieraQuery, seed: int = 0, high: float = 0.9, low: float = 0.5) -> dict[str, dict[str, float | int]]:
    """Whether single tokens of the finest scale hold one object's shape or both, in the query states (Eq. 4) and in
    the conditions (Eq. 5).

    The DiT's cross-attention can only hand the left object one shape and the right object another if some
    tokens say one object's shape without the other's: attention weighs tokens, it cannot pick a feature out of
    one. A ridge probe per token position reads the first and the second shape of the filled colour-attribution
    prompts (the design of :func:`binding_probes`; without the outline suffix every prompt has the same length, so a
    position of ``HieraQueryConfig.prompt_tokens`` holds the same word in each) from that token alone; counted are
    the tokens reading one shape at ``high`` or better and the other below ``low`` (chance is a third), those
    reading both at ``high``, and the best token for each shape with the other shape's score there."""
    prompts, labels, train, test = binding_design(seed, filled_only=True)
    states = model.encode(prompts)
    report = {}
    for name, tokens in (("query_states", states[-1]), ("conditions", model.condition(states)[-1].tokens)):
        x = tokens.double().cpu().numpy()
        alpha = float(x.shape[2]) ** 0.5
        first, second = (np.array([ridge_accuracy(x[train, i], labels[slot][train], x[test, i], labels[slot][test], alpha=alpha) for i in range(x.shape[1])])
                         for slot in ("first shape", "second shape"))
        margin = first - second
        most_first, most_second = int(margin.argmax()), int(margin.argmin())  # the most one-sided token for each shape
        report[name] = {"tokens": int(x.shape[1]),
                        "one_shape_only": int(((first >= high) & (second < low)).sum() + ((second >= high) & (first < low)).sum()),
                        "both_shapes": int(((first >= high) & (second >= high)).sum()),
                        "first_shape_token": [float(first[most_first]), float(second[most_first])],
                        "second_shape_token": [float(second[most_second]), float(first[most_second])]}
    return report


def single_object_features(mllm: FrozenMLLM, n: int, seed: int, batch: int) -> tuple[torch.Tensor, list]:
    """The vision feature grids [2n, h, w, D] of ``2 n`` single-object scenes (filled or outline) and the scenes."""
    rng = np.random.default_rng([seed, 17])
    grids, scenes = [], []
    for start in range(0, 2 * n, batch):
        drawn = [random_scene(rng, n_objects=1, outline_prob=0.5) for _ in range(min(batch, 2 * n - start))]
        grids.append(mllm.vision_features(pixels_of(drawn)))
        scenes += drawn
    return torch.cat(grids), scenes


@torch.no_grad()
def vision_shape_probe(mllm: FrozenMLLM, n: int = 300, seed: int = 0, batch: int = 50) -> float:
    """Held-out accuracy of a ridge probe reading a single object's shape from the vision feature of the
    image token that holds the object's centre (fit on ``n`` scenes, scored on ``n`` others)."""
    grids, scenes = single_object_features(mllm, n, seed, batch)
    rows, cols = grids.shape[1:3]
    cells = [grid[int(s.objects[0].cy * rows / spec.CANVAS), int(s.objects[0].cx * cols / spec.CANVAS)] for grid, s in zip(grids, scenes)]
    x, y = torch.stack(cells).double().numpy(), np.array([s.objects[0].shape for s in scenes])
    return ridge_accuracy(x[:n], y[:n], x[n:], y[n:])


@torch.no_grad()
def vision_position_probe(mllm: FrozenMLLM, n: int = 300, seed: int = 0, batch: int = 50) -> dict[str, float]:
    """How precisely the vision encoder's whole feature grid locates a single object: a ridge regression of its
    box centre (x, y) in pixels, fit on ``n`` scenes and scored on ``n`` others. In-place reconstruction (and so
    editing) needs every object back within 2 px (``shapesworld.reconstruction_correct``); ``within_2px`` is
    the share of held-out objects the probe places that well, ``baseline_mean_px`` the error of always
    answering the mean position."""
    grids, scenes = single_object_features(mllm, n, seed, batch)
    x = grids.reshape(len(grids), -1).double().numpy()
    y = np.array([[s.objects[0].cx, s.objects[0].cy] for s in scenes], dtype=float)
    error = np.abs(ridge_fit(x[:n], y[:n], alpha=float(x.shape[1]))(x[n:]) - y[n:])
    return {
        "mean_px": float(error.mean()),
        "within_2px": float(np.mean(error.max(1) <= 2.0)),
        "baseline_mean_px": float(np.abs(y[n:] - y[:n].mean(0)).mean()),
    }


CONTRASTS = ("relation word", "order", "style")
"""What a position string is changed in by :func:`position_variant`: the relation word turned to its opposite and the
two shapes swapped each ask for the opposite layout; the style asks for the same layout."""


def position_variant(prompt: str, contrast: str) -> str:
    """``prompt`` ("a circle to the left of a square") with one :data:`CONTRASTS` change ("... to the right of ...",
    "a square to the left of a circle", "..., outline style")."""
    req = parse_prompt(prompt)
    (first, second), relation, style = req.objects, req.relation, req.style
    if contrast == "relation word":
        relation = spec.OPPOSITE_RELATION[relation]
    elif contrast == "order":
        first, second = second, first
    else:
        style = "filled" if style == "outline" else "outline"
    return relation_prompt(first, relation, second, style)


POSITION_PROMPTS: tuple[str, ...] = ALL_PROMPTS["position"]
"""The 48 position strings :func:`relation_contrasts` encodes (both splits, both styles)."""


def contrast_scores(states: torch.Tensor) -> dict[str, float]:
    """For states [48, ...] of :data:`POSITION_PROMPTS` (one row a string): the mean cosine similarity (of the states
    less their mean over the strings) of each string to the one that differs from it only by each :data:`CONTRASTS`
    change, and the share of the held-out strings whose nearest training string is the one with the other relation word."""
    row = {p: i for i, p in enumerate(POSITION_PROMPTS)}
    x = states.reshape(len(POSITION_PROMPTS), -1).double()
    x = torch.nn.functional.normalize(x - x.mean(dim=0), dim=1)
    cosine = x @ x.T
    means = {c: float(np.mean([cosine[row[p], row[position_variant(p, c)]].item() for p in POSITION_PROMPTS])) for c in CONTRASTS}
    trained = [row[p] for p in TRAIN_PROMPTS["position"]]
    nearest = [POSITION_PROMPTS[max(trained, key=lambda j: cosine[row[p], j].item())] for p in HELDOUT_PROMPTS["position"]]
    other_word = np.mean([n == position_variant(p, "relation word") for p, n in zip(HELDOUT_PROMPTS["position"], nearest)])
    return {**means, "held-out nearest: the other relation word": float(other_word)}


@torch.no_grad()
def relation_contrasts(model: HieraQuery) -> dict[str, dict[str, dict[str, float]]]:
    """Whether a trained model's conditions tell a position prompt's relation from its other words: the
    :func:`contrast_scores` of every position string's query states (Eq. 4) and conditions (Eq. 5), per scale.

    A DiT that paints a held-out string like its nearest training string puts the objects on the opposite side as
    often as that share; a relation word whose change leaves the states nearly where they are (cosine near 1, while
    the style moves them far) is one the DiT can hardly read (docs/demo-and-ablations.md section 3)."""
    states = model.encode(list(POSITION_PROMPTS))
    per_part = {"query_states": states, "conditions": [c.tokens for c in model.condition(states)]}
    return {name: {scale.name: contrast_scores(tensor) for scale, tensor in zip(model.config.scales, per_scale)} for name, per_scale in per_part.items()}


def random_query_contrasts(mllm: FrozenMLLM, grid: tuple[int, int] = (16, 16), seeds: int = 3) -> dict[str, float]:
    """:func:`contrast_scores` of an MLLM's states over freshly initialised queries (mean over ``seeds`` draws): how far
    the MLLM alone moves its states for a relation word, before any HieraQuery training (compare two MLLMs with it)."""
    draws = [contrast_scores(states) for states in random_query_draws(mllm, list(POSITION_PROMPTS), grid, seeds)]
    return {k: float(np.mean([d[k] for d in draws])) for k in draws[0]}


def diagnose_mllm(folder: Path) -> dict:
    """The report for an MLLM folder: random-query variance shares and relation contrasts, the relation questions about
    every position string given as text (training and held-out), and the vision shape and position probes."""
    mllm = build_mllm(BackboneSpec("qwen2_5_vl", path=str(folder)))
    return {"mllm": str(folder), "random_query_shares_16x16": random_query_shares(mllm), "random_query_relation_contrasts_16x16": random_query_contrasts(mllm),
            **relation_text_answers(mllm), "vision_shape_probe": vision_shape_probe(mllm),
            "vision_position_probe": vision_position_probe(mllm)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mllm", type=Path, help="an MLLM folder: random-query shares and relation contrasts, relation questions, the vision shape and position probes")
    parser.add_argument("--checkpoint", type=Path, help="a HieraQuery checkpoint: shares of its query states and conditions, and the binding probes")
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
        model = load_checkpoint(args.checkpoint)
        report.update(checkpoint_shares(model))
        report["binding_probes"] = binding_probes(model)
        report["token_probes"] = token_probes(model)
        report["relation_contrasts"] = relation_contrasts(model)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
