"""Retrain the bundled ShapesWorld demo checkpoint from a fresh checkout, in one command.

    python -m train.make_demo                        # everything below (default budget 550,40,150)
    python -m train.make_demo --steps 4000,200,1500  # per-stage budgets (t2i, reconstruction, edit)
    python -m train.make_demo --resume               # continue an interrupted run where it stopped
    python -m train.make_demo --init-from runs/demo/t2i --runs runs/demo-more   # more steps on an earlier run's model
    accelerate launch --config_file train/accelerate/ddp.yaml -m train.make_demo   # the same on several GPUs

Steps (paper section 4.2, in miniature):

0. the frozen MLLM: :mod:`train.shapesworld_mllm` pretrains a small Qwen2.5-VL on ShapesWorld captions and
   questions (and text-only questions and repeats) once (only when the config's MLLM is ``hieraquery_core/assets/shapesworld-mllm`` and it is missing);
   likewise :mod:`train.shapesworld_vae` trains the autoencoder of a latent-space config
   (``train/configs/shapesworld-demo-latent.json``) when ``hieraquery_core/assets/shapesworld-vae`` is missing;
1. text-to-image pretraining on ShapesWorld's training pairs (held-out prompts and scenes are never drawn);
2. image reconstruction: empty prompt + the image as MLLM input -> the same image (the editing stage's
   image-only guidance branch, see ``train/data.py``);
3. editing fine-tuning on ShapesWorld edit triplets.

Unlike the paper, stages 2 and 3 replay text-to-image samples: ``--replay-share`` (default 0.25) of their
samples are text-to-image training pairs (:class:`train.data.ReplayMix`). Without it the third demo run
forgot text-to-image in the editing stage (0.027 -> 0.007 held-out, ``docs/demo-and-ablations.md``);
``--replay-share 0`` is the paper's recipe.

Every stage keeps a moving average of its weights (``--ema-decay``, default 0.999, diffusers' ``EMAModel``) and
exports it as the stage's model; on the demo it lowered the held-out flow loss by about 2 % (GenEval unchanged,
``docs/demo-and-ablations.md``). ``--ema-decay 0`` exports the raw weights.

Every stage is one run of the trainer (:func:`train.train.train`, i.e. ``python -m train.train --stage S
--data shapesworld``) in ``--runs/<stage>``, started from the previous stage's ``final/`` (``--init-from``). The
MLLM is frozen throughout; the queries, connector, DiT and alignment projector train (AdamW without weight
decay, gradients clipped at norm 1, linear warm-up from lr/10 over min(50, steps/10) steps, then a cosine back
to lr/10). ``--resume`` skips the stages that have a ``final/`` and continues the interrupted one from its
newest checkpoint (the trainer's exact resume).

At the end the main process scores the final model on held-out prompts and edits (:mod:`train.evaluate`,
written to ``--runs/eval.json``) and publishes it to ``hieraquery_core/assets/shapesworld-demo`` when it beats
the checkpoint there (scored the same way, ``--runs/eval-published.json``) or when there is none;
``--force-publish`` publishes regardless, ``--no-publish`` never. Under ``accelerate launch`` every process
trains, only the main process pretrains the MLLM, evaluates and publishes, and the others wait for it. The
architecture is ``train/configs/shapesworld-demo.json`` (backbone paths relative to the repository root).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hieraquery_core.checkpoint import CONFIG_NAME, STAGE_NAME, WEIGHTS_NAME, load_checkpoint, replace_directory
from hieraquery_core.config import HieraQueryConfig
from hieraquery_core.errors import HieraQueryError
from hieraquery_core.plan import parse_plan
from hieraquery_core.shapesworld.spec import MIN_GAP
from train import shapesworld_mllm, shapesworld_vae
from train.data import STAGES
from train.evaluate import EvalSettings, evaluate_model
from train.train import TrainConfig, make_accelerator, quiet_libraries, train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "train" / "configs" / "shapesworld-demo.json"
ASSET = ROOT / "hieraquery_core" / "assets" / "shapesworld-demo"
MIN_LR_FRACTION = 0.1
"""The schedule starts and ends at lr x this."""
EMA_DECAY = 0.999
"""Decay of the moving average of the weights each stage exports (``--ema-decay``)."""


def demo_config(path: Path) -> HieraQueryConfig:
    """The config at ``path`` with relative backbone paths made absolute against the repository root."""
    config = HieraQueryConfig.load(path)
    for spec in (config.mllm, config.dit, config.codec, config.connector):
        if spec.path and not Path(spec.path).is_absolute():
            spec.path = str(ROOT / spec.path)
    return config


def warmup_steps(steps: int) -> int:
    """min(50, steps / 10); 0 for runs under 20 steps (a warm-up of one step would never reach the peak, see docs/training.md)."""
    warmup = min(50, steps // 10)
    return warmup if warmup >= 2 else 0


def stage_config(stage: str, out: Path, steps: int, batch: int, lr: float, seed: int, save_every: int, *,
                 config: HieraQueryConfig | None = None, init_from: Path | None = None, resume: bool = False, replay_share: float = 0.0,
                 ema_decay: float = 0.0, mllm: Path | None = None, read_source: bool = False, dit_blocks: int | None = None, softmax_new_blocks: bool = False,
                 dropped_prompt_keeps_image: bool | None = None, edit_distractors: float = 0.0, caption_order: bool = False,
                 category_weights: str = "", position_colours: float = 0.0, min_gap: int = MIN_GAP, coarse_input: float | None = None,
                 prompt_tokens: int | None = None, plan: str | None = None) -> TrainConfig:
    """The trainer settings of one ShapesWorld stage with the demo recipe (see the module docstring);
    ``replay_share`` applies to the reconstruction and edit stages only; ``mllm`` replaces ``init_from``'s MLLM;
    ``read_source`` widens the DiT to read the input image's latents; ``dit_blocks`` grows it to that many blocks
    (``softmax_new_blocks``: with softmax self-attention); ``dropped_prompt_keeps_image`` sets the model config's field
    of that name (None: as it is); ``edit_distractors`` applies to the edit stage only;
    ``caption_order`` lays out the text-to-image scenes in prompt order, ``category_weights`` weighs their prompts'
    categories, ``position_colours`` colours that share of their position prompts and ``min_gap`` spaces their boxes
    (all four: every stage's text-to-image samples, replayed ones too);
    ``coarse_input`` lets the DiT read the previous scale's image (``HieraQuery.read_coarse``, that training noise);
    ``prompt_tokens`` and ``plan`` set the model config's fields of those names (None: as they are)."""
    return TrainConfig(stage=stage, out=str(out), config=config, init_from=None if init_from is None else str(init_from),
                       mllm=None if mllm is None else str(mllm), read_source=read_source, dit_blocks=dit_blocks, softmax_new_blocks=softmax_new_blocks, data="shapesworld",
                       steps=steps, batch_size=batch, lr=lr, min_lr=lr * MIN_LR_FRACTION, warmup=warmup_steps(steps), weight_decay=0.0,
                       grad_clip=1.0, save_every=save_every, log_every=25, seed=seed, resume="latest" if resume else None,
                       replay_share=0.0 if stage == "t2i" else replay_share, ema_decay=ema_decay,
                       dropped_prompt_keeps_image=dropped_prompt_keeps_image, edit_distractors=edit_distractors if stage == "edit" else 0.0,
                       caption_order=caption_order, category_weights=category_weights, position_colours=position_colours, min_gap=min_gap,
                       coarse_input=coarse_input,
                       prompt_tokens=prompt_tokens, plan=plan)


def launch_state():
    """This process's view of the launch (``is_main_process``, ``wait_for_everyone``, ``device``, ``print``): one
    process, or one of several under ``accelerate launch``; the stages' trainers share accelerate's process state."""
    return make_accelerator(TrainConfig())


def pretrain_mllm() -> None:
    """Step 0, the recipe of the committed MLLM: 6000 steps at lr 2e-3, half the examples text-only, half of those
    asking for the text back (docs/demo-and-ablations.md section 1: without them the shape words collapse)."""
    shapesworld_mllm.main(["--steps", "6000", "--lr", "2e-3", "--seed", "1", "--text-fraction", "0.5", "--repeat-fraction", "0.5",
                           "--out", str(shapesworld_mllm.ASSET_DIR)])


def pretrain_vae() -> None:
    """Step 0 for latent configs, the recipe of the committed autoencoder (:mod:`train.shapesworld_vae`)."""
    shapesworld_vae.main(["--steps", "3000", "--seed", "1", "--out", str(shapesworld_vae.ASSET_DIR)])


def missing_asset(path: str | None, asset: Path, weights: str) -> bool:
    """Whether a backbone ``path`` of the config is the ShapesWorld ``asset`` folder and its ``weights`` file is not there yet."""
    return bool(path) and Path(path).resolve() == asset.resolve() and not (asset / weights).is_file()


def stage_settings(args: argparse.Namespace, stage: str, steps: int, *, config: HieraQueryConfig | None = None, init_from: Path | None = None,
                   mllm: Path | None = None) -> TrainConfig:
    """The trainer settings make_demo gives ``stage`` of the run that ``args`` describe (:func:`stage_config` with every
    recipe and architecture flag of the command line)."""
    return stage_config(stage, args.runs / stage, steps, args.batch, args.lr, args.seed, args.save_every,
                        config=config, init_from=init_from, resume=args.resume, replay_share=args.replay_share,
                        ema_decay=args.ema_decay, mllm=mllm, read_source=args.read_source, dit_blocks=args.dit_blocks, softmax_new_blocks=args.softmax_new_blocks,
                        dropped_prompt_keeps_image=args.dropped_prompt_keeps_image, edit_distractors=args.edit_distractors,
                        caption_order=args.caption_order, category_weights=args.category_weights, position_colours=args.position_colours,
                        min_gap=args.min_gap, coarse_input=args.coarse_input,
                        prompt_tokens=args.prompt_tokens, plan=args.plan)


def train_stages(args: argparse.Namespace, config: HieraQueryConfig, state) -> Path | None:
    """Run the stages with a non-zero budget, each from the previous one's model; returns the last ``final/``.
    ``--mllm`` replaces the MLLM of the ``--init-from`` model in the first stage (later stages inherit it)."""
    previous: Path | None = args.init_from
    mllm: Path | None = args.mllm if args.init_from is not None else None
    for stage, steps in zip(STAGES, args.steps):
        if steps == 0:
            continue
        out = args.runs / stage
        if args.resume and (out / "final" / CONFIG_NAME).is_file():
            state.print(f"[{stage}] already trained ({out / 'final'}), skipping")
        else:
            train(stage_settings(args, stage, steps, config=config if previous is None else None, init_from=previous, mllm=mllm))
        previous, mllm = out, None
    return None if previous is None else previous / "final"


def last_stage(args: argparse.Namespace) -> Path | None:
    """The run folder of the last stage with a budget, whose ``final/`` is the model make_demo evaluates (None if every budget is 0)."""
    return next((args.runs / stage for stage, steps in reversed(list(zip(STAGES, args.steps))) if steps), None)


def headline(report: dict) -> float:
    """The number two demo checkpoints are compared by: GenEval overall, averaged with edit accuracy where measured."""
    scores = [report["geneval"]["overall"], *([report["edit_accuracy"]["overall"]] if "edit_accuracy" in report else [])]
    return float(np.mean(scores))


def evaluate_checkpoint(folder: Path, settings: EvalSettings, out: Path, device: torch.device) -> dict:
    """Held-out report of one checkpoint folder, also written to ``out`` as JSON."""
    with torch.inference_mode():
        report = {"checkpoint": str(folder), **evaluate_model(load_checkpoint(folder, device=device), settings)}
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def publish(checkpoint: Path, target: Path, provenance: dict, previous_results: str | None = None) -> None:
    """Copy a checkpoint folder to ``target`` with ``stage.json`` (how it was made), replacing it atomically.

    When ``target`` already holds a published model, the new ``stage.json`` keeps that model's whole record as
    ``previous`` and every earlier command in ``earlier_commands``: the replaced model's, then any the provenance
    itself lists (unpublished runs between that model and this one), so a published checkpoint carries its full
    history (docs/demo-and-ablations.md section 3). ``previous_results`` replaces the path of the replaced model's
    report in that record (its report renamed on publishing, :mod:`train.publish_demo`)."""
    record = target / STAGE_NAME
    if record.is_file():
        previous = json.loads(record.read_text())
        if previous_results is not None:
            previous["results"] = previous_results
        provenance = {**provenance, "earlier_commands": [*previous.get("earlier_commands", []), *([previous["command"]] if "command" in previous else []),
                                                         *provenance.get("earlier_commands", [])],
                      "previous": previous}
    tmp = target.with_name(f".{target.name}.publishing")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp)
    (tmp / record.name).write_text(json.dumps(provenance, indent=2) + "\n")
    replace_directory(tmp, target)


