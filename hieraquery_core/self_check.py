"""Self-check: paint several candidates and keep the one the model's own DiT finds fits the prompt best (project
extension, off by default: ``SamplingOptions.candidates``).

The paper samples one image per prompt (section 3.1, Fig. 2). A flow-matching DiT is also a judge of how well an
image fits a condition (Li et al., 2023, "Your diffusion model is secretly a zero-shot classifier"): an image that
shows what the prompt says is denoised better with the prompt than without it. :func:`prompt_fit` measures that
with Eq. 5's own objective at the final scale, for an image x with noise eps at level sigma:

    fit(x) = mean over sigma in FIT_SIGMAS and FIT_DRAWS draws of eps of
             log( || v(x_sigma, reference) - (eps - x) ||^2  /  || v(x_sigma, prompt) - (eps - x) ||^2 )

where the reference is the branch guidance pushes away from: the empty prompt for text-to-image, the empty prompt
with the input image for an edit (so the fit is what the instruction explains). Both branches see the same noise,
so what the image alone makes easy or hard cancels out, and the ratio weighs every noise level alike (the error
itself grows with sigma). Nothing outside the model is consulted (no evaluator, no other network); the price is
``candidates`` cascades per image plus ``2 x len(FIT_SIGMAS) x FIT_DRAWS`` DiT passes per candidate at the final
scale. The rule, its noise levels and draws were chosen on training-split prompts, never held-out ones
(docs/demo-and-ablations.md section 3, "The self-check"; docs/design.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from diffusers.utils.torch_utils import randn_tensor

from .connector import ScaleCondition
from .errors import require
from .flow_matching import noisy_latents
from .images import to_signed

if TYPE_CHECKING:
    from .pipeline import EncodedPrompt
    from .model import HieraQuery

FIT_SIGMAS = (0.2, 0.4, 0.6, 0.8)
"""The noise levels of :func:`prompt_fit` (1 is pure noise)."""
FIT_DRAWS = 2
"""Noise draws per level."""
FIT_PASSES = len(FIT_SIGMAS) * FIT_DRAWS
"""DiT passes of :func:`prompt_fit` (each runs both branches as one batch): what a progress bar counts for it."""

PassCallback = Callable[[int, int, torch.Tensor], None]
"""callback(pass, total_passes, latents of the final images), called after every pass; may raise to interrupt."""


@torch.no_grad()
def prompt_fit(model: HieraQuery, encoded: EncodedPrompt, images: Sequence[torch.Tensor], repeats: int, seed: int,
               sigmas: Sequence[float] = FIT_SIGMAS, draws: int = FIT_DRAWS, callback: PassCallback | None = None) -> torch.Tensor:
    """How much better the DiT denoises each final image with its prompt than with the reference branch (the module's
    ``fit``: 0 when the prompt does not help, higher fits better), [B * repeats].

    ``images``: every scale's images [B * repeats, 3, h, w] in [0, 1], coarse to fine, as :meth:`HieraQueryPipeline.sample`
    paints them for ``encoded`` (B prompts) with ``repeats`` images per prompt; a DiT that reads the previous scale
    reads the one before the last. ``seed`` fixes the noise. ``callback`` follows the ``len(sigmas) * draws`` passes
    (progress, and a Cancel between passes).
    """
    reference = encoded.image_only if encoded.image_only is not None else encoded.uncond
    require(reference is not None, "the self-check compares the prompt with the empty prompt, which was not encoded; encode with guidance "
                                   "(a guidance other than 1) to sample several candidates")
    final = images[-1].to(model.device)
    size = tuple(final.shape[-2:])
    x0 = model.codec.encode(to_signed(final)).float()
    batch = x0.shape[0]
    source = None
    if model.reads_source:
        source = model.source_latents(encoded.source_images, batch // repeats, size).repeat_interleave(repeats, 0).float()
    coarse = model.coarse_latents(images[-2].to(model.device), batch, size).float() if model.reads_coarse and len(images) > 1 else None
    extra = model.dit_inputs(source, coarse)
    extra = None if extra is None else extra.repeat(2, 1, 1, 1)
    conditions = ScaleCondition.cat([reference[-1].repeat(repeats), encoded.cond[-1].repeat(repeats)])
    fit = torch.zeros(batch, device=model.device)
    generator = torch.Generator("cpu").manual_seed(int(seed) % 2**64)
    passes = len(sigmas) * draws
    for i, sigma in enumerate(sigmas):
        level = torch.full((batch,), float(sigma), device=model.device)
        for j in range(draws):
            noise = randn_tensor(x0.shape, generator=generator, device=model.device, dtype=x0.dtype)
            noisy = noisy_latents(x0, noise, level)
            velocity = model.dit(noisy.repeat(2, 1, 1, 1), level.repeat(2), conditions, extra).float()
            error = ((velocity - (noise - x0).repeat(2, 1, 1, 1)) ** 2).flatten(1).mean(1)
            fit += (error[:batch] / error[batch:]).log()
            if callback is not None:
                callback(i * draws + j + 1, passes, x0)
    return fit / passes


def best_candidates(fit: torch.Tensor, candidates: int) -> torch.Tensor:
    """The row of the best-fitting candidate of each consecutive group of ``candidates`` rows (ties: the first)."""
    require(fit.shape[0] % candidates == 0, f"{fit.shape[0]} fits do not split into groups of {candidates} candidates")
    groups = fit.view(-1, candidates)
    return groups.argmax(1) + torch.arange(groups.shape[0], device=fit.device) * candidates
