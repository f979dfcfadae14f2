"""Held-out evaluation of a HieraQuery checkpoint on ShapesWorld (the paper's GenEval and editing metrics).

Text-to-image (the paper's Table 1 metric, GenEval): N held-out prompts
(:func:`hieraquery_core.shapesworld.heldout_prompts`, balanced over the six categories) are generated in
batches with :class:`~hieraquery_core.pipeline.HieraQueryPipeline` and the final scale is scored by the
GenEval-style parser (six categories + overall = their mean). Every scale is also scored, and the coarse
scales are compared with the final one (cross-scale consistency: does the hierarchy paint the same scene
at every resolution, section 3.1's coarse-to-fine claim).

Editing: held-out edit triplets (a random stream no trainer uses) are edited by the pipeline and scored
with ``edit_accuracy`` (the target must be the source with exactly the instructed change). Their source
images are also reconstructed (empty prompt + the image, stage 2's task) and scored with
``reconstruction_accuracy``: whether the objects come back, in place and anywhere.

    python -m train.evaluate --checkpoint hieraquery_core/assets/shapesworld-demo --n 300 --out results/demo.json
    python -m train.evaluate --ground-truth --n 300 --out results/ground_truth.json   # validates the scorer
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from hieraquery_core.checkpoint import BUNDLED_DEMO_SAMPLING, load_checkpoint
from hieraquery_core.errors import require
from hieraquery_core.images import resize
from hieraquery_core.model import HieraQuery
from hieraquery_core.pipeline import HieraQueryPipeline, SamplingOptions
from hieraquery_core.plan import plan_answers
from hieraquery_core.shapesworld import (CATEGORIES, HELDOUT_PROMPTS, TRAIN_PROMPTS, attribute_accuracy, cross_scale_consistency, edit_accuracy, edit_collateral, edit_outcomes, edit_triplets,
                                         geneval, heldout_pairs, heldout_prompts, reconstruction_accuracy, render, render_scales, sample_prompt,
                                         relation_placement, relation_which_question, score_prompt, shape_binding)
from train.shapesworld_data import to_pixels

EDIT_STREAM = 0x45444954  # "EDIT": the held-out edit triplets' random stream (never used for training)
VALIDATION_STREAM = 0x56414C  # "VAL": validation prompts, drawn from the training split only


@dataclass
class EvalSettings:
    """What is evaluated and how the pipeline samples. Steps and guidance default to the demo's tuned settings, the refine
    strengths to the paper's independent scales (1.0), so that every training run's evaluation compares with the runs
    before it; the demo's own sampling is ``hieraquery_core.checkpoint.BUNDLED_DEMO_SAMPLING``."""

    n: int = 300
    n_edits: int = 200
    seed: int = 0
    batch: int = 50
    steps: int = BUNDLED_DEMO_SAMPLING["steps"]
    guidance: float = BUNDLED_DEMO_SAMPLING["guidance"]
    image_guidance: float = 1.5
    refine_strength: float = 1.0
    """Each scale after the first starts from the previous one re-noised to this strength (the pipeline's
    alignment-aware refinement); 1.0 paints every scale from pure noise, as the paper does."""
    edit_refine_strength: float = 1.0
    """The same for edits and reconstructions (the bundled demo edits best at 0.7, chosen on validation edits on 2026-12-04;
    its training runs were all evaluated at 1.0)."""
    edit_guidance: float = BUNDLED_DEMO_SAMPLING["edit_guidance"]
    """Text guidance of edits (over the image-only branch; ``guidance`` is text-to-image's): a strong instruction
    branch spreads a recolour over objects it does not name (docs/demo-and-ablations.md section 3)."""
    candidates: int = 1
    """Text-to-image cascades painted per prompt, the best kept by the model's own self-check
    (``SamplingOptions.candidates``, :mod:`hieraquery_core.self_check`); 1 is the paper's single sample."""
    edit_candidates: int = 1
    """The same for edits (reconstructions, whose empty instruction gives the self-check nothing to compare, paint one)."""
    flow_n: int = 96
    """Held-out pairs of the held-out flow loss (:func:`heldout_flow_loss`); 0 skips it."""

    def paint_options(self) -> SamplingOptions:
        """How text-to-image is sampled."""
        return SamplingOptions(steps=self.steps, guidance=self.guidance, refine_strength=self.refine_strength, candidates=self.candidates)

    def edit_options(self, candidates: int) -> SamplingOptions:
        """How an image with a text (an edit, a reconstruction) is sampled, each the self-check's pick of ``candidates``."""
        return SamplingOptions(steps=self.steps, guidance=self.edit_guidance, image_guidance=self.image_guidance, refine_strength=self.edit_refine_strength,
                               candidates=candidates)


