"""What each HieraQuery node does, as plain functions over ``hieraquery_core`` (no ComfyUI import).

The V3 node classes (``loader.py``, ``stages.py``, ``tasks.py``) only declare inputs and outputs and call
these functions; the model logic itself is all in ``hieraquery_core.pipeline`` (paper section 3, Eq. 4-5
and the coarse-to-fine sampling of Fig. 2). Images cross the node boundary in ComfyUI's IMAGE layout,
float [B, H, W, C] in [0, 1]; LATENT is ``{"samples": latents}`` in the checkpoint's own latent space
(for a pixel-space checkpoint, the image in [-1, 1]). Every user mistake raises HieraQueryError (a
ValueError) whose message names the fix; ComfyUI shows it in its error panel.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..hieraquery_core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_checkpoint
from ..hieraquery_core.errors import require
from ..hieraquery_core.images import as_pixels, to_channels_last
from ..hieraquery_core.model import HieraQuery
from ..hieraquery_core.pipeline import HieraQueryPipeline, SamplingOptions, refined_steps
from .checkpoints import resolve_checkpoint
from .runtime import ConditionsValue, LoadedModel, ProgressSink, ProgressTracker, QueryStatesValue, Residency, StaysPut, ignore_progress

Image = torch.Tensor
"""ComfyUI's IMAGE: float [B, H, W, C] in [0, 1]."""


def load_model(
    name: str,
    roots: Iterable[str | os.PathLike],
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    backbone_dirs: Mapping[str, Sequence[str | os.PathLike]] | None = None,
    residency: Callable[[HieraQuery], Residency] = lambda model: StaysPut(),
) -> LoadedModel:
    """Loader: the checkpoint folder called ``name`` under ``roots`` (or the bundled demo), read-only."""
    path = resolve_checkpoint(name, roots)
    model = load_checkpoint(path, device=device, dtype=dtype, backbone_dirs=backbone_dirs)
    return LoadedModel(name, path, HieraQueryPipeline(model), residency(model))


def checkpoint_fingerprint(name: str, roots: Iterable[str | os.PathLike]) -> str:
    """Changes when the checkpoint's files change (a retrained checkpoint is reloaded, not served from cache)."""
    try:
        path = resolve_checkpoint(name, roots)
    except ValueError:
        return name  # the loader itself reports the missing checkpoint
    stamps = [f"{(path / f).stat().st_mtime_ns}" for f in (CONFIG_NAME, WEIGHTS_NAME) if (path / f).is_file()]
    return ":".join([str(path), *stamps])


def _same_checkpoint(source: str, model: LoadedModel, what: str) -> None:
    require(source == model.name, f"these {what} come from checkpoint {source!r} but this node is given {model.name!r}; connect the same HieraQuery loader to every node of one graph")


def encode_queries(model: LoadedModel, prompt: str, image: Image | None = None) -> QueryStatesValue:
    """Query encode (Eq. 4): the prompt (and, for editing, each input image) with the multi-scale queries
    through the frozen MLLM; the empty-prompt branches that guidance needs are encoded alongside."""
    require(bool(prompt.strip()), "the prompt is empty; describe the image to make or, with an input image, the change to make")
    pixels = as_pixels(image) if image is not None else None
    prompts = [prompt] * (pixels.shape[0] if pixels is not None else 1)
    with model.active() as pipe:
        states = pipe.encode_states(prompts, pixels)
    return QueryStatesValue(states, model.name, tuple(pixels.shape[-2:]) if pixels is not None else None)


def connect(model: LoadedModel, query_states: QueryStatesValue) -> ConditionsValue:
    """Connector (Eq. 5's g_theta): every branch's query states -> per-scale DiT conditions."""
    _same_checkpoint(query_states.source, model, "query states")
    with model.active() as pipe:
        encoded = pipe.connect(query_states.states)
    return ConditionsValue(encoded, model.name, query_states.image_size)


def _target(default: tuple[int, int] | None, width: int, height: int) -> tuple[int | None, int | None]:
    """(height, width) of the final scale; 0 means the input image's size when editing, else the checkpoint's."""
    default_h, default_w = default or (None, None)
    return height or default_h, width or default_w


