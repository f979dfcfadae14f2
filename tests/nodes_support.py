"""Shared by the node unit tests (tests/test_nodes_*.py): the pack imported the way ComfyUI imports it, and
tiny checkpoints to load.

ComfyUI imports the repository root as a package, so the node modules reach the library through relative
imports (``from ..hieraquery_core ...``). Here the root is imported as the package ``hq_pack`` in the same
way; ``hq_pack.hieraquery_core`` is then a second copy of the library, next to the ``hieraquery_core`` the
other tests use (checkpoints written by one are read by the other; exceptions are compared as ValueError).
No ComfyUI module is imported: the root ``__init__`` exposes nothing outside ComfyUI and ``nodes.jobs``,
``nodes.checkpoints`` and ``nodes.runtime`` never import ComfyUI.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK = "hq_pack"


def pack_module(name: str):
    """``hq_pack.<name>``, e.g. ``pack_module("nodes.jobs")``."""
    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{PACK}.{name}")


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``folder``: to check that loading changes nothing."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def checkpoint_root(tmp_path_factory) -> Path:
    """A models/hieraquery-like folder holding the tiny checkpoint ``tiny`` (SANA + Qwen2.5-VL, pixel space,
    scales 8/16/32 px of a 32 px image) and ``team/tiny-kl`` (SD3 + AutoencoderKL latents)."""
    from hieraquery_core.checkpoint import save_checkpoint
    from tiny_models import make_model

    root = tmp_path_factory.mktemp("hieraquery")
    save_checkpoint(make_model(), root / "tiny")
    save_checkpoint(make_model("sd3", "qwen2_5_vl", "autoencoder_kl"), root / "team" / "tiny-kl")
    return root


@pytest.fixture(scope="module")
def loaded(checkpoint_root):
    """The tiny pixel-space checkpoint through the Loader's job function (do not mutate)."""
    return pack_module("nodes.jobs").load_model("tiny", [checkpoint_root])
