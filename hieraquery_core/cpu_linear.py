"""The DiT's linear maps, run on the CPU the way its BLAS runs them fastest (BENCHMARKS.md, item 6).

Two measured quirks of PyTorch's CPU matrix products, both about how the same arithmetic reaches BLAS:

* 1x1 convolutions. SANA's DiT embeds its patch-1 latents and runs its Mix-FFN (GLUMBConv) with 1x1
  convolutions. On the CPU, PyTorch sends a 1x1 convolution of fewer than 16 images on one intra-op thread
  to its slow per-image path (one small GEMM per image; ``ConvParams::use_mkldnn`` in ATen), and with more
  threads to oneDNN. The same arithmetic as one linear map over the channels (every pixel of the batch a
  row) measured faster on both: the medium DiT's 2x2- and 4x4-query scales 13-24 % faster on one thread,
  its full-size forward 17 % faster on two, the demo DiT's forward and backward at training batch 16 15 %
  faster. The autoencoders keep their convolutions (the medium DC-AE decode did not get faster).
* Large weights at inference. A BLAS matrix product copies ('packs') blocks of the weight into the layout its kernel
  reads, on every call; with few rows (a cascade's coarsest scale: 2 x 16 tokens under classifier-free guidance) that
  copy is a large share of the work. oneDNN can pack a weight once (PyTorch's oneDNN op
  ``torch.ops.mkldnn._reorder_linear_weight``) and multiply with the packed copy
  (``torch.ops.mkldnn._linear_pointwise``); where the ops are missing or fail a first small product, ``F.linear`` is
  used. On an AMD EPYC core (one thread, the medium DiT's weight shapes) the packed product ran 98-108 GFLOP/s at 32
  rows against 63-85 for ``F.linear``, and 104-112 against 80-99 from 128 to 512 rows; the medium DiT's forward took
  37-40 % less time at its coarsest scale, 21-28 % less at the middle one and 12-21 % less at full size (one-off
  interleaved timings; ``make bench``: BENCHMARKS.md, session 35). With the demo's 128-wide DiT it was as fast or
  slower (oneDNN's per-call cost), so only weights of at least :data:`LARGE_WEIGHT` entries are packed. The packed
  copy is kept on the layer (not a parameter or buffer: never saved, dropped when the layer moves or changes dtype)
  and made again when the weight changes in place (an optimizer step, ``load_state_dict``); it costs one more float32
  copy of those weights in memory, so ``HIERAQUERY_CPU_PREPACK=0`` in the environment turns it off. It is used only
  where no gradient is wanted (sampling, evaluation): training keeps ``F.linear`` and its autograd. This replaces a
  few-row product with the operands swapped (2026-12-05), which measured 14 % faster on an Intel Xeon and 6 % slower
  on the AMD EPYC.

:meth:`PackedLinear.cpu_linear` makes the choice. :class:`PointwiseConv2d` and :class:`CpuLinear` are ``nn.Conv2d`` and
``nn.Linear`` with only ``forward`` changed (and ``_apply``, which drops the packed copy), so parameters, state dicts,
device moves and ``from_pretrained`` are untouched; :func:`cpu_linear_layers` gives them to a model. Off the CPU both are
their parent class (no GPU was lent to measure the trade there; cuDNN and cuBLAS run these shapes well).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

LARGE_WEIGHT = 1 << 20
"""Only weights of at least this many entries are packed (the medium DiT's 1152 x 1152 and up; not the demo's)."""
PREPACK = os.environ.get("HIERAQUERY_CPU_PREPACK", "1") != "0"
"""Whether large weights are packed for oneDNN at inference (``HIERAQUERY_CPU_PREPACK=0`` saves the packed copies' memory)."""


@functools.cache
def onednn_linear() -> bool:
    """Whether this torch build has oneDNN's packed linear product and it gives ``F.linear``'s result on a small case."""
    try:
        weight, x = torch.arange(6.0).reshape(3, 2), torch.ones(1, 2)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        return torch.equal(torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), F.linear(x, weight))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def packs(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the product takes a packed weight: a large float32 weight on the CPU where no gradient is wanted."""
    wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias))
    return (PREPACK and input.device.type == "cpu" and weight.numel() >= LARGE_WEIGHT and not wants_grad
            and input.dtype == weight.dtype == torch.float32 and onednn_linear())


class PackedLinear:
    """A layer's oneDNN-packed copy of its weight, made again when the weight is replaced or changed in place.

    A weight made under ``torch.inference_mode`` (a model loaded while ComfyUI runs a node) is an inference tensor,
    which keeps no version counter: an in-place change to it is not seen until the layer is moved (``model.to``)."""

    _packed: tuple[tuple, torch.Tensor] | None = None

    def packed_weight(self, weight: torch.Tensor) -> torch.Tensor:
        key = (weight.data_ptr(), 0 if weight.is_inference() else weight._version, tuple(weight.shape))
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
        return self._packed[1]

    def cpu_linear(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``F.linear(input, weight, bias)``, through the packed weight when :func:`packs`."""
        if not packs(input, weight, bias):
            return F.linear(input, weight, bias)
        return torch.ops.mkldnn._linear_pointwise(input, self.packed_weight(weight), bias, "none", [], "")

    def _apply(self, fn, recurse: bool = True):
        self._packed = None  # a move or a dtype change: the next product packs the new weight
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        """A copy (``copy.deepcopy``, pickling) leaves the packed weight behind: oneDNN's layout has no storage to copy."""
        state = super().__getstate__()
        state.pop("_packed", None)
        return state


class PointwiseConv2d(PackedLinear, nn.Conv2d):
    """A 1x1, stride-1, unpadded, ungrouped ``nn.Conv2d`` that runs on the CPU as a linear map over the channels."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.device.type != "cpu" or input.dim() != 4:
            return super().forward(input)
        weight = self.weight.view(self.out_channels, self.in_channels)
        return self.cpu_linear(input.permute(0, 2, 3, 1), weight, self.bias).permute(0, 3, 1, 2)


class CpuLinear(PackedLinear, nn.Linear):
    """``nn.Linear`` whose product goes through :meth:`PackedLinear.cpu_linear`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.cpu_linear(input, self.weight, self.bias)


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