def sample_scale(
    model: LoadedModel,
    conditions: ConditionsValue,
    scale: int,
    seed: int,
    steps: int,
    guidance: float,
    image_guidance: float,
    width: int = 0,
    height: int = 0,
    batch_size: int = 1,
    previous: Image | None = None,
    refine_strength: float = 1.0,
    progress: ProgressSink = ignore_progress,
) -> tuple[Image, dict[str, torch.Tensor]]:
    """Scale sampler: paint scale ``scale`` (0 = coarsest) at its own resolution, derived from the final
    width x height and the scale's resolution factor. With ``previous`` and ``refine_strength`` < 1 it starts
    from the previous scale's image re-noised to that strength (the alignment-aware refinement)."""
    _same_checkpoint(conditions.source, model, "conditions")
    size = model.pipeline.model.scale_size(scale, *_target(conditions.image_size, width, height))
    init = None if previous is None else as_pixels(previous)
    with model.active() as pipe:
        latents = pipe.sample_scale_latents(
            conditions.encoded, scale, size, seed, steps=steps, guidance=guidance, image_guidance=image_guidance,
            init=init, strength=refine_strength, images_per_prompt=batch_size,
            callback=ProgressTracker(pipe, [steps if init is None else refined_steps(steps, refine_strength)], progress),
        )
        pixels = pipe.decode(latents)
    device = model.residency.output_device
    return to_channels_last(pixels).to(device), {"samples": latents.to(device)}


def generate(
    model: LoadedModel,
    prompt: str,
    seed: int,
    steps: int,
    guidance: float,
    width: int = 0,
    height: int = 0,
    batch_size: int = 1,
    refine_strength: float = 1.0,
    candidates: int = 1,
    progress: ProgressSink = ignore_progress,
) -> list[Image]:
    """Generate: text to image, every scale coarse to fine; returns one IMAGE per scale (the last is the result). With
    ``candidates`` > 1 each image is the self-check's pick of that many cascades (``SamplingOptions.candidates``)."""
    options = SamplingOptions(steps=steps, guidance=guidance, refine_strength=refine_strength, height=height or None, width=width or None,
                              images_per_prompt=batch_size, candidates=candidates)
    with model.active() as pipe:
        out = pipe.generate(prompt, seed, options, callback=ProgressTracker(pipe, options.steps_plan(len(pipe.model.config.scales)), progress))
    device = model.residency.output_device
    return [to_channels_last(images).to(device) for images in out.images]


def edit(
    model: LoadedModel,
    image: Image,
    instruction: str,
    seed: int,
    steps: int,
    guidance: float,
    image_guidance: float,
    refine_strength: float = 1.0,
    candidates: int = 1,
    progress: ProgressSink = ignore_progress,
) -> list[Image]:
    """Edit and Style transfer: the MLLM reads each image with the instruction; every scale is repainted at
    the input's size. Returns one IMAGE per scale (the last is the edited image, same batch as the input); with
    ``candidates`` > 1, the self-check's pick of that many cascades per image."""
    pixels = as_pixels(image)
    options = SamplingOptions(steps=steps, guidance=guidance, image_guidance=image_guidance, refine_strength=refine_strength, candidates=candidates)
    with model.active() as pipe:
        out = pipe.edit(pixels, instruction, seed, options, callback=ProgressTracker(pipe, options.steps_plan(len(pipe.model.config.scales)), progress))
    device = model.residency.output_device
    return [to_channels_last(images).to(device) for images in out.images]


def describe(model: LoadedModel, image: Image, question: str, max_new_tokens: int = 32) -> str:
    """Describe: the frozen MLLM's answer about each image (one line per image of the batch)."""
    pixels = as_pixels(image)
    with model.active() as pipe:
        answers = pipe.describe(pixels, question, max_new_tokens=max_new_tokens)
    return "\n".join(answers)


def scales_batch(scales: list[Image]) -> Image:
    """Every scale's images enlarged (nearest neighbour, so each scale's own pixels stay visible) to the final
    size and stacked into one batch, coarse to fine."""
    height, width = scales[-1].shape[1:3]
    return torch.cat([F.interpolate(s.permute(0, 3, 1, 2), size=(height, width), mode="nearest").permute(0, 2, 3, 1) for s in scales])

