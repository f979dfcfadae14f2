"""The diffusion transformer of Eq. 5: one set of weights paints every scale.

A thin wrapper over diffusers' own transformer classes (``SD3Transformer2DModel`` and
``SanaTransformer2DModel``) that gives them one calling convention: the flow-matching velocity of
latents at noise level sigma in [0, 1] (diffusers' timestep = 1000 * sigma), conditioned on one scale's
connector output. Scale k runs at its own resolution (the latents' spatial size); nothing else tells
the DiT which scale it paints. It also exposes the token output of any block, for the multi-scale
representation alignment of section 3.2, and caches the caption path while a condition stays fixed
(:meth:`DiffusionTransformer.constant_condition`, used by every denoising loop of the pipeline).

Project extensions (not in the paper): a DiT may also read the latents of an input image or of the previous
scale's image, concatenated to its noisy latents along the channels as InstructPix2Pix does
(:meth:`DiffusionTransformer.add_input_channels`, ``HieraQuery.read_source`` and ``HieraQuery.read_coarse``);
see docs/design.md, "Editing that keeps the picture" and "Finer scales that read the coarser image". A trained SANA DiT may also
grow deeper without changing what it paints (:meth:`DiffusionTransformer.deepen`, ``HieraQuery.deepen_dit``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from .connector import ScaleCondition
from .errors import require

SOFTMAX_OPTION = "softmax_self_attention"
"""The DiT spec's option listing the blocks given softmax self-attention (:meth:`DiffusionTransformer.use_softmax_self_attention`)."""


