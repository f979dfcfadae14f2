"""ComfyUI's side of the node runtime (imported only inside ComfyUI).

- Model folders: checkpoints live in ``models/hieraquery/<name>/`` (plus extra_model_paths.yaml entries);
  backbones named by relative paths in a checkpoint's config.json may live in ``models/text_encoders``
  (the MLLM), ``models/diffusion_models`` (the DiT) and ``models/vae``.
- Devices and memory through ``comfy.model_management``: the compute device is ComfyUI's (``cpu`` under
  ``--cpu``; never a hard-coded CUDA), the model rests on ComfyUI's offload device and is moved in for a
  job through a ModelPatcher with ``load_models_gpu``, which first evicts other models if memory is short.
  "offload after use" moves it back after every job and empties the device cache.
- Progress through ``comfy.utils.ProgressBar``: one update per denoising step with a JPEG preview of the
  scale being painted (every step for pixel-space checkpoints, whose preview is free; for latent-space
  ones every step only when ComfyUI runs with ``--preview-method``, else at the end of each scale), and an
  interruption check before each update (ComfyUI itself checks only between nodes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
from comfy.cli_args import LatentPreviewMethod, args

from ..hieraquery_core.errors import require
from ..hieraquery_core.images import to_pil
from ..hieraquery_core.model import HieraQuery
from .runtime import StepEvent

MODEL_FOLDER = "hieraquery"
"""Folder under ComfyUI's models/ (and key in folder_paths.folder_names_and_paths) holding checkpoints."""

BACKBONE_FOLDERS = {"mllm": "text_encoders", "dit": "diffusion_models", "codec": "vae"}
"""ComfyUI model folders searched for backbones that a checkpoint's config.json names by a relative path."""

DEVICES = ("default", "cpu")
DTYPES = ("default", "float32", "bfloat16", "float16")
MEMORY_MODES = ("keep loaded", "offload after use")


def checkpoint_roots() -> list[str]:
    return folder_paths.get_folder_paths(MODEL_FOLDER)


def backbone_dirs() -> dict[str, list[str]]:
    return {key: folder_paths.get_folder_paths(folder) for key, folder in BACKBONE_FOLDERS.items() if folder in folder_paths.folder_names_and_paths}


def _check_choice(name: str, value: str, options: tuple[str, ...]) -> None:
    """V3 combos are not checked by ComfyUI 0.3.75's validation (only V1 list-typed ones are)."""
    require(value in options, f"{name} must be one of {', '.join(repr(o) for o in options)}, got {value!r}")


def compute_device(choice: str) -> torch.device:
    """'default': ComfyUI's device (cpu under --cpu); 'cpu': always the CPU."""
    _check_choice("device", choice, DEVICES)
    return torch.device("cpu") if choice == "cpu" else mm.get_torch_device()


def offload_device(device: torch.device) -> torch.device:
    return device if mm.is_device_cpu(device) else mm.unet_offload_device()


def compute_dtype(choice: str, device: torch.device) -> torch.dtype:
    """'default': bfloat16 where ComfyUI judges it fast on the device (never on the CPU), else float32."""
    _check_choice("dtype", choice, DTYPES)
    if choice == "default":
        return torch.bfloat16 if mm.should_use_bf16(device) else torch.float32
    return getattr(torch, choice)


def keep_loaded(choice: str) -> bool:
    _check_choice("memory", choice, MEMORY_MODES)
    return choice == "keep loaded"


class _Holder(nn.Module):
    """ModelPatcher records the device on the module it wraps (``model.device = ...``); HieraQuery's
    ``device`` is a read-only property, so the patcher wraps this holder instead."""

    def __init__(self, model: HieraQuery) -> None:
        super().__init__()
        self.hieraquery = model


class PatcherResidency:
    """A HieraQuery model managed by ComfyUI's model management, as ComfyUI's own models are."""

    def __init__(self, model: HieraQuery, load_device: torch.device, keep_loaded: bool) -> None:
        self.keep_loaded = keep_loaded
        self.patcher = comfy.model_patcher.ModelPatcher(_Holder(model), load_device=load_device, offload_device=offload_device(load_device))

    @contextmanager
    def active(self) -> Iterator[None]:
        # force_full_load: partial (low-VRAM) loading only handles comfy.ops layers; these are plain
        # transformers/diffusers modules, which must be moved whole (buffers included).
        mm.load_models_gpu([self.patcher], force_full_load=True)
        try:
            yield
        finally:
            if not self.keep_loaded:
                self.offload()

    def offload(self) -> None:
        """Unload this model only (model_management has no per-model call; this is free_memory's own step)."""
        for i, loaded in enumerate(mm.current_loaded_models):
            if loaded.model is self.patcher:
                mm.current_loaded_models.pop(i).model_unload()
                break
        mm.soft_empty_cache()

    @property
    def output_device(self) -> torch.device:
        return mm.intermediate_device()


class ProgressBarSink:
    """Step events -> ComfyUI's progress bar with previews; raises InterruptProcessingException when the
    user pressed Cancel (the exception must not be caught: ComfyUI turns it into 'interrupted')."""

    def __init__(self) -> None:
        self.bar: comfy.utils.ProgressBar | None = None

    def __call__(self, event: StepEvent) -> None:
        mm.throw_exception_if_processing_interrupted()
        if self.bar is None:
            self.bar = comfy.utils.ProgressBar(event.total)
        preview = None
        if event.cheap_preview or event.step == event.steps or args.preview_method != LatentPreviewMethod.NoPreviews:
            preview = ("JPEG", to_pil(event.preview())[0], args.preview_size)
        self.bar.update_absolute(event.value, event.total, preview)
