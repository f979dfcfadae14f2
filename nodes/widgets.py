"""Socket types and the inputs several HieraQuery nodes share (imported only inside ComfyUI)."""

from __future__ import annotations

from comfy_api.latest import io

from ..hieraquery_core.self_check import FIT_PASSES

CATEGORY = "HieraQuery"
STAGES_CATEGORY = "HieraQuery/stages"

HQModel = io.Custom("HIERAQUERY_MODEL")
"""A loaded checkpoint (nodes/runtime.py LoadedModel)."""
HQQueryStates = io.Custom("HQ_QUERY_STATES")
"""Per-scale MLLM query states of every guidance branch (nodes/runtime.py QueryStatesValue)."""
HQConditions = io.Custom("HQ_CONDITIONS")
"""Per-scale DiT conditions, with the empty-prompt branches for guidance (nodes/runtime.py ConditionsValue)."""

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def model_input() -> io.Input:
    return HQModel.Input("model", tooltip="The HieraQuery checkpoint, from a HieraQuery Loader node.")


def seed_input() -> io.Input:
    return io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                        tooltip="Noise seed. The same seed and settings give the same image; scale k draws its noise from seed + k.")


def steps_input() -> io.Input:
    return io.Int.Input("steps", default=20, min=1, max=1000,
                        tooltip="Denoising steps per scale (flow-matching Euler steps). More is slower and usually cleaner.")


def guidance_input() -> io.Input:
    return io.Float.Input("guidance", default=4.0, min=1.0, max=20.0, step=0.1, round=0.01,
                          tooltip="Text guidance (classifier-free): how strongly the image follows the prompt, against the empty prompt. 1 turns it off.")


def image_guidance_input() -> io.Input:
    return io.Float.Input("image_guidance", default=1.5, min=1.0, max=10.0, step=0.1, round=0.01,
                          tooltip="Image guidance when editing: how closely the result keeps the input image. 1 turns it off; ignored without an input image.")


def refine_strength_input() -> io.Input:
    return io.Float.Input("refine_strength", default=1.0, min=0.05, max=1.0, step=0.05, round=0.01,
                          tooltip="1 paints every scale from fresh noise (the paper's default). Below 1, each scale starts from the "
                                  "previous scale's image, re-noised to this strength (alignment-aware refinement): lower keeps more of it.")


def size_inputs() -> list[io.Input]:
    tip = ("{} of the final (finest) scale in pixels; coarser scales are painted at their own fraction of it. "
           "0 = the checkpoint's own size (or the input image's, when editing). Must suit the model: a clear error says which sizes do.")
    return [io.Int.Input("width", default=0, min=0, max=8192, step=16, tooltip=tip.format("Width")),
            io.Int.Input("height", default=0, min=0, max=8192, step=16, tooltip=tip.format("Height"))]


def batch_size_input() -> io.Input:
    return io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="How many images to make at once (each from its own noise).")


def candidates_input() -> io.Input:
    return io.Int.Input("candidates", default=1, min=1, max=64, optional=True,
                        tooltip="Cascades painted per image; the one the model's own diffusion transformer finds fits the prompt best is kept "
                                f"(self-check). 1 is the paper's single sample. Each candidate costs a cascade plus {2 * FIT_PASSES} passes of the "
                                "transformer at the final scale (with and without the prompt), as one batch (memory grows with the number).")


def image_input(tooltip: str, optional: bool = False) -> io.Input:
    return io.Image.Input("image", optional=optional, tooltip=tooltip)


EDIT_IMAGE_TOOLTIP = "The image(s) to change: an IMAGE from Load Image or any node (RGB; a batch is edited image by image). The result has the same size."
