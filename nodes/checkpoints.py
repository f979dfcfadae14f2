"""Finding HieraQuery checkpoint folders for the Loader node (no ComfyUI import).

A checkpoint is a folder (config.json, hieraquery.safetensors, backbone subfolders), so ComfyUI's
``folder_paths.get_filename_list``, which lists files, cannot list them. Like ComfyUI's own
DiffusersLoader, the search roots (``folder_paths.get_folder_paths("hieraquery")``: ``models/hieraquery/``
and any extra_model_paths.yaml entries) are walked for model folders. A folder counts when it holds a
``config.json`` or a diffusers ``model_index.json``; it is listed and not descended into. Listing a folder
that is *not* a HieraQuery checkpoint (a diffusers pipeline, a bare transformers model) is deliberate:
choosing it gives a clear error naming what it is, rather than a checkpoint that silently never appears.

The bundled ShapesWorld demo (``hieraquery_core/assets/shapesworld-demo``) is listed under its folder name
straight from the package, without copying anything; a folder of the same name in the models folder takes
precedence, as a user's own file would.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..hieraquery_core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, bundled_demo
from ..hieraquery_core.errors import HieraQueryError

MODEL_MARKERS = (CONFIG_NAME, WEIGHTS_NAME, "model_index.json")
"""Files that make a folder a (candidate) model folder."""


def _model_folders(root: Path) -> list[str]:
    """Model folders under ``root``, as '/'-separated paths relative to it (links followed, hidden skipped)."""
    found = []
    for current, subdirs, files in os.walk(root, followlinks=True):
        if any(marker in files for marker in MODEL_MARKERS):
            found.append(Path(current).relative_to(root).as_posix())
            subdirs.clear()  # a checkpoint's transformer/, mllm/, vae/ are not checkpoints of their own
        else:
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))  # .tmp-/.old- folders of atomic saves
    return [name for name in found if name != "."]


def list_checkpoints(roots: Iterable[str | os.PathLike]) -> list[str]:
    """Names of the checkpoint folders under ``roots`` plus the bundled demo, sorted, without duplicates."""
    names = {name for root in roots if Path(root).is_dir() for name in _model_folders(Path(root))}
    demo = bundled_demo()
    if demo is not None:
        names.add(demo.name)
    return sorted(names)


def resolve_checkpoint(name: str, roots: Iterable[str | os.PathLike]) -> Path:
    """The folder a name from :func:`list_checkpoints` stands for; HieraQueryError when there is none."""
    roots = [Path(r) for r in roots]
    relative = Path(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        raise HieraQueryError(f"{name!r} is not a checkpoint name; choose one of the folders listed by the loader")
    for root in roots:
        if (root / relative).is_dir():
            return root / relative
    demo = bundled_demo()
    if demo is not None and name == demo.name:
        return demo
    raise HieraQueryError(missing_checkpoint_message(name, roots))


def missing_checkpoint_message(name: str, roots: Iterable[str | os.PathLike]) -> str:
    searched = ", ".join(str(r) for r in roots) or "(no folder registered)"
    return (f"checkpoint {name!r} was not found in {searched}; put the checkpoint folder (config.json + {WEIGHTS_NAME} + "
            "subfolders) under models/hieraquery/ and refresh the loader")

