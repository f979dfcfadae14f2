"""Command line: ``python -m hieraquery_core {generate,edit,describe,demo} ...``.

Every scale's image is written as a PNG (``<name>_s<k>_<h>x<w>_<i>.png``) with a progress bar over all
denoising steps. Without ``--checkpoint`` the bundled ShapesWorld demo is used; if it has not been
trained yet, a tiny randomly initialised model is used instead, and the output says so plainly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from .checkpoint import BUNDLED_DEMO_EDITS, BUNDLED_DEMO_PROMPT, BUNDLED_DEMO_SAMPLING, BUNDLED_DEMO_SEED, STAGE_NAME, bundled_demo, load_checkpoint
from .errors import HieraQueryError, require
from .images import as_pixels, to_pil
from .model import HieraQuery
from .pipeline import HieraQueryPipeline, PipelineOutput, SamplingOptions
from .tiny import tiny_config


def provenance(folder: Path) -> str:
    """How a published checkpoint was made, from its stage.json: its held-out scores, or its note."""
    stage = folder / STAGE_NAME
    if not stage.is_file():
        return ""
    info = json.loads(stage.read_text())
    if "eval" in info:
        geneval = info["eval"]["geneval"]["overall"]
        edits = info["eval"].get("edit_accuracy", {}).get("overall")
        settings = info["eval"].get("settings", {})  # the demo may be sampled otherwise (BUNDLED_DEMO_SAMPLING)
        candidates = settings.get("candidates", 1)  # reports from before the self-check painted one
        cascades = "one cascade per prompt" if candidates == 1 else f"the self-check's best of {candidates} cascades"
        drawn = f" at guidance {settings['guidance']:g}, refine strength {settings['refine_strength']:g}, {cascades}" if "refine_strength" in settings else ""
        edited = f" at edit refine strength {settings['edit_refine_strength']:g}" if "edit_refine_strength" in settings else ""
        return f"; held-out GenEval overall {geneval:.3f}{drawn}" + (f", edit accuracy {edits:.3f}{edited}" if edits is not None else "")
    return f"; {info['note']}" if "note" in info else ""


def load_model(checkpoint: str | None, device: str) -> tuple[HieraQuery, str]:
    """The model to run and a one-line description of where it came from."""
    if checkpoint:
        return load_checkpoint(checkpoint, device=device), f"checkpoint {checkpoint}"
    demo = bundled_demo()
    if demo is not None:
        return load_checkpoint(demo, device=device), f"bundled ShapesWorld demo checkpoint ({demo}){provenance(demo)}"
    torch.manual_seed(0)
    model = HieraQuery.from_config(tiny_config()).eval().to(device)
    return model, "a TINY RANDOMLY INITIALISED model (no trained checkpoint is bundled yet): the images are noise, not a result"


def read_image(path: str) -> torch.Tensor:
    require(Path(path).is_file(), f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            return as_pixels(img.convert("RGB"))
    except OSError as exc:
        raise HieraQueryError(f"{path} is not a readable image ({exc})") from exc


def write_scales(output: PipelineOutput, out_dir: Path, name: str) -> list[Path]:
    """Write every scale's images; returns the paths, coarse to fine."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, images in enumerate(output.images):
        for i, img in enumerate(to_pil(images)):
            path = out_dir / f"{name}_s{k}_{img.height}x{img.width}_{i}.png"
            img.save(path)
            paths.append(path)
    return paths


def sampling_options(args: argparse.Namespace) -> SamplingOptions:
    steps = [int(s) for s in args.steps.split(",")] if "," in args.steps else int(args.steps)
    return SamplingOptions(
        steps=steps, guidance=args.guidance, image_guidance=args.image_guidance, refine_strength=args.refine_strength,
        mode=args.mode, height=args.height, width=args.width, images_per_prompt=args.batch, candidates=args.candidates,
    )


def progress(pipeline: HieraQueryPipeline, options: SamplingOptions, desc: str):
    """A tqdm bar over every denoising step of every scale (a refined scale runs fewer) and the self-check's passes,
    and the step callback that feeds it."""
    num_scales = len(pipeline.model.config.scales)
    bar = tqdm(total=sum(options.steps_plan(num_scales)), desc=desc, unit="step")

    def callback(k: int, step: int, steps: int, _latents: torch.Tensor) -> None:
        bar.set_postfix_str("self-check" if k == num_scales else f"scale={k}")
        bar.update(1)

    return bar, callback


def run_generate(pipeline: HieraQueryPipeline, args: argparse.Namespace, name: str = "generate") -> PipelineOutput:
    options = sampling_options(args)
    bar, callback = progress(pipeline, options, "text-to-image")
    with bar:
        output = pipeline.generate(args.prompt, seed=args.seed, options=options, callback=callback)
    if options.candidates > 1:
        print(f"self-check: each image is the best of {options.candidates} cascades by the model's own DiT (--candidates 1 paints one)")
    read = output.prompts[0]
    if read != args.prompt:  # a checkpoint that plans (docs/design.md, "Reason, then paint"): what the MLLM answered
        print(f"prompt as the MLLM read it: {read!r}")
    for path in write_scales(output, Path(args.out), name):
        print(path)
    return output


