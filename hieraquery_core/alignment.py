"""Multi-scale representation alignment (section 3.2).

As in REPA (Yu et al., 2024a), the hidden states of an intermediate DiT block are projected by a small
MLP and pulled towards semantic features of the target image by a negative cosine similarity. The
targets are the MLLM's own vision-encoder features; because the encoder's token grid and the DiT's
token grid differ (and differ per scale), the features are interpolated at the feature level
to each scale's DiT token grid before the loss, exactly as section 3.2 describes: bilinearly where the
DiT grid is finer, by area averaging where it is coarser (so no feature is skipped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class RepresentationAlignment(nn.Module):
    """Projector MLP h_phi and the per-scale alignment loss -cos(h_phi(dit_tokens), interp(features))."""

    def __init__(self, dit_dim: int, feature_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.projector = nn.Sequential(
            nn.Linear(dit_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, feature_dim)
        )

    @staticmethod
    def interpolate_features(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Vision features [B, h, w, D] resampled (area when shrinking, bilinear when growing) to a DiT token grid: [B, grid_h * grid_w, D]."""
        maps = rearrange(features.float(), "b h w d -> b d h w")
        if grid[0] <= maps.shape[-2] and grid[1] <= maps.shape[-1]:
            maps = F.interpolate(maps, size=grid, mode="area")
        else:
            maps = F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)
        return rearrange(maps, "b d h w -> b (h w) d")

    def forward(self, dit_tokens: torch.Tensor, grid: tuple[int, int], features: torch.Tensor) -> torch.Tensor:
        """Mean negative cosine similarity over the tokens of one scale."""
        target = self.interpolate_features(features, grid).to(dit_tokens.device)
        predicted = self.projector(dit_tokens.float())
        return -F.cosine_similarity(predicted, target, dim=-1).mean()
