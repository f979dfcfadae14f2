"""1x1 convolutions computed as one matrix multiply over every pixel of the batch.

SANA's Mix-FFN (``GLUMBConv``) and a patch-1 patch embedding are 1x1 convolutions over the image tokens,
about half of a SANA DiT forward (BENCHMARKS.md, optimisation log). On a CPU with one intra-op thread
and a batch under 16 (a CFG batch of 2), PyTorch sends them to its THNN path, one GEMM per sample; at
the cascade's coarse scales (16 tokens per sample at the medium size) that runs at about half the
matmul peak. ``F.linear`` over the channels-last view of the same tensor is one GEMM for the whole
batch, and SANA's blocks already hand the Mix-FFN a channels-last view, so no copy is made. The weights,
their names and shapes, and the state dict stay those of ``nn.Conv2d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PointwiseConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` with a 1x1 kernel, stride 1, no padding, no groups, computed by ``F.linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.movedim(1, -1), self.weight.flatten(1), self.bias).movedim(-1, 1)


def is_pointwise(module: nn.Module) -> bool:
    """Whether ``module`` is a plain ``nn.Conv2d`` that is a per-pixel linear map."""
    return (type(module) is nn.Conv2d and module.kernel_size == (1, 1) and module.stride == (1, 1) and module.dilation == (1, 1)
            and module.groups == 1 and module.padding in ((0, 0), "valid"))


def pointwise_as_linear(root: nn.Module) -> int:
    """Turn every pointwise ``nn.Conv2d`` under ``root`` into a :class:`PointwiseConv2d` in place; returns how many.

    The class is swapped on the existing module object, so its parameters (and anything holding them,
    such as an optimizer or a hook) are untouched.
    """
    converted = [m for m in root.modules() if is_pointwise(m)]
    for module in converted:
        module.__class__ = PointwiseConv2d
    return len(converted)