def provenance(args: argparse.Namespace, processes: int, report: dict, results: str, published_by: str) -> dict:
    """The ``stage.json`` record of a make_demo run published to ``args.publish_to``: its recipe, command and held-out
    scores (``report``, written to ``results``), and who published it on what grounds."""
    init_from = None if args.init_from is None else str(args.init_from)
    if args.init_from is not None and args.init_from.resolve() == args.publish_to.resolve():
        init_from += " (the model bundled before; its stage.json is 'previous', its commands are earlier_commands)"
    return {"stages": dict(zip(STAGES, args.steps)), "batch": args.batch, "processes": processes, "lr": args.lr, "seed": args.seed,
            "replay_share": args.replay_share, "edit_distractors": args.edit_distractors, "caption_order": args.caption_order,
            "category_weights": args.category_weights, "position_colours": args.position_colours, "min_gap": args.min_gap,
            "plan": parse_plan(args.plan or ""), "ema_decay": args.ema_decay,
            "dropped_prompt_keeps_image": args.dropped_prompt_keeps_image, "init_from": init_from,
            "command": f"python -m train.make_demo {shlex.join(args.argv)}",
            "eval": {k: report[k] for k in ("settings", "geneval", "edit_accuracy", "reconstruction_accuracy") if k in report},
            "results": results, "published_by": published_by}


