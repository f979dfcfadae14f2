"""V3 extension of the HieraQuery pack (imported only inside ComfyUI).

ComfyUI 0.3.75 loads a pack through ``comfy_entrypoint`` when the pack module has no
``NODE_CLASS_MAPPINGS``: it awaits ``comfy_entrypoint()``, checks that the result is a
``ComfyExtension``, awaits ``get_node_list()`` and registers each class under
``define_schema().node_id`` (nodes.py, load_custom_node).  It never calls
``ComfyExtension.on_load`` in 0.3.75, so start-up work is done in ``comfy_entrypoint`` itself
(idempotently, in case a later ComfyUI also calls ``on_load``).
"""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import ComfyExtension, io

# MODEL_FOLDER: folder under ComfyUI's models/ (and key in folder_paths.folder_names_and_paths) that
# holds HieraQuery checkpoints.  Users may declare more locations for it in extra_model_paths.yaml.
from .comfy_runtime import MODEL_FOLDER
from .loader import HieraQueryLoader
from .stages import HieraQueryConnector, HieraQueryQueryEncode, HieraQueryScaleSampler
from .tasks import HieraQueryDescribe, HieraQueryEdit, HieraQueryGenerate, HieraQueryStyleTransfer


def node_classes() -> list[type[io.ComfyNode]]:
    """Every node class this pack provides (a failing node module fails the pack's import, visibly)."""
    return [
        HieraQueryLoader,
        HieraQueryQueryEncode, HieraQueryConnector, HieraQueryScaleSampler,
        HieraQueryGenerate, HieraQueryEdit, HieraQueryStyleTransfer, HieraQueryDescribe,
    ]


def register_model_folder() -> None:
    """Make ``models/hieraquery`` known to folder_paths without overwriting anything.

    If an extra_model_paths.yaml (loaded before custom nodes, main.py apply_custom_paths) or
    another pack already declared the folder, the default path is appended to that entry and
    its paths and extensions are kept; otherwise a new entry is created.
    """
    default_path = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    if MODEL_FOLDER in folder_paths.folder_names_and_paths:
        # add_model_folder_path appends (is_default=False) and ignores a path already listed.
        folder_paths.add_model_folder_path(MODEL_FOLDER, default_path)
    else:
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = (
            [default_path], set(folder_paths.supported_pt_extensions))


class HieraQueryExtension(ComfyExtension):
    async def on_load(self) -> None:  # not called by ComfyUI 0.3.75; harmless if a later one does
        register_model_folder()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_classes()


async def comfy_entrypoint() -> HieraQueryExtension:
    register_model_folder()
    return HieraQueryExtension()
