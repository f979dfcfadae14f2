"""Sampling: text-to-image and instruction editing, coarse to fine (Eq. 5, Fig. 2).

Scale k is painted at its own resolution by the shared DiT, conditioned on scale k's connector output,
with flow-matching Euler steps from diffusers' ``FlowMatchEulerDiscreteScheduler`` and classifier-free
guidance: a text scale for text-to-image and, for editing, an image scale as in InstructPix2Pix:

    v = v(empty, black) + s_img * (v(empty, image) - v(empty, black)) + s_txt * (v(prompt, image) - v(empty, image))

Choices the paper leaves open, written down here:
- Seeds: scale k draws its noise from ``torch.Generator('cpu').manual_seed(seed + k)``, so one scale
  sampled alone (the ComfyUI Scale Sampler node) matches the same scale of a full cascade, and the
  results do not depend on the device.
- Alignment-aware refinement (``refine_strength`` < 1): scale k starts from the upsampled image of
  scale k-1, re-noised to that strength with the scheduler's ``scale_noise`` (as diffusers' img2img
  pipelines do). 1.0 (default) is the paper's independent generation per scale.
- ``mode='ming'`` paints every scale at the full resolution and keeps them all (the last is the
  result), as Ming-Lite-Uni's inference does; it exists for comparison only.
- ``candidates`` > 1 paints that many cascades per image and keeps the one whose final scale the DiT itself finds fits
  the prompt best (:mod:`.self_check`, a project extension; 1, the default, is the paper's single sample).
- Encoding (MLLM + connector) is separate from sampling: a new seed, step count or guidance value
  re-uses an :class:`EncodedPrompt` without re-running the MLLM. The two halves of encoding, the MLLM's
  query states (Eq. 4, :meth:`HieraQueryPipeline.encode_states`) and the connector
  (:meth:`HieraQueryPipeline.connect`), can also run apart, as the ComfyUI nodes do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from .connector import ScaleCondition
from .errors import require
from .images import as_pixels, resize, to_signed, to_unsigned
from .model import HieraQuery
from .self_check import FIT_PASSES, best_candidates, prompt_fit

StepCallback = Callable[[int, int, int, torch.Tensor], None]
"""callback(scale_index, step, total_steps, latents), called after every step; may raise to interrupt. With several
candidates the self-check's DiT passes follow as one more scale index (``num_scales``), with the final latents."""


@dataclass
class QueryStates:
    """The MLLM's hidden states at each scale's query positions ([B, N_k, d] per scale, Eq. 4), per guidance branch:
    the prompt, the empty prompt (with a black image when editing) and, when editing, the empty prompt with the image."""

    cond: list[torch.Tensor]
    uncond: list[torch.Tensor] | None = None
    image_only: list[torch.Tensor] | None = None
    source_images: torch.Tensor | None = None
    """The input images [B, 3, H, W] in [0, 1] when editing (a DiT that reads them gets their latents too)."""
    prompts: list[str] | None = None
    """The prompts as the MLLM read them: with ``HieraQueryConfig.plan``, followed by its answers (:meth:`HieraQuery.plan`)."""

    @property
    def batch_size(self) -> int:
        return self.cond[0].shape[0]


@dataclass
class EncodedPrompt:
    """Per-scale DiT conditions of every guidance branch, for a batch of prompts (computed once)."""

    cond: list[ScaleCondition]
    uncond: list[ScaleCondition] | None = None
    image_only: list[ScaleCondition] | None = None
    source_images: torch.Tensor | None = None
    """As :attr:`QueryStates.source_images`."""
    prompts: list[str] | None = None
    """As :attr:`QueryStates.prompts`."""

    @property
    def batch_size(self) -> int:
        return self.cond[0].tokens.shape[0]

    @property
    def num_scales(self) -> int:
        return len(self.cond)