def evaluate_and_publish(final: Path, args: argparse.Namespace, processes: int, device: torch.device) -> bool:
    """Score ``final``; publish it to ``args.publish_to`` if asked to and it beats what is there. Returns whether it did."""
    settings = eval_settings(args, n_edits=args.eval_edits)
    report = evaluate_checkpoint(final, settings, args.runs / "eval.json", device)
    print(f"held-out: GenEval overall {report['geneval']['overall']:.3f}, edit accuracy {report.get('edit_accuracy', {}).get('overall', 'n/a')}", flush=True)
    if args.no_publish:
        return False
    published_by = "train.make_demo --force-publish"
    if not args.force_publish and (args.publish_to / WEIGHTS_NAME).is_file():
        published = evaluate_checkpoint(args.publish_to, settings, args.runs / "eval-published.json", device)
        new, old = headline(report), headline(published)
        if new <= old:
            print(f"not published: {new:.3f} does not beat {args.publish_to}'s {old:.3f} (--force-publish to publish anyway)", flush=True)
            return False
        published_by = f"train.make_demo: headline (GenEval + edits) / 2 = {new:.3f} against {old:.3f} for the model it replaced"
    publish(final, args.publish_to, provenance(args, processes, report, str(args.runs / "eval.json"), published_by))
    print(f"published {final} to {args.publish_to}", flush=True)
    return True


