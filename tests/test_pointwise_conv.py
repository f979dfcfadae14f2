"""1x1 convolutions as matmuls on the CPU (pointwise_conv.py): the same numbers and gradients as nn.Conv2d,
only per-pixel linear maps change, and the DiT gets them when built, widened or loaded from a checkpoint."""

import copy

import pytest
import torch
from torch import nn

from hieraquery_core.backbones import build_dit
from hieraquery_core.checkpoint import bundled_demo, load_checkpoint
from hieraquery_core.config import BackboneSpec
from hieraquery_core.connector import ScaleCondition
from hieraquery_core.pointwise_conv import PointwiseConv2d, is_pointwise, pointwise_as_linear
from hieraquery_core.tiny import tiny_dit


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_matmul_gives_the_convolutions_outputs_and_gradients(bias, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 1, bias=bias)
    fast = pointwise_as_linear(copy.deepcopy(conv))
    assert type(fast) is PointwiseConv2d
    x = torch.randn(3, 6, 5, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, out = conv(x_ref), fast(x_fast)
    assert out.shape == ref.shape == (3, 10, 5, 7)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_ref.grad)
    torch.testing.assert_close(fast.weight.grad, conv.weight.grad)
    if bias:
        torch.testing.assert_close(fast.bias.grad, conv.bias.grad)


def test_only_per_pixel_linear_maps_are_converted():
    eligible = nn.Conv2d(4, 8, 1)
    others = [nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(4, 8, 1, stride=2), nn.Conv2d(4, 8, 1, groups=4), nn.Conv2d(4, 8, 1, padding=1),
              nn.Conv2d(4, 8, 1, dilation=2), nn.Conv1d(4, 8, 1), nn.Linear(4, 8)]
    module = nn.Sequential(eligible, *others)
    keys = list(module.state_dict())
    assert pointwise_as_linear(module) is module
    assert type(module[0]) is PointwiseConv2d
    assert [type(m) for m in module[1:]] == [type(m) for m in others] and not any(is_pointwise(m) for m in others)
    assert list(module.state_dict()) == keys


def sana_spec(patch_size: int) -> BackboneSpec:
    base = tiny_dit("sana", in_channels=3)
    return BackboneSpec("sana", config={**base.config, "patch_size": patch_size})


def test_the_sana_dit_runs_its_pointwise_convolutions_as_matmuls_and_keeps_them_when_widened():
    dit = build_dit(sana_spec(patch_size=1))
    ffn = dit.blocks[0].ff
    assert type(ffn.conv_inverted) is PointwiseConv2d and type(ffn.conv_point) is PointwiseConv2d
    assert type(ffn.conv_depth) is nn.Conv2d  # depthwise 3x3: left to oneDNN
    assert type(dit.patch_projection()) is PointwiseConv2d
    dit.add_input_channels(3)
    assert type(dit.patch_projection()) is PointwiseConv2d and dit.patch_projection().in_channels == 6
    assert type(build_dit(sana_spec(patch_size=2)).patch_projection()) is nn.Conv2d  # 2x2 patches are a real convolution


def test_the_bundled_demo_loads_with_matmuls_and_paints_what_the_convolutions_paint():
    model = load_checkpoint(bundled_demo())
    pointwise = [m for m in model.dit.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert pointwise and all(type(m) is PointwiseConv2d for m in pointwise)
    g = torch.Generator().manual_seed(0)
    latents, source = torch.randn(2, model.codec.channels, 8, 8, generator=g), torch.randn(2, model.codec.channels, 8, 8, generator=g)
    condition = ScaleCondition(torch.randn(2, 5, model.dit.caption_dim, generator=g), None)
    with torch.no_grad():
        fast = model.dit(latents, torch.tensor(0.6), condition, source)
        for m in pointwise:
            m.__class__ = nn.Conv2d
        plain = model.dit(latents, torch.tensor(0.6), condition, source)
    torch.testing.assert_close(fast, plain)
