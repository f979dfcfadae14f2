"""HieraQuery Loader node (imported only inside ComfyUI)."""

from __future__ import annotations

from comfy_api.latest import io

from . import comfy_runtime as rt
from . import jobs
from .checkpoints import list_checkpoints, missing_checkpoint_message
from .widgets import CATEGORY, HQModel


class HieraQueryLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HieraQueryLoader",
            display_name="HieraQuery Loader",
            category=CATEGORY,
            description="Loads a HieraQuery checkpoint folder from models/hieraquery/ (or the bundled ShapesWorld demo): "
                        "the multi-scale queries, the frozen multimodal LLM, the connector and the shared diffusion transformer. "
                        "Nothing is downloaded and nothing in the folder is changed.",
            inputs=[
                io.Combo.Input("ckpt_name", options=list_checkpoints(rt.checkpoint_roots()),
                               tooltip="A checkpoint folder under models/hieraquery/ (config.json + hieraquery.safetensors + subfolders). "
                                       "shapesworld-demo is the small demo bundled with the pack."),
                io.Combo.Input("device", options=list(rt.DEVICES), default="default",
                               tooltip="Where the model computes: 'default' is ComfyUI's device (the GPU, or the CPU under --cpu); 'cpu' forces the CPU."),
                io.Combo.Input("dtype", options=list(rt.DTYPES), default="default",
                               tooltip="Weight precision: 'default' is bfloat16 where the device handles it well, else float32."),
                io.Combo.Input("memory", options=list(rt.MEMORY_MODES), default="keep loaded",
                               tooltip="'keep loaded' leaves the model on the device between runs (ComfyUI still evicts it when memory is needed); "
                                       "'offload after use' moves it back to system memory after every node that used it."),
            ],
            outputs=[HQModel.Output(display_name="model", tooltip="The loaded checkpoint, for every other HieraQuery node.")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name: str | None) -> bool | str:
        # ComfyUI 0.3.75 checks membership only for V1 (list-typed) combos, so a workflow naming a checkpoint
        # this user lacks would otherwise pass validation. None: the name comes through a link (checked on load).
        roots = rt.checkpoint_roots()
        return ckpt_name is None or ckpt_name in list_checkpoints(roots) or missing_checkpoint_message(ckpt_name, roots)

    @classmethod
    def fingerprint_inputs(cls, ckpt_name: str, **_) -> str:
        return jobs.checkpoint_fingerprint(ckpt_name, rt.checkpoint_roots())

    @classmethod
    def execute(cls, ckpt_name: str, device: str, dtype: str, memory: str) -> io.NodeOutput:
        load_device, keep = rt.compute_device(device), rt.keep_loaded(memory)
        model = jobs.load_model(
            ckpt_name, rt.checkpoint_roots(), device=rt.offload_device(load_device), dtype=rt.compute_dtype(dtype, load_device),
            backbone_dirs=rt.backbone_dirs(),
            residency=lambda m: rt.PatcherResidency(m, load_device, keep),
        )
        return io.NodeOutput(model)
