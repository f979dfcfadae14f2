"""The DiT's linear maps, run on the CPU the way its BLAS runs them fastest (BENCHMARKS.md, item 6).

Two measured quirks of PyTorch's CPU matrix products, both about how the same arithmetic reaches BLAS:

* 1x1 convolutions. SANA's DiT embeds its patch-1 latents and runs its Mix-FFN (GLUMBConv) with 1x1
  convolutions. On the CPU, PyTorch sends a 1x1 convolution of fewer than 16 images on one intra-op thread
  to its slow per-image path (one small GEMM per image; ``ConvParams::use_mkldnn`` in ATen), and with more
  threads to oneDNN. The same arithmetic as one linear map over the channels (every pixel of the batch a
  row) measured faster on both: the medium DiT's 2x2- and 4x4-query scales 13-24 % faster on one thread,
  its full-size forward 17 % faster on two, the demo DiT's forward and backward at training batch 16 15 %
  faster. The autoencoders keep their convolutions (the medium DC-AE decode did not get faster).
* Few rows against a large weight. ``F.linear(x, W)`` is ``addmm(b, x, W^T)``; with at most
  :data:`FEW_ROWS` rows (a cascade's coarsest scale: 2 x 16 tokens under classifier-free guidance) and a
  weight of at least :data:`LARGE_WEIGHT` entries, the same product taken the other way round,
  ``addmm(b, W, x^T)^T``, measured 1.0-1.4x faster (MKL, one thread, Intel Xeon; the same values up to float rounding),
  and the medium DiT's 2 x 16-token forward 14 % faster. With smaller weights (the ShapesWorld demo's
  128-wide DiT) it measured 0.6-0.9x, so those keep ``F.linear``; from 128 rows up the two are even. On an AMD
  EPYC (the same torch build and MKL, AVX2) it measured 0.94-1.12x at 32 and 64 rows and 0.73-0.97x at 8, and
  the medium DiT's 2 x 16-token forward was 6 % slower with these layers than with plain ones (0.04 s of an
  8.3 s cascade; BENCHMARKS.md, 2026-12-05 22:02). The choice is kept: picking the product per CPU would need a
  start-up measurement.

:func:`cpu_linear` makes the choice. :class:`PointwiseConv2d` and :class:`CpuLinear` are ``nn.Conv2d`` and
``nn.Linear`` with only ``forward`` changed, so parameters, state dicts, device moves and
``from_pretrained`` are untouched; :func:`cpu_linear_layers` gives them to a model. Off the CPU both are
their parent class (no GPU was lent to measure the trade there; cuDNN and cuBLAS run these shapes well).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEW_ROWS = 64
"""At most this many rows (tokens x batch) take the swapped product."""
LARGE_WEIGHT = 1 << 20
"""... and only against a weight of at least this many entries."""


def cpu_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(input, weight, bias)``; on the CPU, few rows against a large weight go through the swapped product."""
    if input.device.type != "cpu" or weight.numel() < LARGE_WEIGHT or input.numel() > FEW_ROWS * weight.shape[1]:
        return F.linear(input, weight, bias)
    flat = input.reshape(-1, weight.shape[1]).t()
    out = torch.mm(weight, flat) if bias is None else torch.addmm(bias[:, None], weight, flat)
    return out.t().reshape(*input.shape[:-1], weight.shape[0])


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, unpadded, ungrouped ``nn.Conv2d`` that runs on the CPU as a linear map over the channels."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.device.type != "cpu" or input.dim() != 4:
            return super().forward(input)
        weight = self.weight.view(self.out_channels, self.in_channels)
        return cpu_linear(input.permute(0, 2, 3, 1), weight, self.bias).permute(0, 3, 1, 2)


class CpuLinear(nn.Linear):
    """``nn.Linear`` whose product goes through :func:`cpu_linear`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return cpu_linear(input, self.weight, self.bias)


def is_pointwise(conv: nn.Module) -> bool:
    """True for a plain ``nn.Conv2d`` that is a per-pixel linear map (1x1 kernel, stride 1, no padding, one group)."""
    return (
        type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.dilation == (1, 1)
        and conv.groups == 1 and conv.padding in ((0, 0), "valid") and conv.padding_mode == "zeros"
    )


def cpu_linear_layers(module: nn.Module) -> nn.Module:
    """Turn every pointwise ``nn.Conv2d`` inside ``module`` into a :class:`PointwiseConv2d` and every plain
    ``nn.Linear`` into a :class:`CpuLinear`, in place; returns ``module``."""
    for layer in module.modules():
        if is_pointwise(layer):
            layer.__class__ = PointwiseConv2d
        elif type(layer) is nn.Linear:
            layer.__class__ = CpuLinear
    return module
