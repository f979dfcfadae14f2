"""The whole HieraQuery model (sections 3.1-3.2) and its training objective.

    Z_input = queries()                                   Eq. 1-3   (queries.py)
    H       = f_theta(prompt, images, Z_input)            Eq. 4     (mllm.py, frozen)
    c_k     = g_theta(H_{s_k})                            Eq. 4-5   (connector.py)
    X_{s_k} = DiT(c_k) at scale k's resolution            Eq. 5     (dit.py, one set of weights)

Training (section 4.2) sums a rectified-flow loss over the scales, each scale's target being the image
at that scale's resolution, plus the weighted multi-scale representation alignment loss (section 3.2).
Conditions are dropped for classifier-free guidance as MetaQuery does: the prompt becomes empty with
probability ``prompt_dropout`` and, where there are input images (editing, reconstruction), they become
black with probability ``image_dropout`` (optionally a dropped prompt keeps the input image as the target:
``HieraQueryConfig.dropped_prompt_keeps_image``).

Project extensions (not in the paper, off unless the DiT is widened): the DiT may also read the input image's
latents at each scale (:meth:`HieraQuery.read_source`, InstructPix2Pix's concatenation), so an edit can keep
everything it does not change (docs/design.md, "Editing that keeps the picture"), and the previous scale's image
(:meth:`HieraQuery.read_coarse`, cascaded diffusion's low-resolution conditioning), so a finer scale paints from
noise where the coarser one put things (docs/design.md, "Finer scales that read the coarser image").
The DiT's input channels are, in order: the noisy latents, the input image's, the previous scale's.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from .alignment import RepresentationAlignment
from .backbones import build_codec, build_connector, build_dit, build_mllm
from .config import HieraQueryConfig
from .connector import Connector, ScaleCondition
from .dit import SOFTMAX_OPTION, DiffusionTransformer, grown_index, resolve_block_index
from .errors import require
from .flow_matching import flow_matching_loss, noisy_latents, sample_sigmas
from .images import resize, to_signed
from .latent_codec import LatentCodec
from .mllm import FrozenMLLM, ImageList
from .plan import planned_prompts
from .queries import MultiScaleQueries


@dataclass
class TrainingBatch:
    """Prompts (or instructions), target images [B, 3, H, W] in [0, 1], optional input images per sample."""

    prompts: list[str]
    targets: torch.Tensor
    images: ImageList | None = None


@dataclass
class LossOutput:
    total: torch.Tensor
    flow: list[torch.Tensor]
    alignment: list[torch.Tensor]


def deepened(config: HieraQueryConfig, blocks: int, num_layers: int) -> HieraQueryConfig:
    """``config`` after its DiT of ``blocks`` blocks grew to ``num_layers`` (:meth:`HieraQuery.deepen_dit`): the alignment of
    section 3.2 reads the block it read, at its new index, and an inline DiT config records the depth."""
    block = grown_index(resolve_block_index(config.alignment.block, blocks), blocks, num_layers)
    dit = config.dit if config.dit.config is None else dataclasses.replace(config.dit, config={**config.dit.config, "num_layers": num_layers})
    return dataclasses.replace(config, dit=dit, alignment=dataclasses.replace(config.alignment, block=block))


class HieraQuery(nn.Module):
    """Multi-scale queries + frozen MLLM + connector + shared DiT (+ latent codec, + alignment projector)."""

    def __init__(self, config: HieraQueryConfig, mllm: FrozenMLLM, connector: Connector, dit: DiffusionTransformer, codec: LatentCodec) -> None:
        super().__init__()
        self.config = config
        self.mllm = mllm
        self.queries = MultiScaleQueries(config.scales, mllm.hidden_size)
        self.connector = connector
        self.dit = dit
        self.codec = codec
        self.source_dir: Path | None = None  # where relative backbone paths point (the checkpoint folder); set by from_config
        own = codec.channels * (1 + self.reads_coarse)
        require(dit.in_channels in (own, own + codec.channels) and dit.out_channels == codec.channels,
                f"the DiT takes {dit.in_channels} input and gives {dit.out_channels} output channels but the {codec.kind} codec has {codec.channels}"
                f"{' and coarse_input_noise is set' if self.reads_coarse else ''}; set dit.config in_channels to {own} "
                f"(or {own + codec.channels} to read the input image's latents too) and out_channels to {codec.channels}")
        self.aligner = None
        if config.alignment.weight > 0:
            require(mllm.supports_images, "representation alignment needs the MLLM's vision encoder; set alignment.weight to 0 for a text-only MLLM")
            feature_dim = mllm.model.config.vision_config.out_hidden_size
            self.aligner = RepresentationAlignment(dit.inner_dim, feature_dim, config.alignment.projector_dim)
            dit.resolve_block(config.alignment.block)

    @classmethod
    def from_config(cls, config: HieraQueryConfig, base_dir: Path | None = None) -> "HieraQuery":
        """Build every part from the config (backbones from local folders or random init)."""
        mllm = build_mllm(config.mllm, base_dir)
        dit = build_dit(config.dit, base_dir)
        connector = build_connector(config.connector, mllm.hidden_size, dit, base_dir)
        model = cls(config, mllm, connector, dit, build_codec(config.codec, base_dir))
        model.source_dir = base_dir
        return model

    def replace_mllm(self, folder: str | Path) -> None:
        """Swap the frozen MLLM (Eq. 4) for the one in ``folder``, keeping every trained part.

        For an MLLM that only differs where the trained parts do not depend on it, e.g. a ShapesWorld MLLM whose
        vision tower was retrained with the language model untouched (``train.shapesworld_mllm --train vision``):
        text-to-image conditions stay the same and the next stage learns the new image features. Its hidden
        size and vision feature size must match the current one's (the queries, connector and alignment
        projector are sized by them)."""
        mllm = build_mllm(dataclasses.replace(self.config.mllm, path=str(folder), config=None))
        sizes = [(m.hidden_size, m.model.config.vision_config.out_hidden_size if m.supports_images else None) for m in (self.mllm, mllm)]
        require(sizes[0] == sizes[1], f"the MLLM in {folder} has (hidden, vision feature) sizes {sizes[1]}, this model's has {sizes[0]}; "
                "only an MLLM of the same sizes can replace it (train a new model from a config for another one)")
        self.mllm = mllm.to(self.device)
        self.config = dataclasses.replace(self.config, mllm=dataclasses.replace(self.config.mllm, path=str(Path(folder).absolute()), config=None))

    @property
    def reads_source(self) -> bool:
        """Whether the DiT also reads the input image's latents (codec channels beyond its own and the coarse ones)."""
        return self.dit.in_channels == self.codec.channels * (2 + self.reads_coarse)

    @property
    def reads_coarse(self) -> bool:
        """Whether the DiT also reads the previous scale's image (``config.coarse_input_noise`` is set)."""
        return self.config.coarse_input_noise is not None

    def read_source(self) -> None:
        """Let the DiT read the input image's latents from now on: its input widens by the codec's channels with
        zero weights (after the noisy latents), so the model paints exactly as before until a stage with input
        images trains them. Does nothing when it already reads them."""
        if not self.reads_source:
            self.dit.add_input_channels(self.codec.channels, at=self.codec.channels)
            self._record_in_channels()

    def read_coarse(self, noise: float) -> None:
        """Let the DiT read the previous scale's image from now on (project extension, docs/design.md, "Finer scales that
        read the coarser image"): its input widens by the codec's channels with zero weights (the last channels), so
        the model paints exactly as before until training teaches it to use them. In training, scale k reads the target
        at scale k-1's size, upsampled, its latents noised to a level drawn uniformly in [0, ``noise``] (the conditioning
        augmentation of cascaded diffusion, Ho et al. 2022, section 3.2); the coarsest scale reads zeros. A model that
        already reads it only takes the new ``noise``."""
        require(0.0 <= noise < 1.0, f"the coarse input's noise level must be in [0, 1), got {noise}")
        if not self.reads_coarse:
            self.dit.add_input_channels(self.codec.channels)
            self._record_in_channels()
        self.config = dataclasses.replace(self.config, coarse_input_noise=float(noise))

    def _record_in_channels(self) -> None:
        """Write a widened DiT's channels into an inline DiT config (a new config, as replace_mllm makes: the caller's
        stays as it was); a DiT from a folder records them in its own diffusers config."""
        if self.config.dit.config is not None:
            widened = {**self.config.dit.config, "in_channels": self.dit.in_channels, "out_channels": self.codec.channels}
            self.config = dataclasses.replace(self.config, dit=dataclasses.replace(self.config.dit, config=widened))

    def deepen_dit(self, num_layers: int, softmax: bool = False) -> None:
        """Grow the DiT to ``num_layers`` blocks, painting exactly as before (:meth:`DiffusionTransformer.deepen`; ``softmax``:
        the new blocks' self-attention is softmax attention). The alignment of section 3.2 keeps reading the block it
        read (now at its grown index); the config records it and the softmax blocks (``dit.options``)."""
        config = deepened(self.config, len(self.dit.blocks), num_layers)
        self.dit.deepen(num_layers, softmax)
        options = {**config.dit.options, SOFTMAX_OPTION: self.dit.softmax_self_attention_blocks()}
        if not options[SOFTMAX_OPTION]:
            del options[SOFTMAX_OPTION]
        self.config = dataclasses.replace(config, dit=dataclasses.replace(config.dit, options=options))

    def source_latents(self, images: ImageList | torch.Tensor | None, batch: int, size: tuple[int, int]) -> torch.Tensor:
        """The latents the DiT reads beside its own at a scale of ``size`` pixels: each sample's first input image,
        or zeros for a sample without one (text-to-image). ``images``: an ImageList, or pixels [B, 3, H, W]."""
        factor = self.codec.downsample
        out = torch.zeros(batch, self.codec.channels, size[0] // factor, size[1] // factor, device=self.device, dtype=self.dtype)
        if images is None:
            return out
        rows = list(range(batch)) if isinstance(images, torch.Tensor) else [i for i, imgs in enumerate(images) if len(imgs)]
        if rows:
            pixels = images if isinstance(images, torch.Tensor) else torch.stack([resize(images[i][0][None], size)[0] for i in rows])
            out[rows] = self.codec.encode(to_signed(resize(pixels.to(self.device), size))).to(self.dtype)
        return out

    def coarse_latents(self, previous: torch.Tensor | None, batch: int, size: tuple[int, int],
                       generator: torch.Generator | None = None, augment: bool = False) -> torch.Tensor:
        """The latents the DiT reads as the previous scale's image at a scale of ``size`` pixels (:meth:`read_coarse`):
        ``previous`` (pixels [B or 1, 3, h, w] in [0, 1], any size) upsampled to ``size``, or zeros at the coarsest
        scale (``previous`` None). ``augment`` (training) noises them to a level drawn uniformly in [0, ``coarse_input_noise``]."""
        if previous is None:
            return self.source_latents(None, batch, size)
        latents = self.source_latents(previous.expand(batch, -1, -1, -1), batch, size)
        if not augment or not self.config.coarse_input_noise:
            return latents
        levels = torch.rand(batch, generator=generator).to(latents.device) * self.config.coarse_input_noise
        return noisy_latents(latents, randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype), levels)

    def dit_inputs(self, source: torch.Tensor | None, coarse: torch.Tensor | None) -> torch.Tensor | None:
        """The latents the DiT reads beside its noisy ones, in channel order (input image, previous scale), or None."""
        extra = [x for x in (source, coarse) if x is not None]
        return torch.cat(extra, dim=1) if extra else None

    @property
    def device(self) -> torch.device:
        return self.queries.start.device

    @property
    def dtype(self) -> torch.dtype:
        return self.queries.start.dtype

    def size_multiple(self) -> int:
        """Every scale's pixel size must be a multiple of this (VAE downsampling x DiT patch size)."""
        return self.codec.downsample * self.dit.patch_size

    def scale_sizes(self, height: int | None = None, width: int | None = None) -> list[tuple[int, int]]:
        """The pixel size (h, w) each scale paints at for a target of height x width (default: image_size)."""
        height = height or self.config.image_size
        width = width or self.config.image_size
        multiple = self.size_multiple()
        sizes = []
        for scale in self.config.scales:
            h, w = round(height * scale.resolution), round(width * scale.resolution)
            require(
                h % multiple == 0 and w % multiple == 0 and h > 0 and w > 0,
                f"a {height}x{width} target gives scale {scale.name} a {h}x{w} image, which is not a multiple of {multiple} "
                f"(VAE factor {self.codec.downsample} x DiT patch {self.dit.patch_size}); choose height and width that are multiples of "
                f"{int(multiple / min(s.resolution for s in self.config.scales))}",
            )
            limit = self.dit.max_latent_size()
            if limit is not None:
                require(max(h, w) // self.codec.downsample <= limit, f"{h}x{w} is larger than this DiT's positional table allows ({limit * self.codec.downsample} px); choose a smaller size")
            sizes.append((h, w))
        return sizes

    def scale_size(self, k: int, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """Scale k's pixel size for a target of height x width; one clear error if scale k does not exist."""
        names = ", ".join(f"{i} = {s.name}" for i, s in enumerate(self.config.scales))
        require(0 <= k < len(self.config.scales), f"scale {k} does not exist; this checkpoint has scales {names}")
        return self.scale_sizes(height, width)[k]

    def encode(self, prompts: list[str], images: ImageList | None = None) -> list[torch.Tensor]:
        """Eq. 3-4: the MLLM's hidden states at each scale's query positions, [B, N_k, d] per scale; with
        ``config.prompt_tokens`` = P, the states of the prompt's last P positions before each scale's, [B, P + N_k, d];
        with ``config.plan``, of the planned prompts (:meth:`plan`)."""
        return self.encode_read(self.plan(prompts, images), images)

    def encode_read(self, prompts: list[str], images: ImageList | None = None) -> list[torch.Tensor]:
        """:meth:`encode` of prompts exactly as given, already planned (the pipeline plans once and keeps the result)."""
        require(len(prompts) > 0, "no prompt was given")
        count = self.config.prompt_tokens
        hidden = self.mllm(self.queries(), prompts, images, count).to(self.dtype)
        return [torch.cat([hidden[:, :count], states], dim=1) for states in self.queries.split(hidden[:, count:])]

    def plan(self, prompts: list[str], images: ImageList | None = None) -> list[str]:
        """The prompts as :meth:`encode` reads them: with ``config.plan``, each one without an input image followed by
        the MLLM's answers to the questions it asks (:mod:`.plan`); otherwise unchanged."""
        if not self.config.plan:
            return list(prompts)
        asks = None if images is None else [not imgs for imgs in images]
        return planned_prompts(self.mllm, prompts, self.config.plan, asks)

    def condition(self, states: list[torch.Tensor]) -> list[ScaleCondition]:
        """Eq. 5's g_theta(H): per-scale DiT conditions."""
        return self.connector(states)

    def drop_conditions(self, batch: TrainingBatch, generator: torch.Generator | None) -> TrainingBatch:
        """Classifier-free-guidance dropout: empty prompts and black input images (MetaQuery's recipe).

        With ``config.dropped_prompt_keeps_image``, a sample whose prompt is dropped and whose input image is
        kept gets that image as its target: "no instruction" then means "change nothing", stage 2's
        reconstruction, and text guidance pushes along exactly the instructed change."""
        n = len(batch.prompts)
        drop_prompt = torch.rand(n, generator=generator) < self.config.prompt_dropout
        drop_image = torch.rand(n, generator=generator) < self.config.image_dropout
        prompts = ["" if d else p for p, d in zip(batch.prompts, drop_prompt.tolist())]
        if batch.images is None:
            return TrainingBatch(prompts, batch.targets, None)
        images = [[torch.zeros_like(img) for img in imgs] if d else list(imgs) for imgs, d in zip(batch.images, drop_image.tolist())]
        targets = batch.targets
        if self.config.dropped_prompt_keeps_image:
            keep = [i for i, imgs in enumerate(batch.images) if len(imgs) and drop_prompt[i] and not drop_image[i]]
            if keep:
                targets = targets.clone()
                targets[keep] = torch.stack([resize(batch.images[i][0][None], tuple(targets.shape[-2:]))[0] for i in keep]).to(targets)
        return TrainingBatch(prompts, targets, images)

    def training_loss(self, batch: TrainingBatch, generator: torch.Generator | None = None, sigma: float | None = None, dropout: bool = True,
                      align: bool = True) -> LossOutput:
        """Sum over scales of the flow-matching loss, plus alignment.weight x the alignment losses.

        ``sigma`` fixes every sample's noise level (instead of drawing it) and ``dropout=False`` keeps every
        prompt and image: with a seeded ``generator`` that is a deterministic held-out loss (train/evaluate.py).
        ``align=False`` leaves out section 3.2's alignment term and its cost (the vision features of the targets),
        so one model can be timed with and without it (bench/training.py).
        """
        if dropout:
            batch = self.drop_conditions(batch, generator)
        targets = batch.targets.to(self.device)
        conditions = self.condition(self.encode(list(batch.prompts), batch.images))
        features = self.mllm.vision_features(targets) if self.aligner is not None and align else None
        return self.scale_losses(conditions, targets, generator, sigma, features, batch.images)

    def scale_losses(self, conditions: list[ScaleCondition], targets: torch.Tensor, generator: torch.Generator | None = None,
                     sigma: float | None = None, features: torch.Tensor | None = None, images: ImageList | None = None) -> LossOutput:
        """Eq. 5's flow-matching loss of every scale for given conditions (and, with the MLLM's vision
        ``features`` of the targets, section 3.2's alignment losses): the part of :meth:`training_loss` after
        encoding, so a held-out loss can reuse one encoding for several noise levels. ``images``: the input
        images, which a DiT that :attr:`reads_source` also reads; a DiT that :attr:`reads_coarse` reads the targets
        at the previous scale's size."""
        flow, align = [], []
        aligned = self.aligner is not None and features is not None
        sizes = self.scale_sizes(*targets.shape[-2:])
        for k, (condition, size) in enumerate(zip(conditions, sizes)):
            x0 = self.codec.encode(to_signed(resize(targets, size))).to(self.dtype)
            noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            if sigma is None:
                sigmas = sample_sigmas(x0.shape[0], self.config.timestep_sampling, x0.device, generator, self.config.timestep_logit_mean, self.config.timestep_logit_std)
            else:
                sigmas = torch.full((x0.shape[0],), sigma, device=x0.device)
            source = self.source_latents(images, x0.shape[0], size) if self.reads_source else None
            coarse = self.coarse_latents(resize(targets, sizes[k - 1]) if k else None, x0.shape[0], size, generator, augment=True) if self.reads_coarse else None
            capture = self.dit.capture_block(self.config.alignment.block) if aligned else nullcontext([])
            with capture as captured:
                velocity = self.dit(noisy_latents(x0, noise, sigmas), sigmas, condition, self.dit_inputs(source, coarse))
            flow.append(flow_matching_loss(velocity, x0, noise))
            if aligned:
                grid = (x0.shape[-2] // self.dit.patch_size, x0.shape[-1] // self.dit.patch_size)
                align.append(self.aligner(captured[0], grid, features))
        total = torch.stack(flow).sum()
        if align:
            total = total + self.config.alignment.weight * torch.stack(align).sum()
        return LossOutput(total, flow, align)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but the frozen MLLM and VAE (section 4.2)."""
        return [p for p in self.parameters() if p.requires_grad]
