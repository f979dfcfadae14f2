"""Test-only ComfyUI node pack used by the integration tier (never shipped, never loaded by the
HieraQuery pack itself).

The harness links this folder into ComfyUI's ``custom_nodes/`` as ``hq-test-fixture-pack``,
next to the real pack.  Its V3 nodes need no model files and exercise what the real nodes
will use: a custom io type, a ModelPatcher around a plain ``nn.Module`` loaded with
``load_models_gpu``, an Int seed with control_after_generate, ``validate_inputs``,
``comfy.utils.ProgressBar`` with JPEG previews, interruption, and an error raised in execute.

    HQFixtureModelLoader  variant (combo) -> HQ_FIXTURE_MODEL
    HQFixtureRender       model, seed, width, height, steps, step_delay, fail, [tint] -> IMAGE
"""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
from comfy_api.latest import ComfyExtension, io

FixtureModel = io.Custom("HQ_FIXTURE_MODEL")


class _TinyNet(torch.nn.Module):
    """1x1 convolution with fixed weights: identity or colour inversion."""

    def __init__(self, variant: str):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            sign = -1.0 if variant == "invert" else 1.0
            self.conv.weight.copy_(sign * torch.eye(3).view(3, 3, 1, 1))
            self.conv.bias.fill_(1.0 if variant == "invert" else 0.0)

    def forward(self, x):
        return self.conv(x)


class HQFixtureModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HQFixtureModelLoader",
            display_name="HQ Fixture: Tiny Model Loader",
            category="HieraQuery/testing",
            description="Builds a tiny conv net wrapped in a ModelPatcher (test fixture).",
            inputs=[io.Combo.Input("variant", options=["identity", "invert"], default="identity",
                                   tooltip="identity keeps colours, invert flips them")],
            outputs=[FixtureModel.Output(display_name="model", tooltip="the tiny model")],
        )

    @classmethod
    def execute(cls, variant: str) -> io.NodeOutput:
        patcher = comfy.model_patcher.ModelPatcher(
            _TinyNet(variant), load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
        return io.NodeOutput(patcher)


class HQFixtureRender(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HQFixtureRender",
            display_name="HQ Fixture: Render",
            category="HieraQuery/testing",
            description="Makes a seeded noise image through the tiny model, with progress and previews.",
            inputs=[
                FixtureModel.Input("model", tooltip="from HQ Fixture: Tiny Model Loader"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="noise seed"),
                io.Int.Input("width", default=64, min=8, max=4096, step=8, tooltip="multiple of 8"),
                io.Int.Input("height", default=64, min=8, max=4096, step=8, tooltip="multiple of 8"),
                io.Int.Input("steps", default=4, min=1, max=100000, tooltip="progress steps"),
                io.Float.Input("step_delay", default=0.0, min=0.0, max=10.0, step=0.01,
                               tooltip="seconds to sleep per step (to test interruption)"),
                io.Boolean.Input("fail", default=False, tooltip="raise an error in execute"),
                io.String.Input("tint", default="", optional=True, tooltip="optional: 'red', 'green' or 'blue'"),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def validate_inputs(cls, width: int, height: int) -> bool | str:
        # Inputs named here skip ComfyUI's own min/max checks (execution.py validate_inputs).
        if width % 8 or height % 8:
            return f"width and height must be multiples of 8 (got {width}x{height})"
        return True

    @classmethod
    def execute(cls, model, seed: int, width: int, height: int, steps: int, step_delay: float,
                fail: bool, tint: str = "") -> io.NodeOutput:
        mm.load_models_gpu([model])
        device = model.load_device
        net = model.model
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(1, 3, height, width, generator=gen)
        pbar = comfy.utils.ProgressBar(steps)
        for i in range(steps):
            mm.throw_exception_if_processing_interrupted()
            if fail:
                raise RuntimeError("HQ fixture failure requested (fail=True)")
            with torch.no_grad():
                y = net(x.to(device)).float().cpu().clamp(0, 1)
            preview = Image.fromarray((y[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
            # The progress hook also raises if the prompt was interrupted (main.py hijack_progress).
            pbar.update_absolute(i + 1, steps, ("JPEG", preview, 512))
            if step_delay:
                time.sleep(step_delay)
        image = y.permute(0, 2, 3, 1).contiguous()  # [B, H, W, C] in 0..1
        channel = {"red": 0, "green": 1, "blue": 2}.get((tint or "").strip().lower())
        if channel is not None:
            image = image.clone()
            image[..., channel] = 1.0
        return io.NodeOutput(image)


class HQFixtureExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [HQFixtureModelLoader, HQFixtureRender]


async def comfy_entrypoint() -> HQFixtureExtension:
    return HQFixtureExtension()