def run(args: argparse.Namespace) -> Path | None:
    """Everything ``main`` does, from parsed arguments. Returns the final model folder (None if every budget is 0)."""
    torch.set_num_threads(args.threads)
    state = launch_state()
    config = demo_config(args.config)
    if args.mllm is not None:
        config.mllm.path = str(args.mllm.absolute())
    with state.main_process_first():  # the main process pretrains a missing MLLM; the others then find it
        if missing_asset(config.mllm.path, shapesworld_mllm.ASSET_DIR, "model.safetensors"):
            pretrain_mllm()
        if missing_asset(config.codec.path, shapesworld_vae.ASSET_DIR, "diffusion_pytorch_model.safetensors"):
            pretrain_vae()
    final = train_stages(args, config, state)
    if final is not None and state.is_main_process:
        evaluate_and_publish(final, args, state.num_processes, state.device)
    state.wait_for_everyone()
    return final


def add_recipe_arguments(parser: argparse.ArgumentParser, save_every: int) -> None:
    """The training flags make_demo and the ablations share."""
    parser.add_argument("--batch", type=int, default=16, help="samples per process per step (default %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default %(default)s)")
    parser.add_argument("--save-every", type=int, default=save_every, help="trainer checkpoint every N steps (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process (default %(default)s)")
    parser.add_argument("--ema-decay", type=float, default=EMA_DECAY, help="moving average of the weights, exported as each stage's model (default %(default)s; 0: off)")