@dataclass
class SamplingOptions:
    """How to sample; ``steps`` may be one count for all scales or one per scale."""

    steps: int | Sequence[int] = 20
    guidance: float = 4.0
    image_guidance: float = 1.5
    refine_strength: float = 1.0
    mode: str = "cascade"
    height: int | None = None
    width: int | None = None
    images_per_prompt: int = 1
    candidates: int = 1
    """Cascades painted per image; the best by :func:`~.self_check.prompt_fit` is kept (every scale of it)."""

    def steps_for(self, k: int, num_scales: int) -> int:
        if isinstance(self.steps, int):
            return self.steps
        require(len(self.steps) == num_scales, f"steps has {len(self.steps)} entries but the model has {num_scales} scales; give one count or one per scale")
        return int(self.steps[k])

    def steps_run(self, k: int, num_scales: int) -> int:
        """The denoising steps scale k really runs in :meth:`HieraQueryPipeline.sample` (fewer when it is refined)."""
        steps = self.steps_for(k, num_scales)
        return steps if k == 0 or self.mode != "cascade" else refined_steps(steps, self.refine_strength)

    def steps_plan(self, num_scales: int) -> list[int]:
        """:meth:`steps_run` of every scale, coarse to fine, then the self-check's passes when there are several
        candidates: what a progress bar over a whole :meth:`HieraQueryPipeline.sample` counts."""
        check = [FIT_PASSES] if self.candidates > 1 else []
        return [self.steps_run(k, num_scales) for k in range(num_scales)] + check


def refined_steps(steps: int, strength: float) -> int:
    """How many of ``steps`` a scale runs when it starts from an image re-noised to ``strength`` (at least one)."""
    return steps if strength >= 1.0 else max(1, round(steps * strength))


@dataclass
class PipelineOutput:
    """The images of every scale, coarse to fine, [B, 3, h_k, w_k] in [0, 1] (the last is the result)."""

    images: list[torch.Tensor] = field(default_factory=list)
    prompts: list[str] | None = None
    """The prompts as the MLLM read them (:attr:`QueryStates.prompts`), when the conditions record them."""

    @property
    def final(self) -> torch.Tensor:
        return self.images[-1]


