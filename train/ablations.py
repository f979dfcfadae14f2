"""The paper's ablations (Tables 3 and 4, section 6) in miniature, on ShapesWorld.

Every variant is the demo architecture (``train/configs/shapesworld-demo.json``) with its scales and alignment
changed, trained text-to-image for the same budget (steps x batch) from the same frozen MLLM, and scored on the
same held-out prompts by :mod:`train.evaluate`, over several seeds (mean +- standard deviation).

Table 3 (multi-scale queries "M", multi-scale representation alignment "A"):
    single-256      16x16 @ 1.0x, no alignment
    single-336      16x21 @ 1.0x (336 queries, the multi-scale count on one scale), no alignment
    multi           4x4 @ 0.25x + 8x8 @ 0.5x + 16x16 @ 1.0x (336), no alignment
    multi+align     the same with alignment (= Table 4's last row)
Table 4 (scale combinations, with alignment as in the full method):
    1.0x (256), 0.25x+1.0x (272), 0.5x+1.0x (320), 0.25x+0.5x+1.0x (336)

    python -m train.ablations --budget-steps 300 --seeds 3 --out results/ablations.md

Each (variant, seed) is one run of the trainer (:func:`train.train.train`, stage ``t2i`` on ShapesWorld, the
demo recipe of :func:`train.make_demo.stage_config`) in ``runs/ablations/steps<N>-batch<B>/<variant>-s<seed>``.
Runs are resumable: a finished run's scores (``result-<settings>.json``) are reused, an interrupted one continues
from its newest checkpoint, and a finished one scored with other evaluation settings is only scored again. Under
``accelerate launch`` every process trains and the main process scores and writes the report.

``--init-dit CHECKPOINT`` starts every variant's DiT from that checkpoint's ``transformer/`` (queries, connector and
alignment projector still start fresh), as the paper initialises its DiT from a pretrained text-to-image model
(SD3-Medium or SANA-1.6B, section 4.1) rather than from scratch; the runs are then cached under the checkpoint's
folder name. docs/demo-and-ablations.md section 4 says which DiT the committed table started from and why.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hieraquery_core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, check_checkpoint_folder, load_checkpoint
from hieraquery_core.config import BackboneSpec, HieraQueryConfig, ScaleSpec
from hieraquery_core.shapesworld import CATEGORIES
from train.evaluate import EvalSettings, evaluate_model
from train.make_demo import CONFIG, ROOT, add_eval_arguments, add_recipe_arguments, demo_config, eval_settings, launch_state, stage_config
from train.train import quiet_libraries, train

DEMO_ALIGNMENT_WEIGHT = 0.5


@dataclass(frozen=True)
class Variant:
    """One ablation row: its name, which tables it belongs to, its scales (grid, resolution) and alignment weight."""

    name: str
    tables: tuple[str, ...]
    scales: tuple[tuple[tuple[int, int], float], ...]
    alignment: float

    @property
    def num_queries(self) -> int:
        return sum(rows * cols for (rows, cols), _ in self.scales)

    @property
    def label(self) -> str:
        return " + ".join(f"{r}x{c}@{res:g}x" for (r, c), res in self.scales)


SINGLE = (((16, 16), 1.0),)
ALL = (((4, 4), 0.25), ((8, 8), 0.5), ((16, 16), 1.0))
VARIANTS: tuple[Variant, ...] = (
    Variant("single-256", ("3",), SINGLE, 0.0),
    Variant("single-336", ("3",), (((16, 21), 1.0),), 0.0),
    Variant("multi", ("3",), ALL, 0.0),
    Variant("multi+align", ("3", "4"), ALL, DEMO_ALIGNMENT_WEIGHT),
    Variant("1.0x+align", ("4",), SINGLE, DEMO_ALIGNMENT_WEIGHT),
    Variant("0.25x+1.0x+align", ("4",), (((4, 4), 0.25), ((16, 16), 1.0)), DEMO_ALIGNMENT_WEIGHT),
    Variant("0.5x+1.0x+align", ("4",), (((8, 8), 0.5), ((16, 16), 1.0)), DEMO_ALIGNMENT_WEIGHT),
)


def variant_config(base: HieraQueryConfig, variant: Variant) -> HieraQueryConfig:
    """The base (demo) config with the variant's scales and alignment weight; everything else unchanged."""
    config = copy.deepcopy(base)
    config.scales = [ScaleSpec(grid, resolution) for grid, resolution in variant.scales]
    config.alignment.weight = variant.alignment
    config.name = f"ablation-{variant.name}"
    return config


