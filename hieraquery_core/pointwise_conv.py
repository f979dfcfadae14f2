"""1x1 convolutions run as matrix products on the CPU (BENCHMARKS.md, item 6).

SANA's DiT embeds its patch-1 latents and runs its Mix-FFN (GLUMBConv) with 1x1 convolutions. On the
CPU, PyTorch sends a 1x1 convolution of fewer than 16 images on one intra-op thread to its slow per-image
path (one small GEMM per image; ``ConvParams::use_mkldnn`` in ATen), and with more threads to oneDNN.
The same arithmetic as one ``torch.nn.functional.linear`` over the channels (every pixel of the batch a
row) measured faster on both (BENCHMARKS.md, optimisation log): the medium DiT's 2x2- and 4x4-query
scales 13-24 % faster on one thread, its full-size forward 17 % faster on two, the demo DiT's forward and
backward at training batch 16 15 % faster. The autoencoders keep their convolutions (the medium DC-AE
decode did not get faster).

:class:`PointwiseConv2d` is ``nn.Conv2d`` with only ``forward`` changed, so parameters, state dicts,
device moves and ``from_pretrained`` are untouched. Off the CPU it is ``nn.Conv2d`` (no GPU was lent to
measure the trade there; cuDNN runs 1x1 convolutions well).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, unpadded, ungrouped ``nn.Conv2d`` that runs on the CPU as a linear map over the channels."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.device.type != "cpu" or input.dim() != 4:
            return super().forward(input)
        weight = self.weight.view(self.out_channels, self.in_channels)
        return F.linear(input.permute(0, 2, 3, 1), weight, self.bias).permute(0, 3, 1, 2)


def is_pointwise(conv: nn.Module) -> bool:
    """True for a plain ``nn.Conv2d`` that is a per-pixel linear map (1x1 kernel, stride 1, no padding, one group)."""
    return (
        type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.dilation == (1, 1)
        and conv.groups == 1 and conv.padding in ((0, 0), "valid") and conv.padding_mode == "zeros"
    )


def pointwise_as_linear(module: nn.Module) -> nn.Module:
    """Turn every pointwise ``nn.Conv2d`` inside ``module`` into a :class:`PointwiseConv2d`, in place; returns ``module``."""
    for conv in module.modules():
        if is_pointwise(conv):
            conv.__class__ = PointwiseConv2d
    return module