def run_edit(pipeline: HieraQueryPipeline, args: argparse.Namespace, image: torch.Tensor, name: str = "edit") -> PipelineOutput:
    options = sampling_options(args)
    bar, callback = progress(pipeline, options, "edit")
    with bar:
        output = pipeline.edit(image, args.instruction, seed=args.seed, options=options, callback=callback)
    for path in write_scales(output, Path(args.out), name):
        print(path)
    return output


def sampling_flags(steps: str = "20", guidance: float = 4.0, refine_strength: float = 1.0, seed: int = 0, candidates: int = 1) -> argparse.ArgumentParser:
    """The sampling flags (a parent parser; each command gets its own, so their defaults stay apart)."""
    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument("--seed", type=int, default=seed)
    sampling.add_argument("--steps", default=steps, help="steps per scale: one number, or one per scale like 10,10,20")
    sampling.add_argument("--guidance", type=float, default=guidance)
    sampling.add_argument("--image-guidance", type=float, default=1.5)
    sampling.add_argument("--refine-strength", type=float, default=refine_strength, help="<1 starts each scale from the previous one re-noised")
    sampling.add_argument("--mode", choices=["cascade", "ming"], default="cascade")
    sampling.add_argument("--height", type=int)
    sampling.add_argument("--width", type=int)
    sampling.add_argument("--batch", type=int, default=1, help="images per prompt")
    sampling.add_argument("--candidates", type=int, default=candidates,
                          help="cascades painted per image, the one the model's own DiT finds fits the prompt best kept (self-check; default %(default)s)")
    return sampling


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hieraquery_core", description="HieraQuery: coarse-to-fine text-to-image, editing and understanding.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--checkpoint", help="checkpoint folder (default: the bundled ShapesWorld demo)")
    common.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    common.add_argument("--out", default="outputs", help="folder for the PNGs of every scale")
    sampling = sampling_flags()
    gen = sub.add_parser("generate", parents=[common, sampling], help="text to image, every scale saved")
    gen.add_argument("--prompt", required=True)
    edit = sub.add_parser("edit", parents=[common, sampling], help="edit an image by an instruction")
    edit.add_argument("--image", required=True)
    edit.add_argument("--instruction", required=True)
    desc = sub.add_parser("describe", parents=[common], help="ask the MLLM about an image")
    desc.add_argument("--image", required=True)
    desc.add_argument("--question", default="describe the image")
    tuned = BUNDLED_DEMO_SAMPLING
    demo_sampling = sampling_flags(steps=str(tuned["steps"]), guidance=tuned["guidance"], refine_strength=tuned["refine_strength"], seed=BUNDLED_DEMO_SEED,
                                   candidates=tuned["candidates"])
    demo = sub.add_parser("demo", parents=[common, demo_sampling], help="generate, edit the result, describe it (sampled as the bundled demo was tuned)")
    demo.add_argument("--prompt", default=BUNDLED_DEMO_PROMPT)
    demo.add_argument("--instruction", default=BUNDLED_DEMO_EDITS[0])
    demo.add_argument("--edit-refine-strength", type=float, default=tuned["edit_refine_strength"],
                      help="--refine-strength of the edit (default %(default)s: each scale after the first starts from the previous one re-noised to it, every scale reading the image)")
    demo.add_argument("--edit-guidance", type=float, default=tuned["edit_guidance"], help="--guidance of the edit (default %(default)s)")
    demo.add_argument("--edit-candidates", type=int, default=tuned["edit_candidates"], help="--candidates of the edit (default %(default)s)")
    demo.add_argument("--question", default="describe the image")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model, origin = load_model(args.checkpoint, args.device)
        print(f"model: {origin}")
        pipeline = HieraQueryPipeline(model)
        if args.command == "generate":
            run_generate(pipeline, args)
        elif args.command == "edit":
            run_edit(pipeline, args, read_image(args.image))
        elif args.command == "describe":
            print(pipeline.describe(read_image(args.image), args.question)[0])
        else:
            generated = run_generate(pipeline, args, "demo_generate")
            edit_args = argparse.Namespace(**{**vars(args), "refine_strength": args.edit_refine_strength, "guidance": args.edit_guidance,
                                              "candidates": args.edit_candidates})
            edited = run_edit(pipeline, edit_args, generated.final[:1], "demo_edit")
            print(f"description of the edited image: {pipeline.describe(edited.final[:1], args.question)[0]!r}")
    except HieraQueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
