"""The space the DiT paints in: a diffusers VAE's latents, or pixels for small domains.

``AutoencoderKL`` (SD3) and ``AutoencoderDC`` (SANA) are used through diffusers with their own
``scaling_factor`` / ``shift_factor``; the pixel codec is the identity on images in [-1, 1]. The VAE is
frozen (as in MetaQuery): only the generator learns.
"""

from __future__ import annotations

import torch
from torch import nn


class LatentCodec(nn.Module):
    """Images in [-1, 1] <-> the DiT's latents. ``kind`` is pixel, autoencoder_kl or autoencoder_dc."""

    def __init__(self, kind: str, vae: nn.Module | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.vae = vae.requires_grad_(False).eval() if vae is not None else None

    def train(self, mode: bool = True) -> "LatentCodec":
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()
        return self

    @property
    def channels(self) -> int:
        return 3 if self.vae is None else self.vae.config.latent_channels

    @property
    def downsample(self) -> int:
        """Pixels per latent cell along each side."""
        if self.vae is None:
            return 1
        if self.kind == "autoencoder_dc":
            return 2 ** (len(self.vae.config.encoder_block_out_channels) - 1)
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _scale_shift(self) -> tuple[float, float]:
        cfg = self.vae.config
        return float(getattr(cfg, "scaling_factor", 1.0) or 1.0), float(getattr(cfg, "shift_factor", 0.0) or 0.0)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> latents [B, C, H / f, W / f]."""
        if self.vae is None:
            return images
        images = images.to(self.vae.dtype)
        if self.kind == "autoencoder_dc":
            latents = self.vae.encode(images).latent
        else:
            latents = self.vae.encode(images).latent_dist.mode()
        scale, shift = self._scale_shift()
        return (latents - shift) * scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images [B, 3, H, W] in [-1, 1] (clamped)."""
        if self.vae is None:
            return latents.clamp(-1, 1)
        scale, shift = self._scale_shift()
        images = self.vae.decode((latents / scale + shift).to(self.vae.dtype)).sample
        return images.float().clamp(-1, 1)
