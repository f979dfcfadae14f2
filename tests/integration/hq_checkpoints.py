"""Checkpoints and image checks shared by the HieraQuery node tests of the integration tier.

The fixtures are session-scoped and made available to every test module by conftest.py.

* ``demo_checkpoint``: the name the shipped workflows load, ``shapesworld-demo``. When the bundled demo
  (``hieraquery_core/assets/shapesworld-demo``) exists, the pack lists it straight from the package and
  nothing is installed. Before it has been trained, a tiny random checkpoint with the demo's layout (SANA,
  Qwen2.5-VL, pixel space, 64 px) is saved under that name into the server's ``models/hieraquery/`` and
  removed afterwards, so the workflows run as shipped either way (``DEMO_IS_BUNDLED`` says which).
* ``tiny_checkpoint``: a tiny random checkpoint ``hq-test-tiny`` (32 px, pixel space) in ``models/hieraquery/``.
* ``tiny_latent_checkpoint``: the same in a tiny AutoencoderKL's latent space, ``hq-test-tiny-kl``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hieraquery_core.checkpoint import bundled_demo, save_checkpoint

DEMO_NAME = "shapesworld-demo"
DEMO_IS_BUNDLED = bundled_demo() is not None
DEMO_SIZE = 64
"""The demo's image_size: the final scale of its workflows (scales 16, 32 and 64 px)."""
TINY_NAME = "hq-test-tiny"
TINY_LATENT_NAME = "hq-test-tiny-kl"


def models_folder(server) -> Path:
    """The server's models/hieraquery (the pack registers it; created here when missing)."""
    folder = server.comfy_dir / "models" / "hieraquery"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def _install(server, name: str, **tiny_kwargs) -> Path:
    from tiny_models import make_model

    target = models_folder(server) / name
    save_checkpoint(make_model(**tiny_kwargs), target)
    return target


@pytest.fixture(scope="session")
def demo_checkpoint(comfy_server) -> str:
    installed = None if DEMO_IS_BUNDLED else _install(comfy_server, DEMO_NAME, image_size=DEMO_SIZE)
    yield DEMO_NAME
    if installed is not None:
        shutil.rmtree(installed)


@pytest.fixture(scope="session")
def tiny_checkpoint(comfy_server) -> str:
    installed = _install(comfy_server, TINY_NAME)
    yield TINY_NAME
    shutil.rmtree(installed)


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "RGB", f"{path.name} is {img.mode}"
        return np.asarray(img).astype(np.int16)


def assert_not_blank(pixels: np.ndarray, name: str) -> None:
    """A real picture has more than one colour; a blank or constant output has (almost) none."""
    assert pixels.std() > 4.0 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8, f"{name} looks blank"


def messages_of(entry: dict, event: str) -> list[dict]:
    return [data for name, data in entry["status"]["messages"] if name == event]


@pytest.fixture(scope="session")
def tiny_latent_checkpoint(comfy_server) -> str:
    installed = _install(comfy_server, TINY_LATENT_NAME, codec="autoencoder_kl")
    yield TINY_LATENT_NAME
    shutil.rmtree(installed)
