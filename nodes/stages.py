"""The composable HieraQuery nodes, one per stage of the paper's data flow (imported only inside ComfyUI):

    Query Encode (Eq. 1-4: prompt + multi-scale queries -> frozen MLLM -> per-scale query states)
    -> Connector (Eq. 5's g: query states -> per-scale DiT conditions, with the empty-prompt branches)
    -> Scale Sampler (the shared DiT paints one chosen scale at its own resolution; chain them coarse to fine)
"""

from __future__ import annotations

from comfy_api.latest import io

from ..hieraquery_core.checkpoint import BUNDLED_DEMO_PROMPT
from . import jobs
from .comfy_runtime import ProgressBarSink
from .widgets import (
    STAGES_CATEGORY, HQConditions, HQQueryStates, batch_size_input, guidance_input, image_guidance_input, image_input,
    model_input, refine_strength_input, seed_input, size_inputs, steps_input,
)


class HieraQueryQueryEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HieraQueryQueryEncode",
            display_name="HieraQuery Query Encode",
            category=STAGES_CATEGORY,
            description="Runs the prompt (and, for editing, the input image) with the learnable multi-scale queries through the frozen "
                        "multimodal LLM, giving one set of query states per scale, coarse to fine. The empty prompt that guidance "
                        "compares against is encoded too.",
            inputs=[
                model_input(),
                io.String.Input("prompt", multiline=True, dynamic_prompts=True, default=BUNDLED_DEMO_PROMPT,
                                tooltip="What to paint or, with an input image, the change to make (e.g. 'make the red circle green')."),
                image_input("Optional: the image to edit. Leave unconnected for text to image.", optional=True),
            ],
            outputs=[HQQueryStates.Output(display_name="query_states", tooltip="Per-scale query states, for a HieraQuery Connector."),
                     io.String.Output(display_name="encoded_prompt",
                                      tooltip="The prompt as the MLLM read it: for a checkpoint that plans (docs/design.md, 'Reason, then paint'), "
                                              "followed by the MLLM's answers about the layout; otherwise the prompt itself.")],
        )

    @classmethod
    def execute(cls, model, prompt: str, image=None) -> io.NodeOutput:
        states = jobs.encode_queries(model, prompt, image)
        return io.NodeOutput(states, states.states.prompts[0])


class HieraQueryConnector(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HieraQueryConnector",
            display_name="HieraQuery Connector",
            category=STAGES_CATEGORY,
            description="Turns each scale's query states into conditions for the diffusion transformer (the trained connector), "
                        "including the empty-prompt conditions that guidance needs.",
            inputs=[
                model_input(),
                HQQueryStates.Input("query_states", tooltip="From a HieraQuery Query Encode node using the same checkpoint."),
            ],
            outputs=[HQConditions.Output(display_name="conditions", tooltip="Per-scale DiT conditions, for HieraQuery Scale Sampler nodes.")],
        )

    @classmethod
    def execute(cls, model, query_states) -> io.NodeOutput:
        return io.NodeOutput(jobs.connect(model, query_states))


class HieraQueryScaleSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HieraQueryScaleSampler",
            display_name="HieraQuery Scale Sampler",
            category=STAGES_CATEGORY,
            description="Paints one scale of the coarse-to-fine cascade with the shared diffusion transformer, at that scale's own "
                        "resolution. Chain one per scale (0, 1, 2, ...) and preview each; optionally refine from the previous scale's image.",
            inputs=[
                model_input(),
                HQConditions.Input("conditions", tooltip="From a HieraQuery Connector node using the same checkpoint."),
                io.Int.Input("scale", default=0, min=0, max=15,
                             tooltip="Which scale to paint: 0 is the coarsest (e.g. 4x4 queries at 1/4 size), the last the finest (full size)."),
                seed_input(),
                steps_input(),
                guidance_input(),
                image_guidance_input(),
                *size_inputs(),
                batch_size_input(),
                refine_strength_input(),
                io.Image.Input("previous", optional=True,
                               tooltip="Optional: the previous (coarser) scale's image. Refined from when refine_strength is below 1; a checkpoint trained with --coarse-input also reads it at any strength."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="This scale's image(s), at the scale's own resolution."),
                io.Latent.Output(display_name="latent", tooltip="The same in the checkpoint's latent space (for a pixel-space checkpoint: the image in [-1, 1])."),
            ],
        )

    @classmethod
    def execute(cls, model, conditions, scale: int, seed: int, steps: int, guidance: float, image_guidance: float, width: int,
                height: int, batch_size: int, refine_strength: float, previous=None) -> io.NodeOutput:
        image, latent = jobs.sample_scale(model, conditions, scale, seed, steps, guidance, image_guidance, width, height, batch_size,
                                          previous, refine_strength, progress=ProgressBarSink())
        return io.NodeOutput(image, latent)