def with_pretrained_dit(base: HieraQueryConfig, checkpoint: Path) -> HieraQueryConfig:
    """``base`` with its DiT loaded from a HieraQuery checkpoint's DiT folder (the kind and folder its config names)
    or from ``checkpoint`` itself, a diffusers transformer folder of ``base``'s DiT kind."""
    if (checkpoint / WEIGHTS_NAME).is_file():
        dit = HieraQueryConfig.load(check_checkpoint_folder(checkpoint) / CONFIG_NAME).dit
        kind, folder = dit.kind, checkpoint / dit.path
    else:
        kind, folder = base.dit.kind, checkpoint
    config = copy.deepcopy(base)
    config.dit = BackboneSpec(kind, path=str(folder.resolve()))
    return config


def scores_file(run: Path, settings: EvalSettings) -> Path:
    """Where a run's scores under ``settings`` are cached. The same run scored with other settings (another refine
    strength, more prompts) gets a file of its own, so a report never shows scores made with settings it does not name."""
    key = hashlib.sha1(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:10]
    return run / f"result-{key}.json"


def run_variant(variant: Variant, seed: int, base: HieraQueryConfig, args: argparse.Namespace, settings: EvalSettings, runs: Path, state) -> dict | None:
    """Train one (variant, seed) text-to-image for ``args.budget_steps`` x ``args.batch`` and score it (main process;
    the others get None); the scores are cached per evaluation settings, a finished training is resumed at its end."""
    out = runs / f"{variant.name}-s{seed}"
    result_file = scores_file(out, settings)
    if result_file.is_file():
        return json.loads(result_file.read_text())
    start = time.time()
    result = train(stage_config("t2i", out, args.budget_steps, args.batch, args.lr, seed, args.save_every, config=variant_config(base, variant), resume=True,
                                ema_decay=args.ema_decay))
    report = None
    if state.is_main_process:
        with torch.inference_mode():
            report = evaluate_model(load_checkpoint(result.final, device=state.device), settings)
        report.update(variant=variant.name, seed=seed, num_queries=variant.num_queries, train_seconds=round(time.time() - start, 1))
        result_file.write_text(json.dumps(report, indent=2) + "\n")
    state.wait_for_everyone()
    return report


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def table(results: dict[str, list[dict]], which: str) -> list[str]:
    """Markdown rows for one paper table: each GenEval category, overall, cross-scale consistency and the
    held-out flow loss of the final scale with its prompt gain (mean ± std; n/a for reports made before it existed)."""
    header = ["variant", "scales", "queries", *CATEGORIES, "overall", "cross-scale", "flow loss (final)", "prompt gain", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in VARIANTS:
        runs = results.get(variant.name, [])
        if which not in variant.tables or not runs:
            continue
        cells = [mean_std([r["geneval"][c] for r in runs]) for c in [*CATEGORIES, "overall"]]
        consistency = mean_std([r["cross_scale_consistency"] for r in runs]) if len(variant.scales) > 1 else "n/a (one scale)"
        flow = [mean_std([r["flow_loss"][k] for r in runs]) if all("flow_loss" in r for r in runs) else "n/a" for k in ("final", "prompt_gain")]
        lines.append("| " + " | ".join([variant.name, variant.label, str(variant.num_queries), *cells, consistency, *flow, str(len(runs))]) + " |")
    return lines


def write_report(results: dict[str, list[dict]], out: Path, command: str, steps: int, batch: int, processes: int, settings: EvalSettings,
                 architecture: str) -> None:
    minutes = sum(r["train_seconds"] for runs in results.values() for r in runs) / 60
    lines = [
        "# HieraQuery ablations on ShapesWorld (paper Tables 3 and 4 in miniature)",
        "",
        f"Command: `{command}`",
        "",
        f"Budget per run: {steps} text-to-image steps x batch {batch} x {processes} process(es) ({steps * batch * processes} images), "
        f"{architecture}, frozen ShapesWorld MLLM. Scored on {settings.n} held-out prompts "
        f"({settings.steps} sampling steps per scale, guidance {settings.guidance}, refine strength {settings.refine_strength:g}); mean ± standard deviation over seeds. "
        f"Time recorded with the scores, all runs: {minutes:.1f} min (training and scoring, or only the scoring where a finished run was scored again).",
        "",
        "Read a difference only where it exceeds the spread over seeds. GenEval stays 0 until a model paints recognisable "
        "shapes; the held-out flow loss (the training objective on held-out prompts and scenes at fixed noise levels, lower is "
        "better) and its prompt gain (1 - loss with the right prompts / loss with another scene's prompt: how much the "
        "model uses the prompt) move from the first steps (`train.evaluate.heldout_flow_loss`).",
        "",
        "## Table 3: multi-scale queries and alignment",
        "",
        *table(results, "3"),
        "",
        "## Table 4: scale combinations",
        "",
        *table(results, "4"),
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.ablations", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-steps", type=int, default=300, help="text-to-image steps per run (default %(default)s)")
    add_recipe_arguments(parser, save_every=100)
    parser.add_argument("--seeds", type=int, default=3)
    add_eval_arguments(parser)
    parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS), help="comma-separated subset")
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="the base architecture (default: the pixel-space demo's; e.g. train/configs/shapesworld-demo-latent.json); runs of another config are kept under its name")
    parser.add_argument("--init-dit", type=Path, default=None,
                        help="start every variant's DiT from this checkpoint's transformer/ (the paper starts from a pretrained DiT); default: from scratch")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "ablations")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "ablations.md")
    args = parser.parse_args(argv)
    chosen = args.variants.split(",")
    unknown = sorted(set(chosen) - {v.name for v in VARIANTS})
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {[v.name for v in VARIANTS]}")
    if args.init_dit is not None and not args.init_dit.is_dir():
        parser.error(f"--init-dit {args.init_dit} is not a folder; give a HieraQuery checkpoint folder (with transformer/) or a diffusers transformer folder")
    torch.set_num_threads(args.threads)
    quiet_libraries()
    state = launch_state()
    base = demo_config(args.config)
    architecture = f"the architecture of `{args.config.name}`"
    prefix = "" if args.config.resolve() == CONFIG.resolve() else f"{args.config.stem}-"
    if args.init_dit is not None:
        base = with_pretrained_dit(base, args.init_dit)
        architecture += f", the DiT initialised from `{args.init_dit}`"
        prefix += f"dit-{args.init_dit.resolve().name}-"
    settings = eval_settings(args, n_edits=0)
    runs = args.runs / f"{prefix}steps{args.budget_steps}-batch{args.batch}"
    results: dict[str, list[dict]] = {}
    for variant in (v for v in VARIANTS if v.name in chosen):
        for seed in range(args.seeds):
            report = run_variant(variant, seed, base, args, settings, runs, state)
            if report is None:  # not the main process
                continue
            results.setdefault(variant.name, []).append(report)
            print(f"{variant.name} seed {seed}: overall {report['geneval']['overall']:.3f}", flush=True)
            write_report(results, args.out, "python -m train.ablations " + " ".join(sys.argv[1:] if argv is None else argv), args.budget_steps, args.batch, state.num_processes, settings,
                         architecture)


if __name__ == "__main__":
    main()