class HieraQueryPipeline:
    """Encode once, sample any scale, or run the whole cascade."""

    def __init__(self, model: HieraQuery) -> None:
        self.model = model
        self.scheduler_config = FlowMatchEulerDiscreteScheduler(shift=model.config.scheduler_shift).config

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str], images: torch.Tensor | Sequence | None = None, guidance: bool = True) -> EncodedPrompt:
        """MLLM + connector for the prompts (and, for editing, one input image per prompt or one for all).

        With ``guidance`` the empty-prompt (and empty-prompt-with-image) branches are encoded too.
        """
        return self.connect(self.encode_states(prompts, images, guidance))

    @torch.no_grad()
    def encode_states(self, prompts: str | Sequence[str], images: torch.Tensor | Sequence | None = None, guidance: bool = True) -> QueryStates:
        """Eq. 4 alone: the frozen MLLM's query states of every guidance branch (see :meth:`encode`)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        require(len(prompts) > 0, "no prompt was given")
        image_lists = pixels = None
        if images is not None:
            pixels = as_pixels(images)
            if pixels.shape[0] == 1 and len(prompts) > 1:
                pixels = pixels.expand(len(prompts), -1, -1, -1)
            require(pixels.shape[0] == len(prompts), f"got {pixels.shape[0]} images for {len(prompts)} prompts; give one image per prompt, or one for all")
            image_lists = [[img] for img in pixels]
        model = self.model
        prompts = model.plan(prompts, image_lists)
        cond = model.encode_read(prompts, image_lists)
        if not guidance:
            return QueryStates(cond, source_images=pixels, prompts=prompts)
        empty = [""] * len(prompts)
        if image_lists is None:
            return QueryStates(cond, uncond=model.encode(empty), prompts=prompts)
        black = [[torch.zeros_like(imgs[0])] for imgs in image_lists]
        return QueryStates(cond, uncond=model.encode(empty, black), image_only=model.encode(empty, image_lists), source_images=pixels, prompts=prompts)

    @torch.no_grad()
    def connect(self, states: QueryStates) -> EncodedPrompt:
        """Eq. 5's g_theta alone: every branch's query states -> per-scale DiT conditions."""
        require(len(states.cond) == len(self.model.config.scales), f"these query states have {len(states.cond)} scales but the model has {len(self.model.config.scales)}; encode with this model")
        condition = self.model.condition
        return EncodedPrompt(
            condition(states.cond),
            uncond=condition(states.uncond) if states.uncond is not None else None,
            image_only=condition(states.image_only) if states.image_only is not None else None,
            source_images=states.source_images,
            prompts=states.prompts,
        )

    def _branches(self, encoded: EncodedPrompt, k: int, guidance: float, image_guidance: float) -> tuple[list[ScaleCondition], list[torch.Tensor | None], Callable[[list[torch.Tensor]], torch.Tensor]]:
        """The conditions to batch through the DiT for scale k, each branch's input images (the black image
        of the empty branch when editing), and how to combine their velocities."""
        cond, source = encoded.cond[k], encoded.source_images
        if encoded.uncond is None or (guidance == 1.0 and (encoded.image_only is None or image_guidance == 1.0)):
            return [cond], [source], lambda v: v[0]
        black = None if source is None else torch.zeros_like(source)
        if encoded.image_only is None:
            return [encoded.uncond[k], cond], [black, source], lambda v: v[0] + guidance * (v[1] - v[0])
        return ([encoded.uncond[k], encoded.image_only[k], cond], [black, source, source],
                lambda v: v[0] + image_guidance * (v[1] - v[0]) + guidance * (v[2] - v[1]))

    @torch.no_grad()
    def sample_scale(self, encoded: EncodedPrompt, k: int, size: tuple[int, int], seed: int, **options) -> torch.Tensor:
        """Paint scale k at ``size`` (pixels); returns images [B * images_per_prompt, 3, h, w] in [0, 1].

        ``options`` are those of :meth:`sample_scale_latents` (steps, guidance, init, strength, ...).
        """
        return self.decode(self.sample_scale_latents(encoded, k, size, seed, **options))

    @torch.no_grad()
    def sample_scale_latents(
        self,
        encoded: EncodedPrompt,
        k: int,
        size: tuple[int, int],
        seed: int,
        steps: int = 20,
        guidance: float = 4.0,
        image_guidance: float = 1.5,
        init: torch.Tensor | None = None,
        strength: float = 1.0,
        images_per_prompt: int = 1,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Denoise scale k at ``size`` (pixels): the codec's latents [B * images_per_prompt, C, h/f, w/f] (float32).

        ``init`` (pixels in [0, 1], any size) with ``strength`` < 1 starts from that image re-noised: the alignment-aware
        refinement from the previous scale. A model that :attr:`~HieraQuery.reads_coarse` also reads ``init`` as the
        previous scale's image, whatever the strength (zeros without one: the coarsest scale).
        """
        model = self.model
        require(0 <= k < encoded.num_scales, f"scale {k} does not exist; this model has scales 0..{encoded.num_scales - 1}")
        require(steps >= 1, f"steps must be at least 1, got {steps}")
        require(0.0 < strength <= 1.0, f"refine strength must be in (0, 1], got {strength}")
        conditions, inputs, combine = self._branches(encoded, k, guidance, image_guidance)
        conditions = [c.repeat(images_per_prompt) for c in conditions]
        batch = conditions[0].tokens.shape[0]
        source = None
        if model.reads_source:  # each distinct input encoded once (the image-only and full branches share the source)
            latents_of: dict[int, torch.Tensor] = {}
            for x in inputs:
                if id(x) not in latents_of:
                    latents_of[id(x)] = model.source_latents(None if x is None else as_pixels(x), batch // images_per_prompt, size)
            source = torch.cat([latents_of[id(x)].repeat_interleave(images_per_prompt, 0) for x in inputs]).float()
        init = None if init is None or (strength >= 1.0 and not model.reads_coarse) else as_pixels(init).to(model.device)
        if init is not None:
            require(init.shape[0] in (1, batch), f"the init image batch ({init.shape[0]}) does not match the batch being sampled ({batch})")
        coarse = model.coarse_latents(init, batch, size).float().repeat(len(conditions), 1, 1, 1) if model.reads_coarse else None
        extra = model.dit_inputs(source, coarse)
        factor = model.codec.downsample
        shape = (batch, model.codec.channels, size[0] // factor, size[1] // factor)
        generator = torch.Generator("cpu").manual_seed((int(seed) + k) % 2**64)  # any 64-bit seed, as ComfyUI draws them
        noise = randn_tensor(shape, generator=generator, device=model.device, dtype=torch.float32)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps, device=model.device)
        timesteps = scheduler.timesteps
        latents = noise
        if init is not None and strength < 1.0:  # the refinement
            start = steps - refined_steps(steps, strength)
            timesteps = timesteps[start:]
            scheduler.set_begin_index(start)
            init_latents = model.codec.encode(to_signed(resize(init, size))).float().expand(batch, -1, -1, -1)
            latents = scheduler.scale_noise(init_latents, timesteps[:1], noise)
        merged = ScaleCondition.cat(conditions)
        with model.dit.constant_condition():
            for i, t in enumerate(timesteps):
                velocity = model.dit(latents.repeat(len(conditions), 1, 1, 1), t / 1000.0, merged, extra).float()
                latents = scheduler.step(combine(list(velocity.chunk(len(conditions)))), t, latents, return_dict=False)[0]
                if callback is not None:
                    callback(k, i + 1, len(timesteps), latents)
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels in [0, 1] (also used for step previews)."""
        return to_unsigned(self.model.codec.decode(latents).float())

    @torch.no_grad()
    def sample(self, encoded: EncodedPrompt, seed: int, options: SamplingOptions | None = None, callback: StepCallback | None = None) -> PipelineOutput:
        """Every scale, coarse to fine (or Ming-style: every scale at full resolution)."""
        options = options or SamplingOptions()
        require(options.mode in ("cascade", "ming"), f"mode must be 'cascade' or 'ming', got {options.mode!r}")
        require(options.candidates >= 1, f"candidates must be at least 1, got {options.candidates}")
        require(encoded.num_scales == len(self.model.config.scales), "these conditions come from a model with a different number of scales; encode with this model")
        sizes = self.model.scale_sizes(options.height, options.width)
        if options.mode == "ming":
            sizes = [sizes[-1]] * len(sizes)
        out = PipelineOutput(prompts=encoded.prompts)
        per_prompt = options.images_per_prompt * options.candidates  # every candidate of every image, as rows of one batch
        for k, size in enumerate(sizes):
            previous = out.images[-1] if out.images and options.mode == "cascade" else None
            out.images.append(
                self.sample_scale(
                    encoded, k, size, seed,
                    steps=options.steps_for(k, len(sizes)), guidance=options.guidance, image_guidance=options.image_guidance,
                    init=previous, strength=options.refine_strength,
                    images_per_prompt=per_prompt, callback=callback,
                )
            )
        if options.candidates > 1:
            check = None if callback is None else functools.partial(callback, len(sizes))
            fit = prompt_fit(self.model, encoded, out.images, per_prompt, seed, callback=check)
            keep = best_candidates(fit, options.candidates).cpu()
            out.images = [images[keep] for images in out.images]
        return out

    def generate(self, prompts: str | Sequence[str], seed: int = 0, options: SamplingOptions | None = None, callback: StepCallback | None = None) -> PipelineOutput:
        """Text-to-image, every scale returned (the empty prompt is encoded when guidance or the self-check needs it)."""
        prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
        require(all(p.strip() for p in prompt_list), "the prompt is empty; describe the image to generate")
        options = options or SamplingOptions()
        return self.sample(self.encode(prompt_list, guidance=options.guidance != 1.0 or options.candidates > 1), seed, options, callback)

    def edit(self, images, instructions: str | Sequence[str], seed: int = 0, options: SamplingOptions | None = None, callback: StepCallback | None = None) -> PipelineOutput:
        """Instruction editing: the MLLM reads the image and the instruction; every scale returned.

        The output has the input image's size unless ``options`` sets height and width.
        """
        pixels = as_pixels(images)
        instruction_list = [instructions] * pixels.shape[0] if isinstance(instructions, str) else list(instructions)
        require(all(i.strip() for i in instruction_list), "the instruction is empty; say what to change, e.g. 'make the red circle blue'")
        options = options or SamplingOptions()
        if options.height is None and options.width is None:
            options = SamplingOptions(**{**options.__dict__, "height": pixels.shape[-2], "width": pixels.shape[-1]})
        return self.sample(self.encode(instruction_list, pixels), seed, options, callback)

    def describe(self, images, question: str = "describe the image", max_new_tokens: int = 32) -> list[str]:
        """The frozen MLLM's answer about each image (understanding is untouched by training)."""
        pixels = as_pixels(images).to(self.model.device)
        require(bool(question.strip()), "the question is empty; ask something about the image")
        return self.model.mllm.describe(pixels, [question] * pixels.shape[0], max_new_tokens=max_new_tokens)