class DiffusionTransformer(nn.Module):
    """DiT(g_theta(H)) of Eq. 5 over diffusers' SD3 or SANA transformer."""

    def __init__(self, transformer: nn.Module, kind: str) -> None:
        super().__init__()
        require(kind in ("sd3", "sana"), f"unknown DiT kind {kind!r}; choose sd3 or sana")
        self.kind = kind
        self.transformer = transformer

    @property
    def config(self):
        return self.transformer.config

    @property
    def caption_dim(self) -> int:
        return self.config.joint_attention_dim if self.kind == "sd3" else self.config.caption_channels

    @property
    def pooled_dim(self) -> int | None:
        return self.config.pooled_projection_dim if self.kind == "sd3" else None

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def inner_dim(self) -> int:
        return self.config.num_attention_heads * self.config.attention_head_dim

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.transformer_blocks

    def max_latent_size(self) -> int | None:
        """The largest latent side the DiT's positional table covers (SD3), or None (no limit)."""
        if self.kind == "sd3" and self.config.pos_embed_max_size:
            return self.config.pos_embed_max_size * self.patch_size
        return None

    @property
    def out_channels(self) -> int:
        return self.config.out_channels or self.config.in_channels

    def _patch_embedding(self) -> nn.Module:
        return self.transformer.pos_embed if self.kind == "sd3" else self.transformer.patch_embed

    def patch_projection(self) -> nn.Conv2d:
        """The convolution that turns latent patches into tokens (the only layer that sees the input channels)."""
        return self._patch_embedding().proj

    @torch.no_grad()
    def add_input_channels(self, extra: int, at: int | None = None) -> None:
        """Widen the input by ``extra`` channels whose weights start at zero, so the DiT computes exactly what it
        did until training teaches it to use them (InstructPix2Pix, Brooks et al. 2023, section 3.4). They go at
        channel ``at`` (default: after the last). The output keeps its channels; the diffusers config records
        both, so the widened DiT saves and loads."""
        require(extra > 0, f"extra input channels must be positive, got {extra}")
        old = self.patch_projection()
        at = old.in_channels if at is None else at
        require(0 <= at <= old.in_channels, f"new input channels go at 0..{old.in_channels}, got {at}")
        new = type(old)(old.in_channels + extra, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None).to(old.weight)
        new.weight.zero_()
        new.weight[:, :at] = old.weight[:, :at]
        new.weight[:, at + extra :] = old.weight[:, at:]
        if old.bias is not None:
            new.bias.copy_(old.bias)
        self._patch_embedding().proj = new
        self.transformer.register_to_config(in_channels=old.in_channels + extra, out_channels=self.out_channels)

    def softmax_self_attention_blocks(self) -> list[int]:
        """The blocks whose self-attention is softmax attention (:meth:`use_softmax_self_attention`)."""
        return [i for i, block in enumerate(self.blocks) if isinstance(block.attn1.processor, AttnProcessor2_0)]

    def use_softmax_self_attention(self, indices: list[int]) -> None:
        """Give these SANA blocks softmax self-attention (torch's SDPA, diffusers' ``AttnProcessor2_0``) instead of SANA's
        ReLU linear attention, with the same projections (project extension, docs/design.md, "A deeper DiT from a
        trained one"). A processor is not part of the diffusers config: the model config records the indices
        (``dit.options[SOFTMAX_OPTION]``) and ``build_dit`` applies them."""
        require(self.kind == "sana", f"softmax self-attention blocks are a SANA option; this DiT is {self.kind} (its attention is softmax already)")
        require(all(0 <= i < len(self.blocks) for i in indices), f"softmax self-attention blocks {indices} must be in 0..{len(self.blocks) - 1}")
        for i in indices:
            self.blocks[i].attn1.set_processor(AttnProcessor2_0())

    @torch.no_grad()
    def deepen(self, num_layers: int, softmax: bool = False) -> None:
        """Grow a SANA DiT to ``num_layers`` blocks without changing what it computes (project extension, docs/design.md,
        "A deeper DiT from a trained one").

        Each new block is a copy of the block before it (progressive stacking, Gong et al. 2019) whose three residual
        branches (the self-attention, cross-attention and Mix-FFN output projections) start at zero, so it adds nothing
        until training moves them, as ``add_input_channels`` does for the input. New blocks are spread evenly: old
        block i becomes block :func:`grown_index` and its copies follow it. ``softmax`` gives the new blocks softmax
        self-attention (:meth:`use_softmax_self_attention`). The diffusers config records the depth, so the deeper DiT
        saves and loads.
        """
        require(self.kind == "sana", f"deepening is implemented for SANA DiTs (whose blocks have ungated residual branches to zero); this one is {self.kind}")
        old = list(self.blocks)
        require(num_layers > len(old), f"the DiT has {len(old)} blocks; give more than that to deepen it (got {num_layers})")
        grown: list[nn.Module] = []
        for i, block in enumerate(old):
            grown.append(block)
            for _ in range(grown_index(i + 1, len(old), num_layers) - grown_index(i, len(old), num_layers) - 1):
                twin = copy.deepcopy(block)
                for projection in (twin.attn1.to_out[0], twin.attn2.to_out[0], twin.ff.conv_point):
                    projection.weight.zero_()
                    if projection.bias is not None:
                        projection.bias.zero_()
                if softmax:
                    twin.attn1.set_processor(AttnProcessor2_0())
                grown.append(twin)
        self.transformer.transformer_blocks = nn.ModuleList(grown)
        self.transformer.register_to_config(num_layers=num_layers)

    def forward(self, latents: torch.Tensor, sigma: torch.Tensor, condition: ScaleCondition, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted velocity (noise - data) at noise level ``sigma`` ([B] or scalar, in [0, 1]).

        ``extra``: latents read beside the noisy ones (an input image's, the previous scale's), concatenated along the
        channels (a DiT widened by :meth:`add_input_channels`). Inputs are cast to the transformer's dtype and the output back to the
        latents' dtype, so a bf16 DiT can be driven by float32 scheduler state.
        """
        dtype = self.transformer.dtype
        timestep = (sigma * 1000.0).to(dtype).expand(latents.shape[0])
        hidden = latents if extra is None else torch.cat([latents, extra.to(latents.dtype)], dim=1)
        kwargs = {"hidden_states": hidden.to(dtype), "encoder_hidden_states": condition.tokens.to(dtype), "timestep": timestep, "return_dict": False}
        if self.kind == "sd3":
            kwargs["pooled_projections"] = condition.pooled.to(dtype)
        return self.transformer(**kwargs)[0].to(latents.dtype)

    def caption_path(self) -> list[nn.Module]:
        """The modules whose output depends on the condition alone, not on the latents or the timestep.

        SANA: the caption projection and norm and every block's cross-attention key and value projections.
        SD3: the context embedder only (its joint blocks modulate the caption tokens by the timestep).
        """
        if self.kind == "sd3":
            return [self.transformer.context_embedder]
        cross = [block.attn2 for block in self.blocks if block.attn2 is not None]
        return [self.transformer.caption_projection, self.transformer.caption_norm, *(m for attn in cross for m in (attn.to_k, attn.to_v))]

    @contextmanager
    def constant_condition(self) -> Iterator[None]:
        """Inside, each :meth:`caption_path` module computes its output once per input and reuses it.

        A denoising loop calls the DiT with the same condition at every step (section 2 of BENCHMARKS.md:
        4% of an image at the medium size), so the caption tokens need projecting only once. An input is
        recognised by its storage, shape, strides, dtype and version counter; the memo holds the input, so
        its storage cannot be reused by another tensor while the memo lives (inference tensors keep no version
        counter; nothing in the loop writes into the condition in place). Calls that record gradients are
        never memoised.
        """
        modules = self.caption_path()
        own = [module.__dict__.get("forward") for module in modules]  # a forward someone else set on the instance (e.g. accelerate's hooks)
        for module in modules:
            module.forward = _memoised(module.forward)
        try:
            yield
        finally:
            for module, forward in zip(modules, own):
                if forward is None:
                    del module.forward  # back to the class's forward
                else:
                    module.forward = forward

    def resolve_block(self, index: int | None) -> int:
        """A block index of this DiT (:func:`resolve_block_index`)."""
        return resolve_block_index(index, len(self.blocks))

    @contextmanager
    def capture_block(self, index: int | None) -> Iterator[list[torch.Tensor]]:
        """Record the image-token output [B, N, inner_dim] of one block for every forward pass inside."""
        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, _inputs: tuple, output) -> None:
            # SD3's joint blocks return (encoder_hidden_states, hidden_states); SANA's return hidden_states.
            captured.append(output[1] if isinstance(output, tuple) else output)

        handle = self.blocks[self.resolve_block(index)].register_forward_hook(hook)
        try:
            yield captured
        finally:
            handle.remove()


def resolve_block_index(index: int | None, count: int) -> int:
    """A block index of a DiT of ``count`` blocks, negative from the end, None = the middle block (Ming-Lite-Uni aligns
    block 10 of 20)."""
    index = count // 2 if index is None else index
    index = index + count if index < 0 else index
    require(0 <= index < count, f"alignment block {index} does not exist; this DiT has {count} blocks (0..{count - 1})")
    return index


def grown_index(index: int, blocks: int, num_layers: int) -> int:
    """Where block ``index`` of a DiT of ``blocks`` blocks sits after :meth:`DiffusionTransformer.deepen` to ``num_layers``."""
    return index * num_layers // blocks


def _memoised(forward):
    """``forward`` of one tensor argument, returning the previous output when called again with the same input."""
    memo: dict[str, object] = {}

    def cached(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return forward(x)
        key = (x.data_ptr(), x.shape, x.stride(), x.dtype, None if x.is_inference() else x._version)
        if memo.get("key") != key:
            memo.update(key=key, input=x, output=forward(x))
        return memo["output"]

    return cached