def to_uint8(pixels: torch.Tensor) -> list[np.ndarray]:
    """[B, 3, H, W] in [0, 1] -> B uint8 [H, W, 3] arrays (the scorer's input)."""
    return list((pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())


def first_edits(n: int, stream: Sequence[int]) -> list:
    """The first ``n`` edit triplets (all four kinds) of the random stream seeded with ``stream``."""
    return list(islice(edit_triplets(np.random.default_rng(list(stream))), n))


def heldout_edits(n: int, seed: int = 0) -> list:
    """``n`` held-out edit triplets, from a stream of their own."""
    return first_edits(n, [seed, EDIT_STREAM, 3])


def score_generations(prompts: Sequence[tuple[str, str]], scales: Sequence[Sequence[np.ndarray]]) -> dict:
    """GenEval scores of the final scale (and which attribute fails), overall per scale, and cross-scale consistency.

    ``scales[k][i]`` is prompt i's image at scale k (coarse to fine).
    """
    final = scales[-1]
    result = {"geneval": geneval((c, p, img) for (c, p), img in zip(prompts, final))}
    result["attributes"] = attribute_accuracy((p, img) for (_, p), img in zip(prompts, final))
    result["shape_binding"] = shape_binding((p, img) for (_, p), img in zip(prompts, final))
    result["relation_placement"] = relation_placement((p, img) for (_, p), img in zip(prompts, final))
    result["overall_by_scale"] = {str(imgs[0].shape[0]): geneval((c, p, img) for (c, p), img in zip(prompts, imgs))["overall"] for imgs in scales}
    result["cross_scale_consistency"] = float(np.mean([cross_scale_consistency([s[i] for s in scales]) for i in range(len(final))]))
    return result


def generate_heldout(model: HieraQuery, settings: EvalSettings, prompts: Sequence[tuple[str, str]]) -> list[list[np.ndarray]]:
    """Every scale's images for the prompts, generated ``settings.batch`` prompts at a time."""
    pipe = HieraQueryPipeline(model)
    options = settings.paint_options()
    scales: list[list[np.ndarray]] = [[] for _ in model.config.scales]
    for start in range(0, len(prompts), settings.batch):
        chunk = [p for _, p in prompts[start : start + settings.batch]]
        out = pipe.generate(chunk, seed=settings.seed + start, options=options)
        for k, images in enumerate(out.images):
            scales[k].extend(to_uint8(images))
    return scales


def image_conditioned(model: HieraQuery, settings: EvalSettings, sources: Sequence[np.ndarray], texts: Sequence[str], candidates: int = 1) -> list[np.ndarray]:
    """The final images for (source image, text) inputs of the MLLM, ``settings.batch`` at a time, with the
    editing guidance (text ``edit_guidance`` over the image-only branch, ``image_guidance`` over the empty one), each the
    self-check's pick of ``candidates``."""
    pipe = HieraQueryPipeline(model)
    options = settings.edit_options(candidates)
    outputs: list[np.ndarray] = []
    for start in range(0, len(sources), settings.batch):
        pixels = torch.from_numpy(np.stack(sources[start : start + settings.batch])).permute(0, 3, 1, 2).float() / 255.0
        encoded = pipe.encode(list(texts[start : start + settings.batch]), pixels)
        outputs.extend(to_uint8(pipe.sample(encoded, seed=settings.seed + start, options=options).final))
    return outputs


def evaluate_edits(model: HieraQuery, settings: EvalSettings) -> dict[str, dict]:
    """On held-out triplets: ``edit_accuracy`` (per kind + overall), ``edit_outcomes`` (per kind, which half of
    the failures failed: the instructed change or the rest of the picture,
    :func:`~hieraquery_core.shapesworld.edit_outcome`), ``edit_collateral`` (which other objects a recolour or
    removal changed, by their relation to the named one, :func:`~hieraquery_core.shapesworld.edit_collateral`) and ``reconstruction_accuracy`` of their source images
    (stage 2's "output consistent with the input", section 4.2): the empty prompt + the image, i.e. the
    editing's image-only branch, which every edit builds on
    (:func:`~hieraquery_core.shapesworld.reconstruction_accuracy`: in place and anywhere)."""
    triplets = heldout_edits(settings.n_edits, settings.seed)
    sources = [render(t.source) for t in triplets]
    instructions = [t.instruction for t in triplets]
    results = list(zip(sources, instructions, image_conditioned(model, settings, sources, instructions, settings.edit_candidates)))
    return {"edit_accuracy": edit_accuracy(results), "edit_outcomes": edit_outcomes(results), "edit_collateral": edit_collateral(results),
            "reconstruction_accuracy": reconstruction_accuracy(zip(sources, image_conditioned(model, settings, sources, [""] * len(sources))))}


def validation_edits(n: int, seed: int = 0) -> list:
    """``n`` edit triplets from a stream of their own for tuning the editing settings; never held-out ones."""
    return first_edits(n, [seed, VALIDATION_STREAM, 7])


def validation_prompts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` training-split prompts (balanced over the categories) for tuning sampling settings; never held-out ones."""
    rng = np.random.default_rng([seed, VALIDATION_STREAM])
    return [(c, sample_prompt(c, rng, split="train")) for c in CATEGORIES for _ in range(n // len(CATEGORIES))]


TUNABLE = ("guidance", "refine_strength", "candidates", "edit_refine_strength", "edit_guidance", "edit_candidates")
"""The sampling settings :func:`tune_setting` may choose (the ``edit_`` ones on validation edits, the others on validation prompts)."""


def typed(settings: EvalSettings, name: str, value: float) -> float | int:
    """A tried value (the command line gives floats) as the setting's own type (the candidates are counts)."""
    return type(getattr(settings, name))(value)


def tune_setting(model: HieraQuery, settings: EvalSettings, name: str, values: Sequence[float], n: int = 60) -> dict[float, dict]:
    """For each value of the sampling setting ``name``: GenEval overall, cross-scale consistency and the attribute
    diagnostic (:func:`attribute_accuracy`) on ``n`` validation prompts, ``{value: {"overall": ..., "consistency": ...,
    "attributes": ...}}``; for ``edit_refine_strength`` and ``edit_guidance``, edit accuracy on ``n`` validation edits,
    ``{value: {"overall": ..., kind: ...}}``. The held-out prompts and edits are not looked at."""
    require(name in TUNABLE, f"cannot tune {name!r}; choose one of {', '.join(TUNABLE)}")
    trials = {value: EvalSettings(**{**asdict(settings), name: typed(settings, name, value)}) for value in values}
    if name.startswith("edit_"):
        triplets = validation_edits(n, settings.seed)
        sources, instructions = [render(t.source) for t in triplets], [t.instruction for t in triplets]
        return {value: edit_accuracy(zip(sources, instructions, image_conditioned(model, trial, sources, instructions, trial.edit_candidates))) for value, trial in trials.items()}
    prompts = validation_prompts(n, settings.seed)
    scores = {}
    for value, trial in trials.items():
        scored = score_generations(prompts, generate_heldout(model, trial, prompts))
        scores[value] = {"overall": scored["geneval"]["overall"], "consistency": scored["cross_scale_consistency"], "attributes": scored["attributes"]}
    return scores


FLOW_SIGMAS = (0.3, 0.6, 0.9)
"""Noise levels of the held-out flow loss (low, middle and high noise; 1 is pure noise)."""


@torch.no_grad()
def heldout_flow_loss(model: HieraQuery, settings: EvalSettings, sigmas: Sequence[float] = FLOW_SIGMAS) -> dict:
    """The training objective (Eq. 5's flow matching, every scale) on held-out pairs, with no sampling.

    Each of ``settings.flow_n`` held-out prompts is paired with its ground-truth scene, noised at each of ``sigmas``
    with a fixed seed, and the loss is measured with the right prompts and with the prompts rotated by one
    (each image given another scene's prompt, the same noise). GenEval stays 0 until a model paints
    recognisable shapes; this moves from the first steps, so it separates variants at small budgets.
    ``prompt_gain`` = 1 - right / rotated at the final scale: how much of the loss the prompt explains
    (0: the prompt is ignored); ``final_by_sigma`` gives the final-scale loss and gain at each noise level.
    """
    n = settings.flow_n
    pairs = heldout_pairs(n, settings.seed)
    side = model.config.image_size
    targets = resize(torch.stack([to_pixels(render(scene)) for _, _, scene in pairs]), (side, side))
    prompts = [p for _, p, _ in pairs]
    rotated = prompts[1:] + prompts[:1]
    losses = {(name, sigma): [] for name in ("right", "rotated") for sigma in sigmas}
    for name, chosen in (("right", prompts), ("rotated", rotated)):
        for start in range(0, n, settings.batch):
            chunk = slice(start, start + settings.batch)
            conditions = model.condition(model.encode(chosen[chunk]))  # once for every noise level
            chunk_targets = targets[chunk].to(model.device)
            for sigma in sigmas:
                generator = torch.Generator().manual_seed(settings.seed + start)  # the same noise for both prompt sets
                flow = model.scale_losses(conditions, chunk_targets, generator, sigma=sigma).flow
                losses[name, sigma].append(torch.stack(flow).float() * len(chosen[chunk]) / n)
    per_sigma = {key: torch.stack(parts).sum(0) for key, parts in losses.items()}  # [scales] per (prompts, sigma)
    right, wrong = (sum(per_sigma[name, sigma] for sigma in sigmas) / len(sigmas) for name in ("right", "rotated"))
    by_sigma = {str(sigma): {"final": round(float(per_sigma["right", sigma][-1]), 5),
                             "prompt_gain": round(float(1 - per_sigma["right", sigma][-1] / per_sigma["rotated", sigma][-1]), 4)} for sigma in sigmas}
    return {"sigmas": list(sigmas), "n": n, "per_scale": [round(v, 5) for v in right.tolist()], "final": round(float(right[-1]), 5),
            "final_rotated_prompts": round(float(wrong[-1]), 5), "prompt_gain": round(float(1 - right[-1] / wrong[-1]), 4),
            "final_by_sigma": by_sigma}


def plan_is_right(prompt: str, planned: str, plan: dict[str, list[str]]) -> bool:
    """Whether a position prompt's plan asked something and every answer names the shape its relation puts on the
    asked side (:func:`relation_which_question`: "a circle above a square" -> above "circle", below "square")."""
    sides = dict(relation_which_question(prompt, flip) for flip in (False, True))
    answers = plan_answers(planned, prompt, plan)
    return bool(answers) and all(sides.get(question) == answer for question, answer in answers.items())


def plan_report(model: HieraQuery, prompts: Sequence[tuple[str, str]], finals: Sequence[np.ndarray]) -> dict:
    """For a model that plans (``HieraQueryConfig.plan``), on the position prompts: the share whose MLLM answers are all
    right (:func:`plan_is_right`), the position score where they are and where they are not, and the planned prompts
    that are wrong. Whether position fails in the DiT or already in the frozen MLLM's answers
    (docs/demo-and-ablations.md section 3)."""
    position = [(p, img) for (c, p), img in zip(prompts, finals) if c == "position"]
    planned = model.plan([p for p, _ in position])
    right = [plan_is_right(p, q, model.config.plan) for (p, _), q in zip(position, planned)]
    scores = [score_prompt(p, img) for p, img in position]

    def where(flag: bool) -> dict:
        chosen = [s for s, r in zip(scores, right) if r == flag]
        return {"n": len(chosen), "position": float(np.mean(chosen)) if chosen else None}

    return {"right": float(np.mean(right)), "where right": where(True), "where wrong": where(False), "wrong": sorted({q for q, r in zip(planned, right) if not r})}


def evaluate_model(model: HieraQuery, settings: EvalSettings) -> dict:
    """The full held-out report of one model: text-to-image (GenEval, held-out flow loss, the plan's answers when it
    plans), editing (when the MLLM sees images)."""
    start = time.time()
    prompts = heldout_prompts(settings.n, settings.seed)
    scales = generate_heldout(model, settings, prompts)
    report = {"settings": asdict(settings), **score_generations(prompts, scales)}
    if model.config.plan and any(c == "position" for c, _ in prompts):
        report["plan"] = plan_report(model, prompts, scales[-1])
    if settings.flow_n:
        report["flow_loss"] = heldout_flow_loss(model, settings)
    if settings.n_edits and model.mllm.supports_images:
        report.update(evaluate_edits(model, settings))
    report["seconds"] = round(time.time() - start, 1)
    return report


def position_strings(model: HieraQuery, settings: EvalSettings, reps: int) -> dict[str, dict]:
    """Every position prompt string of the training and of the held-out split, painted ``reps`` times each as
    :func:`generate_heldout` paints: per split, the share that passes (GenEval's position check) and
    :func:`relation_placement`, over the split and ("by string") for each string. Whether position fails on the
    held-out strings only (a composition the model did not generalise to) or on the training ones too (not learned),
    on which relation, and whether a held-out string fails where its twin of the other style trains well
    (docs/demo-and-ablations.md section 3)."""
    def scores(results: list[tuple[str, np.ndarray]]) -> dict:
        return {"n": len(results), "position": float(np.mean([score_prompt(p, img) for p, img in results])), "relation_placement": relation_placement(results)}

    report = {}
    for split, table in (("train", TRAIN_PROMPTS), ("heldout", HELDOUT_PROMPTS)):
        prompts = [("position", p) for p in table["position"] for _ in range(reps)]
        results = [(p, img) for (_, p), img in zip(prompts, generate_heldout(model, settings, prompts)[-1])]
        by_string = {p: [r for r in results if r[0] == p] for p in table["position"]}
        report[split] = {**scores(results), "by string": {p: scores(r) for p, r in by_string.items()}}
    return report


def evaluate_ground_truth(settings: EvalSettings) -> dict:
    """The same report for ground-truth renders (validates the scorer; every figure should be ~1.0)."""
    pairs = heldout_pairs(settings.n, settings.seed)
    renders = [render_scales(scene) for _, _, scene in pairs]
    sizes = sorted(renders[0])
    report = {"settings": asdict(settings), **score_generations([(c, p) for c, p, _ in pairs], [[r[s] for r in renders] for s in sizes])}
    if settings.n_edits:
        triplets = heldout_edits(settings.n_edits, settings.seed)
        report["edit_accuracy"] = edit_accuracy((render(t.source), t.instruction, render(t.target)) for t in triplets)
    return report


def tuned_report(model: HieraQuery, settings: EvalSettings, tries: dict[str, Sequence[float]], tune_n: int, position_reps: int = 0) -> dict:
    """The held-out report (:func:`evaluate_model`) after choosing each sampling setting of ``tries`` on ``tune_n``
    validation prompts or edits (:func:`tune_setting`, in :data:`TUNABLE`'s order: the refine strength is tried at the
    chosen guidance), with each setting's tuning scores; ``position_reps`` > 0 adds :func:`position_strings`.
    ``settings`` is left as it was."""
    require(set(tries) <= set(TUNABLE), f"cannot tune {', '.join(sorted(set(tries) - set(TUNABLE)))}; choose from {', '.join(TUNABLE)}")
    settings = replace(settings)
    tuning = {}
    for name in (n for n in TUNABLE if n in tries):
        tuning[name] = tune_setting(model, settings, name, tries[name], n=tune_n)
        setattr(settings, name, typed(settings, name, max(tuning[name], key=lambda v: tuning[name][v]["overall"])))
        print(f"validation overall by {name}: { {v: t['overall'] for v, t in tuning[name].items()} }; using {getattr(settings, name)}", flush=True)
    report = evaluate_model(model, settings)
    if position_reps:
        report["position_strings"] = position_strings(model, settings, position_reps)
    for name, scores in tuning.items():
        report[f"{name}_tuning_on_validation_{'edits' if name.startswith('edit_') else 'prompts'}"] = {str(v): t for v, t in scores.items()}
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a HieraQuery checkpoint folder")
    source.add_argument("--ground-truth", action="store_true", help="score ground-truth renders instead of a model")
    defaults = EvalSettings()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    for name in TUNABLE:
        parser.add_argument(f"--tune-{name.replace('_', '-')}", help=f"comma-separated {name.replace('_', ' ')} values to try on validation {'edits' if name.startswith('edit') else 'prompts'} first; the best is used")
    parser.add_argument("--tune-n", type=int, default=60, help="validation prompts (or edits) per value tried")
    parser.add_argument("--position-strings", type=int, default=0, metavar="REPS",
                        help="also paint every position prompt string, training and held-out, REPS times each (position_strings; default: skip)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.position_strings < 0:
        parser.error(f"--position-strings {args.position_strings}: give how many images per position string, or 0 to skip them")
    if args.n < 1 or args.n_edits < 0:
        parser.error(f"--n {args.n} --n-edits {args.n_edits}: every report scores GenEval, so give at least 1 held-out prompt (--n), and 0 or more edits (--n-edits 0 skips them)")
    torch.set_num_threads(args.threads)
    settings = EvalSettings(**{name: getattr(args, name) for name in asdict(defaults)})
    if args.ground_truth:
        report = {"source": "ground truth", **evaluate_ground_truth(settings)}
    else:
        tries = {name: [float(v) for v in values.split(",")] for name in TUNABLE if (values := getattr(args, f"tune_{name}"))}
        with torch.inference_mode():
            report = {"source": str(args.checkpoint),
                      **tuned_report(load_checkpoint(args.checkpoint), settings, tries, args.tune_n, args.position_strings)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
