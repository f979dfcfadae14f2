"""Multi-scale learnable queries (section 3.1, Eq. 1-3).

For each scale s_k there is a learnable query set Q_{s_k} (Eq. 1), learnable START_{s_k} and END_{s_k}
boundary tokens (Eq. 2) and a positional grid encoding P_{s_k} added to the queries (Eq. 3). The
sequence Z_input = Concat(Input_{s_1}, ..., Input_{s_K}) + Concat(P_{s_1}, ..., P_{s_K}) is appended to
the prompt and fed through the frozen MLLM (Eq. 4).

Choice (the paper leaves it open): P_{s_k} is the 2-D sine-cosine grid encoding of diffusers
(``get_2d_sincos_pos_embed``) over the scale's (rows, cols) grid, multiplied by a learnable per-scale
gain that starts at the queries' initial standard deviation, so the encoding neither swamps nor
vanishes beside the MLLM's embeddings. START/END tokens get no grid encoding (they are not grid
cells). A single scale (MetaQuery-style) is this same module with one entry in ``scales``.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from torch import nn

from .config import ScaleSpec


def grid_encoding(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """The fixed 2-D sine-cosine encoding of a (rows, cols) grid, raster order: [rows * cols, dim]."""
    rows, cols = grid
    # diffusers takes grid_size as (height, width) and a base_size for its interpolation scale.
    enc = get_2d_sincos_pos_embed(dim, (rows, cols), base_size=max(rows, cols), output_type="pt")
    return enc.float().reshape(rows * cols, dim)


class MultiScaleQueries(nn.Module):
    """Q, START, END and P for every scale; ``forward`` returns Z_input of Eq. 3."""

    def __init__(self, scales: list[ScaleSpec], dim: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.scales = list(scales)
        self.dim = dim
        self.queries = nn.ParameterList(nn.Parameter(torch.randn(s.num_queries, dim) * init_std) for s in scales)
        self.start = nn.Parameter(torch.randn(len(scales), dim) * init_std)
        self.end = nn.Parameter(torch.randn(len(scales), dim) * init_std)
        self.grid_gain = nn.Parameter(torch.full((len(scales),), init_std))
        for k, s in enumerate(scales):
            self.register_buffer(f"grid_{k}", grid_encoding(dim, s.grid), persistent=False)

    @property
    def sequence_length(self) -> int:
        """Length of Z_input: every scale's queries plus its START and END tokens."""
        return sum(s.num_queries + 2 for s in self.scales)

    def query_slices(self) -> list[slice]:
        """Where each scale's queries sit inside Z_input (between its START and END)."""
        slices, offset = [], 0
        for s in self.scales:
            slices.append(slice(offset + 1, offset + 1 + s.num_queries))
            offset += s.num_queries + 2
        return slices

    def forward(self) -> torch.Tensor:
        """Z_input of Eq. 3: [sequence_length, dim]."""
        parts = []
        for k in range(len(self.scales)):
            encoded = self.queries[k] + self.grid_gain[k] * getattr(self, f"grid_{k}")
            parts += [self.start[k : k + 1], encoded, self.end[k : k + 1]]
        return torch.cat(parts, dim=0)

    def split(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """Cut the MLLM's hidden states over Z_input ([B, sequence_length, d]) into H_{s_k} per scale."""
        return [hidden[:, sl] for sl in self.query_slices()]
