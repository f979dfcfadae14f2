"""The DiT's linear maps on the CPU (cpu_linear.py): 1x1 convolutions as matmuls and large weights packed for oneDNN at
inference give the same numbers and gradients as nn.Conv2d / nn.Linear, the packed copy follows the weight, only
per-pixel linear maps and plain linear layers change, and the DiT gets them when built, widened or loaded."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hieraquery_core.backbones import build_dit
from hieraquery_core.checkpoint import bundled_demo, load_checkpoint
from hieraquery_core.config import BackboneSpec
from hieraquery_core.connector import ScaleCondition
from hieraquery_core import cpu_linear
from hieraquery_core.cpu_linear import LARGE_WEIGHT, CpuLinear, PointwiseConv2d, cpu_linear_layers, is_pointwise, onednn_linear
from hieraquery_core.tiny import tiny_dit


def converted_output(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of ``layer`` converted by cpu_linear_layers, after checking that it and its gradients (input, weight,
    bias) equal the plain layer's."""
    fast = cpu_linear_layers(copy.deepcopy(layer))
    assert type(fast) is {nn.Conv2d: PointwiseConv2d, nn.Linear: CpuLinear}[type(layer)]
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, out = layer(x_ref), fast(x_fast)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_ref.grad)
    for name, parameter in layer.named_parameters():
        torch.testing.assert_close(fast.get_parameter(name).grad, parameter.grad)
    return out.detach()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_matmul_gives_the_convolutions_outputs_and_gradients(bias, channels_last):
    torch.manual_seed(0)
    x = torch.randn(3, 6, 5, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert converted_output(nn.Conv2d(6, 10, 1, bias=bias), x).shape == (3, 10, 5, 7)


def test_the_pinned_torch_has_the_packed_product():
    """The development environment's torch (constraints.txt) has oneDNN's packed product, so the tests below run the packed
    path; a torch without it (``onednn_linear()`` false) would take ``F.linear`` everywhere."""
    assert onednn_linear()


def large_layers(bias: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return cpu_linear_layers(nn.Sequential(nn.Linear(1024, LARGE_WEIGHT // 1024, bias=bias), nn.Conv2d(1024, LARGE_WEIGHT // 1024, 1, bias=bias)))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 32, 300])
def test_large_weights_are_packed_at_inference_and_give_the_plain_products(bias, rows):
    layers = large_layers(bias)
    x, pixels = torch.randn(1, rows, 1024), torch.randn(2, 1024, 1, rows)
    with torch.no_grad():
        torch.testing.assert_close(layers[0](x), F.linear(x, layers[0].weight, layers[0].bias))
        torch.testing.assert_close(layers[1](pixels), F.conv2d(pixels, layers[1].weight, layers[1].bias))
    assert all(layer._packed is not None for layer in layers)
    assert list(layers.state_dict()) == [k for k in ("0.weight", "0.bias", "1.weight", "1.bias") if bias or k.endswith("weight")]


def test_the_packed_weight_follows_the_weight():
    layer = large_layers(bias=True)[0]
    x = torch.randn(4, 1024)
    with torch.no_grad():
        layer(x)
        packed = layer._packed[1]
        layer(x)
        assert layer._packed[1] is packed  # made once, reused
        layer.weight.mul_(-2.0)  # an in-place change (an optimizer step, load_state_dict)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        layer.weight = nn.Parameter(0.03 * torch.randn_like(layer.weight))  # a new tensor, at the init's scale
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    twin = copy.deepcopy(layer)  # as deepen_dit copies a block: the packed weight stays behind and the copy packs its own
    assert twin._packed is None and layer._packed is not None
    with torch.no_grad():
        torch.testing.assert_close(twin(x), layer(x))
    layer.double()
    assert layer._packed is None  # a move or dtype change drops the copy; float64 then takes F.linear
    with torch.no_grad():
        torch.testing.assert_close(layer(x.double()), F.linear(x.double(), layer.weight, layer.bias))
    assert layer._packed is None


def test_a_model_loaded_in_inference_mode_is_packed_too():
    with torch.inference_mode():  # how ComfyUI runs nodes: the weights are inference tensors, with no version counter
        layer = large_layers(bias=True)[0]
        x = torch.randn(4, 1024)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        assert layer._packed is not None


def test_training_and_small_weights_take_f_linear(monkeypatch):
    layers = large_layers(bias=True)
    out = converted_output(nn.Linear(1024, LARGE_WEIGHT // 1024), torch.randn(1, 32, 1024))  # outputs and gradients as nn.Linear
    assert out.shape == (1, 32, 1024)
    layers[0](torch.randn(2, 1024)).sum().backward()  # grad wanted: autograd's F.linear, nothing packed
    small = cpu_linear_layers(nn.Linear(128, 128))
    with torch.no_grad():
        small(torch.randn(2, 16, 128))  # the demo's widths: oneDNN's per-call cost outweighs the packing
        monkeypatch.setattr(cpu_linear, "PREPACK", False)  # HIERAQUERY_CPU_PREPACK=0
        layers[0](torch.randn(2, 1024))
    assert small._packed is None and layers[0]._packed is None and layers[0].weight.grad is not None


def test_only_per_pixel_linear_maps_are_converted():
    eligible = nn.Conv2d(4, 8, 1)
    others = [nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(4, 8, 1, stride=2), nn.Conv2d(4, 8, 1, groups=4), nn.Conv2d(4, 8, 1, padding=1),
              nn.Conv2d(4, 8, 1, dilation=2), nn.Conv1d(4, 8, 1), nn.Bilinear(4, 4, 8), nn.LazyLinear(8)]
    module = nn.Sequential(eligible, nn.Linear(4, 8), *others)
    keys = list(module.state_dict())
    assert cpu_linear_layers(module) is module
    assert type(module[0]) is PointwiseConv2d and type(module[1]) is CpuLinear
    assert [type(m) for m in module[2:]] == [type(m) for m in others] and not any(is_pointwise(m) for m in others)
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
    linears = [m for m in dit.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is CpuLinear for m in linears)


def test_the_bundled_demo_loads_with_matmuls_and_paints_what_the_convolutions_paint():
    model = load_checkpoint(bundled_demo())
    pointwise = [m for m in model.dit.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    linears = [m for m in model.dit.modules() if isinstance(m, nn.Linear)]
    assert pointwise and all(type(m) is PointwiseConv2d for m in pointwise)
    assert linears and all(type(m) is CpuLinear for m in linears)
    g = torch.Generator().manual_seed(0)
    latents, source = torch.randn(2, model.codec.channels, 8, 8, generator=g), torch.randn(2, model.codec.channels, 8, 8, generator=g)
    condition = ScaleCondition(torch.randn(2, 5, model.dit.caption_dim, generator=g), None)
    with torch.no_grad():
        fast = model.dit(latents, torch.tensor(0.6), condition, source)
        for m in pointwise:
            m.__class__ = nn.Conv2d
        for m in linears:
            m.__class__ = nn.Linear
        plain = model.dit(latents, torch.tensor(0.6), condition, source)
    torch.testing.assert_close(fast, plain)
