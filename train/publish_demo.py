"""Bundle a finished make_demo run as the demo checkpoint, with the checks every bundled model gets.

    python -m train.publish_demo --retire-as plan6-lr1e-4-1500editsteps -- <the run's make_demo arguments>

Demo candidates are trained with ``--no-publish`` and compared on held-out prompts and edits first
(docs/demo-and-ablations.md section 3); the one that is bundled then gets more checks than make_demo's own
publishing runs. This command does all of it, for the run that ``<the run's make_demo arguments>`` describe
(their ``--runs`` folder, its ``eval.json`` and ``edit/final``; the same arguments give the published record
its command and recipe, :func:`train.make_demo.provenance`):

1. The arguments must be the run's own (the recipe they give its last stage is the one its trainer recorded in
   ``run.json``), and its held-out report must have been scored with the settings of the bundled model's report
   (``results/demo-source-edit.json``) and beat it on make_demo's headline (GenEval and edit accuracy averaged).
2. The publishing checks are written to ``<runs>/publish/`` (a rerun reuses those already there):
   ``refine-1.0.json``, text-to-image painted from noise at every scale (the paper's independent scales) on the
   same held-out prompts; ``edit-refine-1.0.json``, the held-out edits likewise; ``sampling-check.json``, the
   refine strength and the edit refine strength 0.1 either side of the run's on as many validation prompts and
   edits (training split, :func:`train.evaluate.tune_setting`); ``seed-check.json``, :func:`seed_check` over
   seeds 0-11 (the evidence for ``BUNDLED_DEMO_SEED``).
3. The bundled model's reports ``results/demo-source-edit{,-refine-1.0,-edit-refine-1.0,-sampling-check,-seed-check}.json``
   are renamed ``results/demo-source-edit-<retire-as>{...}.json``, the run's take their names, and the
   checkpoint is published (:func:`train.make_demo.publish`): its ``stage.json`` keeps the replaced model's record,
   whose ``results`` names the renamed report. A run trained on from an unpublished one (``--init-from
   runs/X/edit/final``) names that run's command with ``--earlier-command``, so the record keeps every command.

The README's and the docs' figures are then updated by hand from these reports.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch

from hieraquery_core.checkpoint import BUNDLED_DEMO_EDITS, BUNDLED_DEMO_PROMPT, load_checkpoint
from hieraquery_core.errors import require
from hieraquery_core.model import HieraQuery
from hieraquery_core.pipeline import HieraQueryPipeline
from hieraquery_core.shapesworld import edit_correct, score_prompt
from train import evaluate, make_demo
from train.data import STAGES
from train.evaluate import EvalSettings, to_uint8

REPORT = "demo-source-edit"
"""The stem of the bundled model's reports in ``results/``."""

CHECKS = ("refine-1.0", "edit-refine-1.0", "sampling-check", "seed-check")
"""The publishing checks, each a report ``<runs>/publish/<check>.json`` and then ``results/demo-source-edit-<check>.json``."""

SEEDS = 12
"""Seeds 0-11 of the seed check."""


def seed_check(model: HieraQuery, settings: EvalSettings, seeds: Sequence[int]) -> dict:
    """For each seed, as the edit-chain workflow runs: ``BUNDLED_DEMO_PROMPT`` painted with the text-to-image
    sampling of ``settings``, then each of ``BUNDLED_DEMO_EDITS`` applied to the previous result with its edit
    sampling (the self-check's pick of ``edit_candidates``). Scored by the evaluator: the prompt by
    :func:`score_prompt`, each edit by :func:`edit_correct` (an instruction that does not apply to its input, e.g. its
    object is missing, fails). Returns the seeds that pass each step and those that pass all of them."""
    pipe = HieraQueryPipeline(model)
    paint, edit = settings.paint_options(), settings.edit_options(settings.edit_candidates)
    passed: dict[str, list[int]] = {text: [] for text in (BUNDLED_DEMO_PROMPT, *BUNDLED_DEMO_EDITS)}
    for seed in seeds:
        pixels = pipe.generate(BUNDLED_DEMO_PROMPT, seed=seed, options=paint).final
        image = to_uint8(pixels)[0]
        if score_prompt(BUNDLED_DEMO_PROMPT, image):
            passed[BUNDLED_DEMO_PROMPT].append(seed)
        for instruction in BUNDLED_DEMO_EDITS:
            pixels = pipe.edit(pixels, instruction, seed=seed, options=edit).final
            edited = to_uint8(pixels)[0]
            try:
                if edit_correct(image, instruction, edited):
                    passed[instruction].append(seed)
            except ValueError:
                pass
            image = edited
    return {"settings": asdict(settings), "seeds": list(seeds), "passed": passed,
            "all_passed": [s for s in seeds if all(s in p for p in passed.values())]}