def positive(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number >= 1")
    return value


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation flags make_demo and the ablations share (:class:`train.evaluate.EvalSettings`)."""
    parser.add_argument("--eval-n", type=positive, default=EvalSettings.n, help="held-out prompts (default %(default)s)")
    parser.add_argument("--eval-steps", type=positive, default=EvalSettings.steps, help="sampling steps per scale (default %(default)s)")
    parser.add_argument("--guidance", type=float, default=EvalSettings.guidance, help="classifier-free guidance (default %(default)s)")
    parser.add_argument("--eval-flow-n", type=int, default=EvalSettings.flow_n, help="held-out pairs of the held-out flow loss, 0 skips it (default %(default)s)")
    parser.add_argument("--refine-strength", type=float, default=EvalSettings.refine_strength,
                        help="sample each scale after the first from the previous one re-noised to this strength; 1 paints every scale from noise (default %(default)s)")
    parser.add_argument("--edit-refine-strength", type=float, default=EvalSettings.edit_refine_strength,
                        help="the same for edits and reconstructions (default %(default)s)")
    parser.add_argument("--edit-guidance", type=float, default=EvalSettings.edit_guidance, help="text guidance of edits (default %(default)s)")


def eval_settings(args: argparse.Namespace, n_edits: int) -> EvalSettings:
    return EvalSettings(n=args.eval_n, n_edits=n_edits, steps=args.eval_steps, guidance=args.guidance, refine_strength=args.refine_strength,
                        edit_refine_strength=args.edit_refine_strength, edit_guidance=args.edit_guidance, flow_n=args.eval_flow_n)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.make_demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="550,40,150", help="steps of the t2i, reconstruction and edit stages (0 skips a stage)")
    parser.add_argument("--replay-share", type=float, default=0.25, help="share of text-to-image samples in the reconstruction and edit stages (default %(default)s; 0: the paper's recipe)")
    add_recipe_arguments(parser, save_every=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=CONFIG, help="the architecture (a HieraQueryConfig JSON)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "demo", help="one trainer run folder per stage, and the evaluation reports")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run: finished stages are skipped, the interrupted one resumes")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start the first stage from this model (a checkpoint or run folder, e.g. an earlier run's t2i) with a fresh schedule, instead of --config")
    parser.add_argument("--mllm", type=Path, default=None,
                        help="the frozen MLLM folder: replaces --config's, or --init-from's model's (same sizes; e.g. a vision tower retrained with train.shapesworld_mllm --train vision)")
    parser.add_argument("--read-source", action="store_true",
                        help="widen the DiT to also read the input image's latents (zero-initialised; edits that keep the picture, docs/design.md)")
    parser.add_argument("--dit-blocks", type=int, default=None,
                        help="grow the DiT to this many blocks, the new ones starting as the identity (train.train's flag; docs/design.md)")
    parser.add_argument("--softmax-new-blocks", action="store_true",
                        help="with --dit-blocks: the new blocks' self-attention is softmax attention (train.train's flag)")
    parser.add_argument("--coarse-input", type=float, default=None, metavar="NOISE",
                        help="widen the DiT to also read the previous scale's image, its training copies noised up to NOISE (train.train's flag; docs/design.md)")
    parser.add_argument("--prompt-tokens", type=int, default=None, metavar="P",
                        help="the DiT also reads the MLLM's states at the prompt's last P positions (train.train's flag; docs/design.md)")
    parser.add_argument("--plan", default=None, metavar="QUESTION=WORD,...;...",
                        help="the frozen MLLM answers each QUESTION about a prompt containing one of its WORDs before it is encoded (train.train's flag; docs/design.md)")
    parser.add_argument("--dropped-prompt-keeps-image", action="store_true", default=None,
                        help="an instruction dropped for guidance keeps the input image as the target (the image-only branch learns reconstruction; docs/design.md)")
    parser.add_argument("--caption-order", action="store_true",
                        help="text-to-image scenes stand left to right in the order their prompt names the objects (train.train's flag)")
    parser.add_argument("--category-weights", default="", metavar="CATEGORY=N,...",
                        help="draw text-to-image prompts of these GenEval categories N times as often, e.g. position=3 (train.train's flag)")
    parser.add_argument("--position-colours", type=float, default=0.0, metavar="SHARE",
                        help="this share of the text-to-image position prompts name a colour for each object (train.train's flag; default %(default)s)")
    parser.add_argument("--min-gap", type=int, default=MIN_GAP, metavar="PX",
                        help="text-to-image scenes keep at least PX background pixels between boxes (train.train's flag; default %(default)s, the spec's)")
    parser.add_argument("--edit-distractors", type=float, default=0.0,
                        help="share of the edit stage's recolours and removals with a same-colour distractor (train.train's flag; default %(default)s)")
    add_eval_arguments(parser)
    parser.add_argument("--eval-edits", type=int, default=EvalSettings.n_edits, help="held-out edits (default %(default)s)")
    publishing = parser.add_mutually_exclusive_group()
    publishing.add_argument("--no-publish", action="store_true", help="keep everything under --runs (do not touch the bundled asset)")
    publishing.add_argument("--force-publish", action="store_true", help="publish even if the checkpoint already there scores as well or better")
    parser.add_argument("--publish-to", type=Path, default=ASSET, help="where the demo checkpoint is published (default: the bundled asset)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    raw = args.steps
    try:
        args.steps = [int(s) for s in raw.split(",")]
    except ValueError:
        args.steps = []
    if len(args.steps) != len(STAGES) or min(args.steps) < 0:
        parser.error(f"--steps {raw!r}: give {len(STAGES)} comma-separated whole numbers >= 0 (t2i, reconstruction, edit), e.g. 550,40,150")
    return args


def reporting_errors(action: Callable[[], object]) -> int:
    """Run a command's ``action`` quietly (no per-file progress bars); its exit status: 0, or 2 after a
    ``HieraQueryError``, printed as one ``error: ...`` line."""
    quiet_libraries()
    try:
        action()
    except HieraQueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return reporting_errors(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
