"""The one-node HieraQuery jobs (imported only inside ComfyUI): Generate, Edit, Style Transfer, Describe."""

from __future__ import annotations

from comfy_api.latest import io

from ..hieraquery_core.checkpoint import BUNDLED_DEMO_EDITS, BUNDLED_DEMO_PROMPT
from . import jobs
from .comfy_runtime import ProgressBarSink
from .widgets import (
    CATEGORY, EDIT_IMAGE_TOOLTIP, batch_size_input, candidates_input, guidance_input, image_guidance_input, image_input, model_input,
    refine_strength_input, seed_input, size_inputs, steps_input,
)


class HieraQueryGenerate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HieraQueryGenerate",
            display_name="HieraQuery Generate",
            category=CATEGORY,
            description="Text to image, coarse to fine: the prompt goes once through the frozen multimodal LLM with the multi-scale "
                        "queries, then the shared diffusion transformer paints every scale at its own resolution. Gives the final "
                        "image and every scale's image.",
            inputs=[
                model_input(),
                io.String.Input("prompt", multiline=True, dynamic_prompts=True, default=BUNDLED_DEMO_PROMPT,
                                tooltip="What to paint, in words the checkpoint knows (the ShapesWorld demo: colours, shapes, counts, left/right/above/below)."),
                seed_input(),
                steps_input(),
                guidance_input(),
                *size_inputs(),
                batch_size_input(),
                refine_strength_input(),
                candidates_input(),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The final, finest scale."),
                io.Image.Output(display_name="scales", is_output_list=True,
                                tooltip="Every scale's image at its own resolution, coarse to fine, as a list (a node connected here runs once per scale)."),
                io.Image.Output(display_name="scales_batch",
                                tooltip="Every scale enlarged to the final size (nearest neighbour) in one batch, coarse to fine, for side-by-side viewing."),
            ],
        )

    @classmethod
    def execute(cls, model, prompt: str, seed: int, steps: int, guidance: float, width: int, height: int, batch_size: int,
                refine_strength: float, candidates: int = 1) -> io.NodeOutput:
        scales = jobs.generate(model, prompt, seed, steps, guidance, width, height, batch_size, refine_strength, candidates, progress=ProgressBarSink())
        return io.NodeOutput(scales[-1], scales, jobs.scales_batch(scales))


def edit_schema(node_id: str, display_name: str, description: str, instruction: io.Input) -> io.Schema:
    """The schema Edit and Style Transfer share (they differ in wording and defaults only)."""
    return io.Schema(
        node_id=node_id,
        display_name=display_name,
        category=CATEGORY,
        description=description,
        inputs=[
            model_input(),
            image_input(EDIT_IMAGE_TOOLTIP),
            instruction,
            seed_input(),
            steps_input(),
            guidance_input(),
            image_guidance_input(),
            refine_strength_input(),
            candidates_input(),
        ],
        outputs=[io.Image.Output(display_name="image", tooltip="The changed image(s), same size and batch as the input: chain another edit after it.")],
    )


class HieraQueryEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return edit_schema(
            "HieraQueryEdit", "HieraQuery Edit",
            "Changes an image by an instruction: the frozen multimodal LLM reads the image and the instruction, and the diffusion "
            "transformer repaints it coarse to fine. Chain Edit nodes for several changes.",
            io.String.Input("instruction", multiline=True, default=BUNDLED_DEMO_EDITS[0],
                            tooltip="The change to make, e.g. 'make the red circle green', 'remove the blue square', 'add a yellow triangle'."),
        )

    @classmethod
    def execute(cls, model, image, instruction: str, seed: int, steps: int, guidance: float, image_guidance: float,
                refine_strength: float, candidates: int = 1) -> io.NodeOutput:
        scales = jobs.edit(model, image, instruction, seed, steps, guidance, image_guidance, refine_strength, candidates, progress=ProgressBarSink())
        return io.NodeOutput(scales[-1])


class HieraQueryStyleTransfer(HieraQueryEdit):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return edit_schema(
            "HieraQueryStyleTransfer", "HieraQuery Style Transfer",
            "Repaints a whole image in another style by a style instruction, keeping its content (an edit that touches every "
            "object). The ShapesWorld demo knows 'make it outline style' and 'make it filled'.",
            io.String.Input("instruction", display_name="style", multiline=False, default="make it outline style",
                            tooltip="The style instruction, e.g. 'make it outline style' or 'make it filled' (the demo); 'make it <style> style' for a model trained on more styles."),
        )


class HieraQueryDescribe(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HieraQueryDescribe",
            display_name="HieraQuery Describe",
            category=CATEGORY,
            description="Answers a question about an image with the frozen multimodal LLM (its own understanding, untouched by "
                        "HieraQuery's training). Show the text with the native 'Preview as Text' node.",
            inputs=[
                model_input(),
                image_input("The image(s) to look at (RGB). For a batch the answers come one per line."),
                io.String.Input("question", multiline=True, default="describe the image",
                                tooltip="What to ask, e.g. 'describe the image', 'how many circles are there', 'what color is the square'."),
                io.Int.Input("max_new_tokens", default=32, min=1, max=1024, tooltip="The longest answer, in tokens."),
            ],
            outputs=[io.String.Output(display_name="text", tooltip="The answer (one line per image).")],
        )

    @classmethod
    def execute(cls, model, image, question: str, max_new_tokens: int) -> io.NodeOutput:
        return io.NodeOutput(jobs.describe(model, image, question, max_new_tokens))