def around(value: float) -> list[float]:
    """``value`` and 0.1 either side of it, within (0, 1]: the values the sampling check tries."""
    return [v for v in (round(value - 0.1, 3), value, round(value + 0.1, 3)) if 0 < v <= 1]


def check_report(check: str, final: Path, model: HieraQuery, settings: EvalSettings, seeds: int) -> dict:
    """One publishing check of ``model`` (loaded from ``final``), whose held-out report was scored with ``settings``
    (module docstring, step 2); the evaluations name their ``source`` as ``python -m train.evaluate`` does."""
    if check == "seed-check":
        return seed_check(model, settings, range(seeds))
    if check == "refine-1.0":
        report = evaluate.evaluate_model(model, replace(settings, n_edits=0, flow_n=0, refine_strength=1.0))
    elif check == "edit-refine-1.0":
        report = evaluate.evaluate_model(model, replace(settings, n=50, flow_n=0, edit_refine_strength=1.0))
    else:
        tries = {"refine_strength": around(settings.refine_strength), "edit_refine_strength": around(settings.edit_refine_strength)}
        report = evaluate.tuned_report(model, replace(settings, n=50, n_edits=0, flow_n=0), tries, settings.n)
    return {"source": str(final), **report}


def run_checks(final: Path, settings: EvalSettings, out: Path, seeds: int) -> None:
    """Write the publishing checks of ``final`` to ``out``, skipping those already there. Each report is written to a
    temporary name first, so an interrupted check is run again."""
    out.mkdir(parents=True, exist_ok=True)
    missing = [check for check in CHECKS if not (out / f"{check}.json").is_file()]
    if len(missing) < len(CHECKS):
        print(f"reusing {', '.join(str(out / f'{c}.json') for c in CHECKS if c not in missing)}", flush=True)
    if not missing:
        return
    model = load_checkpoint(final)
    for check in missing:
        print(f"publishing check {check} ...", flush=True)
        partial = out / f".{check}.json.partial"
        with torch.inference_mode():
            partial.write_text(json.dumps(check_report(check, final, model, settings, seeds), indent=2) + "\n")
        partial.replace(out / f"{check}.json")


def report_names(results: Path, suffix: str = "") -> dict[str, Path]:
    """The bundled model's report and its checks in ``results``: ``{"": main report, check: its report}``, their stems
    ``demo-source-edit<suffix>``."""
    stem = f"{REPORT}{suffix}"
    return {"": results / f"{stem}.json", **{check: results / f"{stem}-{check}.json" for check in CHECKS}}


def publish_run(args: argparse.Namespace, retire_as: str, results: Path, seeds: int = SEEDS, earlier_commands: Sequence[str] = ()) -> None:
    """The whole command (module docstring) for the make_demo run ``args``; refuses before writing anything when
    the run is unfinished, lost to the bundled model, or was scored otherwise, or when a retired name is taken.
    ``earlier_commands``: the commands of unpublished runs the run was trained on from (its ``--init-from``), oldest first."""
    stage, report_path = make_demo.last_stage(args), args.runs / "eval.json"
    require(stage is not None and report_path.is_file() and (stage / "final").is_dir(),
            f"{args.runs} holds no finished make_demo run ({report_path} and its last stage's final/); give the run's own make_demo arguments after --")
    final = stage / "final"
    trained = json.loads((stage / "run.json").read_text())
    check_recipe(args, stage, trained["settings"])
    current, retired = report_names(results), report_names(results, f"-{retire_as}")
    require(current[""].is_file(), f"{current['']} (the bundled model's report) is missing; restore it from git before publishing")
    taken = [str(p) for p in retired.values() if p.exists()]
    require(not taken, f"--retire-as {retire_as!r}: {', '.join(taken)} already exist; choose another name for the bundled model's reports")
    report, bundled = json.loads(report_path.read_text()), json.loads(current[""].read_text())
    settings = EvalSettings(**report["settings"])
    require(settings == EvalSettings(**bundled["settings"]),  # a report older than a setting was scored with its default
            f"{report_path} was scored with {report['settings']}, the bundled model's report {current['']} with {bundled['settings']}; "
            "evaluate the run as the bundled model was (make_demo's --eval-* and sampling flags) before publishing")
    new, old = make_demo.headline(report), make_demo.headline(bundled)
    require(new > old, f"{args.runs} does not beat the bundled model: headline (GenEval + edits) / 2 = {new:.4f} against {old:.4f}")
    run_checks(final, settings, args.runs / "publish", seeds)
    for check, path in current.items():
        if path.is_file():
            path.rename(retired[check])
    shutil.copyfile(report_path, current[""])
    for check in CHECKS:
        shutil.copyfile(args.runs / "publish" / f"{check}.json", current[check])
    published_by = f"train.publish_demo: headline (GenEval + edits) / 2 = {new:.4f} against {old:.4f} for the model bundled before ({shown(retired[''])}), the same settings"
    record = {**make_demo.provenance(args, trained["processes"], report, shown(current[""]), published_by), "earlier_commands": list(earlier_commands)}
    make_demo.publish(final, args.publish_to, record, previous_results=shown(retired[""]))
    print(f"published {final} to {args.publish_to}; the reports of the model bundled before are now {shown(retired[''])} and its checks", flush=True)


