"""The diffusion transformer of Eq. 5: one set of weights paints every scale.

A thin wrapper over diffusers' own transformer classes (``SD3Transformer2DModel`` and
``SanaTransformer2DModel``) that gives them one calling convention: the flow-matching velocity of
latents at noise level sigma in [0, 1] (diffusers' timestep = 1000 * sigma), conditioned on one scale's
connector output. Scale k runs at its own resolution (the latents' spatial size); nothing else tells
the DiT which scale it paints. It also exposes the token output of any block, for the multi-scale
representation alignment of section 3.2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .connector import ScaleCondition
from .errors import require


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

    def forward(self, latents: torch.Tensor, sigma: torch.Tensor, condition: ScaleCondition) -> torch.Tensor:
        """Predicted velocity (noise - data) at noise level ``sigma`` ([B] or scalar, in [0, 1]).

        Inputs are cast to the transformer's dtype and the output back to the latents' dtype, so a bf16
        DiT can be driven by float32 scheduler state.
        """
        dtype = self.transformer.dtype
        timestep = (sigma * 1000.0).to(dtype).expand(latents.shape[0])
        kwargs = {"hidden_states": latents.to(dtype), "encoder_hidden_states": condition.tokens.to(dtype), "timestep": timestep, "return_dict": False}
        if self.kind == "sd3":
            kwargs["pooled_projections"] = condition.pooled.to(dtype)
        return self.transformer(**kwargs)[0].to(latents.dtype)

    def resolve_block(self, index: int | None) -> int:
        """A block index, negative from the end, None = the middle block (Ming-Lite-Uni aligns block 10 of 20)."""
        count = len(self.blocks)
        index = count // 2 if index is None else index
        index = index + count if index < 0 else index
        require(0 <= index < count, f"alignment block {index} does not exist; this DiT has {count} blocks (0..{count - 1})")
        return index

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