RECIPE = ("steps", "batch_size", "lr", "seed", "replay_share", "caption_order", "category_weights", "position_colours", "min_gap", "ema_decay",
          "plan", "edit_distractors", "dropped_prompt_keeps_image", "read_source", "dit_blocks", "softmax_new_blocks", "coarse_input", "prompt_tokens")
"""The trainer settings of a run's last stage that its make_demo arguments decide and :func:`check_recipe` compares."""


def check_recipe(args: argparse.Namespace, stage: Path, recorded: dict) -> None:
    """The make_demo arguments must be the run's own, since they become the published record: the settings they give
    its last stage (:func:`train.make_demo.stage_settings`) must be those its trainer recorded (``recorded``, from
    ``run.json``) in every field of :data:`RECIPE`."""
    given = asdict(make_demo.stage_settings(args, stage.name, args.steps[STAGES.index(stage.name)]))
    wrong = [f"{name} {given[name]!r} (the run: {recorded.get(name)!r})" for name in RECIPE if recorded.get(name) != given[name]]
    require(not wrong, f"the make_demo arguments after -- are not those {stage.parent} was trained with: {', '.join(wrong)}; give the run's own")


def shown(path: Path) -> str:
    """``path`` as the records name it: relative to the repository when inside it."""
    return str(path.resolve().relative_to(make_demo.ROOT)) if path.resolve().is_relative_to(make_demo.ROOT) else str(path)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, argparse.Namespace]:
    """This command's own arguments, and the make_demo arguments after ``--``."""
    parser = argparse.ArgumentParser(prog="python -m train.publish_demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     usage="%(prog)s --retire-as NAME [--earlier-command COMMAND ...] [--results DIR] [--seeds N] -- <the run's make_demo arguments>")
    parser.add_argument("--retire-as", required=True, metavar="NAME",
                        help="the bundled model's reports are renamed results/demo-source-edit-NAME*.json (e.g. plan6-lr1e-4-1500editsteps)")
    parser.add_argument("--results", type=Path, default=make_demo.ROOT / "results", help="the reports folder (default: the repository's results/)")
    parser.add_argument("--earlier-command", action="append", default=[], metavar="COMMAND",
                        help="the command of an unpublished run this one was trained on from (--init-from); repeat, oldest first")
    parser.add_argument("--seeds", type=make_demo.positive, default=SEEDS, help="seeds 0..N-1 of the seed check (default %(default)s)")
    split = argv.index("--") if "--" in argv else len(argv)
    own = parser.parse_args(argv[:split])
    if split == len(argv) or split == len(argv) - 1:
        parser.error("give the run's make_demo arguments after --, as it was trained (its --runs, recipe and evaluation flags)")
    if not own.retire_as.replace("-", "").replace(".", "").replace("_", "").isalnum():
        parser.error(f"--retire-as {own.retire_as!r}: use letters, digits, '.', '-' and '_' only (it becomes part of file names)")
    return own, make_demo.parse_args(argv[split + 1 :])


def main(argv: list[str] | None = None) -> int:
    own, run = parse_args(sys.argv[1:] if argv is None else list(argv))
    torch.set_num_threads(run.threads)
    return make_demo.reporting_errors(lambda: publish_run(run, own.retire_as, own.results, own.seeds, own.earlier_command))


if __name__ == "__main__":
    sys.exit(main())
