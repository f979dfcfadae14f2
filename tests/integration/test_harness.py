"""The harness and the pack inside a real ComfyUI server (see conftest.py).

The fixture nodes (tests/integration/fixture_pack) stand in for the real HieraQuery nodes until
those exist: they prove that a V3 node pack loads, is listed in /object_info, runs through
POST /prompt into the native SaveImage node, reports progress with previews, can be
interrupted, and that validation and execution errors come back the way ComfyUI reports them.
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

import comfyui_harness as harness  # tests/ is put on sys.path by conftest.py

PACK_FOLDER, FIXTURE_FOLDER = harness.PACK_FOLDER, harness.FIXTURE_PACK_FOLDER
REPO_ROOT, FIXTURE_PACK_DIR = harness.REPO_ROOT, harness.FIXTURE_PACK_DIR


def render_graph(*, seed: int, width: int = 64, height: int = 48, steps: int = 3, step_delay: float = 0.0,
                 fail: bool = False, variant: str = "invert", prefix: str = "hq_test") -> dict:
    return {
        "1": {"class_type": "HQFixtureModelLoader", "inputs": {"variant": variant}},
        "2": {"class_type": "HQFixtureRender",
              "inputs": {"model": ["1", 0], "seed": seed, "width": width, "height": height, "steps": steps,
                         "step_delay": step_delay, "fail": fail}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def expected_pixels(seed: int, width: int, height: int, variant: str):
    """What HQFixtureRender + SaveImage must write (SaveImage: clip(255 * x) as uint8)."""
    import numpy as np
    import torch

    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))
    y = (1.0 - x) if variant == "invert" else x
    return np.clip(255.0 * y[0].permute(1, 2, 0).numpy(), 0, 255).astype(np.uint8)


def messages_of(entry: dict, event: str) -> list[dict]:
    return [data for name, data in entry["status"]["messages"] if name == event]


# ---------------------------------------------------------------------------- start-up


def test_server_runs_expected_comfyui_version(comfy_server):
    assert comfy_server.version == harness.EXPECTED_COMFYUI_VERSION, (
        "docs/comfyui-v3-notes.md cites ComfyUI 0.3.75 line numbers; re-check them for "
        f"{comfy_server.version}")
    assert comfy_server.is_running()


def test_pack_and_fixture_pack_imported_without_failure(comfy_server):
    imports = {rec["name"]: rec for rec in comfy_server.custom_node_imports()}
    for folder in (PACK_FOLDER, FIXTURE_FOLDER):
        assert folder in imports, f"{folder} missing from the import-times block:\n{comfy_server.log_tail(40)}"
        assert not imports[folder]["failed"], f"{folder} IMPORT FAILED:\n{comfy_server.log_tail(80)}"
    pack_lines = [line for line in comfy_server.log_text().splitlines() if PACK_FOLDER in line]
    assert pack_lines and not any("IMPORT FAILED" in line for line in pack_lines)
    # "Skip ... lack of NODE_CLASS_MAPPINGS" would mean comfy_entrypoint was not found.
    assert not any("Skip" in line for line in pack_lines)
    assert "Error while calling comfy_entrypoint" not in comfy_server.log_text()


def test_pack_registers_its_model_folder(comfy_server):
    assert "hieraquery" in comfy_server.get_json("/models")
    assert comfy_server.get_json("/models/hieraquery") == []


def test_fixture_nodes_listed_in_object_info(comfy_server):
    render = comfy_server.object_info("HQFixtureRender")
    loader = comfy_server.object_info("HQFixtureModelLoader")
    assert loader["output"] == ["HQ_FIXTURE_MODEL"] and loader["output_name"] == ["model"]
    assert loader["input"]["required"]["variant"][0] == "COMBO"
    assert loader["input"]["required"]["variant"][1]["options"] == ["identity", "invert"]
    req = render["input"]["required"]
    assert req["model"][0] == "HQ_FIXTURE_MODEL"
    assert req["seed"][1]["control_after_generate"] is True
    assert req["width"][1]["tooltip"] == "multiple of 8"
    assert render["input"]["optional"]["tint"][0] == "STRING"
    assert render["input_order"]["required"][:3] == ["model", "seed", "width"]
    assert render["output"] == ["IMAGE"]
    assert render["category"] == "HieraQuery/testing"
    assert render["python_module"] == f"custom_nodes.{FIXTURE_FOLDER}"
    with pytest.raises(KeyError):
        comfy_server.object_info("NoSuchNodeAnywhere")


# ---------------------------------------------------------------------------- execution


def test_graph_runs_end_to_end_into_native_save_image(comfy_server):
    import numpy as np

    seed, width, height = 101, 64, 48
    pid, entry = comfy_server.run(render_graph(seed=seed, width=width, height=height, prefix="hq_e2e"))
    assert entry["status"]["status_str"] == "success"
    assert messages_of(entry, "execution_success")
    paths = comfy_server.outputs(pid)
    assert len(paths) == 1 and paths[0].suffix == ".png" and paths[0].is_file()
    assert paths[0].parent == comfy_server.output_dir and paths[0].name.startswith("hq_e2e_")
    with Image.open(paths[0]) as img:
        assert img.size == (width, height) and img.mode == "RGB"
        saved_prompt = json.loads(img.info["prompt"])  # SaveImage embeds the API graph
        pixels = np.asarray(img)
    assert saved_prompt["2"]["class_type"] == "HQFixtureRender"
    diff = np.abs(pixels.astype(int) - expected_pixels(seed, width, height, "invert").astype(int))
    assert diff.max() <= 1


def test_identical_prompt_is_served_from_cache(comfy_server):
    graph = render_graph(seed=151, prefix="hq_cache")
    pid1, _ = comfy_server.run(graph)
    pid2, entry2 = comfy_server.run(graph)
    (cached,) = messages_of(entry2, "execution_cached")
    assert sorted(cached["nodes"]) == ["1", "2", "3"]
    # history repeats the first file; nothing new is written
    assert comfy_server.outputs(pid2) == comfy_server.outputs(pid1)
    assert len(list(comfy_server.output_dir.glob("hq_cache_*.png"))) == 1


def test_progress_and_jpeg_previews_reach_a_websocket_client(comfy_server):
    import aiohttp

    client_id = "hq-ws-test"
    steps = 3
    graph = render_graph(seed=202, steps=steps, prefix="hq_ws")

    async def collect():
        texts, binaries = [], []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{comfy_server.base_url}/ws?clientId={client_id}") as ws:
                loop = asyncio.get_running_loop()
                pid = await loop.run_in_executor(None, lambda: comfy_server.queue_prompt(graph, client_id=client_id))
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    msg = await ws.receive(timeout=60)
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        data = json.loads(msg.data)
                        texts.append(data)
                        if data["type"] == "executing" and data["data"].get("node") is None \
                                and data["data"].get("prompt_id") == pid:
                            break
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        binaries.append(bytes(msg.data))
                    else:
                        break
        return pid, texts, binaries

    pid, texts, binaries = asyncio.run(collect())
    progress = [m["data"] for m in texts if m["type"] == "progress" and m["data"]["node"] == "2"]
    assert [p["value"] for p in progress] == list(range(1, steps + 1))
    assert all(p["max"] == steps and p["prompt_id"] == pid for p in progress)
    # Clients that do not announce "supports_preview_metadata" get event 1 (PREVIEW_IMAGE):
    # 4-byte event type, 4-byte image type (1 = JPEG), then the encoded image.
    previews = [b for b in binaries if struct.unpack(">I", b[:4])[0] == 1]
    assert len(previews) == steps
    assert struct.unpack(">I", previews[0][4:8])[0] == 1 and previews[0][8:10] == b"\xff\xd8"
    with Image.open(BytesIO(previews[0][8:])) as jpeg:
        # server.send_image fits the preview into (max_size, max_size) with ImageOps.contain,
        # which also enlarges: a 64x48 image with max_size 512 arrives as 512x384.
        assert jpeg.format == "JPEG" and jpeg.size == (512, 384)


def test_interrupt_stops_a_running_job_and_the_next_job_runs(comfy_server):
    slow = render_graph(seed=303, steps=3000, step_delay=0.01, prefix="hq_slow")  # ~30 s if not interrupted
    pid = comfy_server.queue_prompt(slow)
    comfy_server.wait_until_running(pid, timeout=30)
    t0 = time.monotonic()
    entry = comfy_server.interrupt_and_wait(pid, timeout=30)
    assert time.monotonic() - t0 < 15
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    interrupted = messages_of(entry, "execution_interrupted")
    assert interrupted and interrupted[0]["node_id"] == "2" and interrupted[0]["node_type"] == "HQFixtureRender"
    assert comfy_server.outputs(pid) == []

    pid2, entry2 = comfy_server.run(render_graph(seed=304, prefix="hq_after_interrupt"))
    assert entry2["status"]["status_str"] == "success"
    assert len(comfy_server.outputs(pid2)) == 1


# ---------------------------------------------------------------------------- errors


def test_bad_link_returns_node_errors_and_server_keeps_running(comfy_server):
    bad = render_graph(seed=405, prefix="hq_bad")
    bad["3"]["inputs"]["images"] = ["1", 0]  # HQ_FIXTURE_MODEL into an IMAGE input
    with pytest.raises(harness.PromptRejected) as info:
        comfy_server.queue_prompt(bad)
    err = info.value
    assert err.status == 400
    assert err.error["type"] == "prompt_outputs_failed_validation"
    assert set(err.node_errors) == {"3"}
    node_err = err.node_errors["3"]
    assert node_err["class_type"] == "SaveImage" and node_err["dependent_outputs"] == ["3"]
    assert node_err["errors"][0]["type"] == "return_type_mismatch"
    assert node_err["errors"][0]["extra_info"]["input_name"] == "images"
    assert node_err["errors"][0]["extra_info"]["received_type"] == "HQ_FIXTURE_MODEL"

    dangling = render_graph(seed=406, prefix="hq_bad")
    dangling["3"]["inputs"]["images"] = ["99", 0]  # link to a node that does not exist
    with pytest.raises(harness.PromptRejected) as info:
        comfy_server.queue_prompt(dangling)
    assert info.value.node_errors["3"]["errors"][0]["type"] == "exception_during_validation"

    assert comfy_server.is_running()
    assert "SaveImage" in comfy_server.object_info()
    pid, entry = comfy_server.run(render_graph(seed=407, prefix="hq_after_bad"))
    assert len(comfy_server.outputs(pid)) == 1


def test_validate_inputs_message_becomes_a_node_error(comfy_server):
    with pytest.raises(harness.PromptRejected) as info:
        comfy_server.queue_prompt(render_graph(seed=501, width=60))
    errors = info.value.node_errors["2"]["errors"]
    assert errors[0]["type"] == "custom_validation_failed"
    assert "multiples of 8 (got 60x48)" in errors[0]["details"]


def test_exception_in_execute_is_reported_in_history(comfy_server):
    pid = comfy_server.queue_prompt(render_graph(seed=601, fail=True))
    entry = comfy_server.wait(pid, timeout=60)
    assert entry["status"]["status_str"] == "error"
    (err,) = messages_of(entry, "execution_error")
    assert err["node_id"] == "2" and err["node_type"] == "HQFixtureRender"
    assert err["exception_type"] == "RuntimeError"
    assert "HQ fixture failure requested" in err["exception_message"]
    # "executed" lists nodes run by this prompt before the failure; cached ones are not in it.
    assert err["traceback"] and "2" not in err["executed"]
    assert err["current_inputs"]["seed"] == [601]
    with pytest.raises(harness.ExecutionFailed):
        comfy_server.wait(pid, timeout=5, check=True)


# ---------------------------------------------------------------------------- workflows

FIXTURE_WORKFLOW = FIXTURE_PACK_DIR / "workflows" / "hq_fixture_smoke.json"


def test_ui_workflow_converts_to_the_expected_api_graph_and_runs(comfy_server):
    workflow = json.loads(FIXTURE_WORKFLOW.read_text())
    api = comfy_server.workflow_to_api(workflow)
    for entry in api.values():
        entry.pop("_meta")
    assert api == {
        "1": {"class_type": "HQFixtureModelLoader", "inputs": {"variant": "invert"}},
        # seed from the PrimitiveInt node (a real node), steps from a front-end PrimitiveNode,
        # the model through a Reroute; "fixed" (control_after_generate) is not sent.
        "3": {"class_type": "HQFixtureRender",
              "inputs": {"model": ["1", 0], "seed": ["5", 0], "width": 64, "height": 48, "steps": 3,
                         "step_delay": 0, "fail": False, "tint": ""}},
        # the bypassed ImageInvert is skipped, the muted PreviewImage and the Note are dropped
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "hq_fixture_ui"}},
        "5": {"class_type": "PrimitiveInt", "inputs": {"value": 1234}},
    }
    pid, entry = comfy_server.run(api)
    (path,) = comfy_server.outputs(pid)
    with Image.open(path) as img:
        assert img.size == (64, 48)


def test_workflow_templates_endpoint_lists_pack_workflows(comfy_server):
    templates = comfy_server.get_json("/workflow_templates")
    assert templates.get(FIXTURE_FOLDER) == ["hq_fixture_smoke"]
    served = comfy_server.get_json(f"/api/workflow_templates/{FIXTURE_FOLDER}/hq_fixture_smoke.json")
    assert served == json.loads(FIXTURE_WORKFLOW.read_text())
    repo_templates = sorted(p.stem for p in (REPO_ROOT / "workflows").glob("*.json"))
    if repo_templates:
        assert sorted(templates.get(PACK_FOLDER, [])) == repo_templates
    else:
        assert PACK_FOLDER not in templates


def test_repo_workflow_templates_convert_against_the_live_schema(comfy_server):
    files = sorted((REPO_ROOT / "workflows").glob("*.json"))
    if not files:
        pytest.skip("workflows/ holds no templates yet")
    info = comfy_server.object_info()
    for path in files:
        api = harness.workflow_to_api(json.loads(path.read_text()), info)
        assert api, f"{path.name} converted to an empty graph"


def test_official_templates_convert_against_the_live_schema(comfy_server):
    """The UI-format templates of comfyui-workflow-templates (a ComfyUI requirement) as a corpus:
    each converts, or is refused for a documented reason (missing node class, subgraph)."""
    import importlib.util

    roots = []
    for name in ("comfyui_workflow_templates_core", "comfyui_workflow_templates_media_image",
                 "comfyui_workflow_templates_media_video", "comfyui_workflow_templates_media_other",
                 "comfyui_workflow_templates_media_api"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots += [Path(p) / "templates" for p in spec.submodule_search_locations]
    files = sorted(f for root in roots for f in root.glob("*.json"))
    assert files, "comfyui-workflow-templates ships no templates?"
    info = comfy_server.object_info()
    converted, refused = 0, []
    for path in files:
        workflow = json.loads(path.read_text(encoding="utf-8"))
        if "nodes" not in workflow:
            continue
        try:
            api = harness.workflow_to_api(workflow, info, strict=False)
        except harness.WorkflowConversionError as exc:
            assert "not registered" in str(exc) or "subgraph" in str(exc), f"{path.name}: {exc}"
            refused.append(path.name)
            continue
        converted += 1
        for entry in api.values():
            assert entry["class_type"] in info
            for value in entry["inputs"].values():
                if isinstance(value, list):
                    assert value[0] in api, f"{path.name}: dangling link {value}"
    # 81 convert with the pinned packages (API-node templates are refused: --disable-api-nodes).
    assert converted >= 75, (converted, len(refused))


def test_default_frontend_graph_converts_like_the_front_end(comfy_server):
    """The front end's own default graph (src/scripts/defaultGraph.ts, frontend 1.32.9)."""
    default_graph = {
        "nodes": [
            {"id": 7, "type": "CLIPTextEncode", "mode": 0, "inputs": [{"name": "clip", "type": "CLIP", "link": 5}],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [6]}],
             "widgets_values": ["text, watermark"]},
            {"id": 6, "type": "CLIPTextEncode", "mode": 0, "inputs": [{"name": "clip", "type": "CLIP", "link": 3}],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [4]}],
             "widgets_values": ["beautiful scenery"]},
            {"id": 5, "type": "EmptyLatentImage", "mode": 0,
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": [2]}], "widgets_values": [512, 512, 1]},
            {"id": 3, "type": "KSampler", "mode": 0,
             "inputs": [{"name": "model", "type": "MODEL", "link": 1},
                        {"name": "positive", "type": "CONDITIONING", "link": 4},
                        {"name": "negative", "type": "CONDITIONING", "link": 6},
                        {"name": "latent_image", "type": "LATENT", "link": 2}],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": [7]}],
             "widgets_values": [156680208700286, True, 20, 8, "euler", "normal", 1]},
            {"id": 8, "type": "VAEDecode", "mode": 0,
             "inputs": [{"name": "samples", "type": "LATENT", "link": 7}, {"name": "vae", "type": "VAE", "link": 8}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [9]}]},
            {"id": 9, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 9}]},
            {"id": 4, "type": "CheckpointLoaderSimple", "mode": 0,
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]}, {"name": "CLIP", "type": "CLIP", "links": [3, 5]},
                         {"name": "VAE", "type": "VAE", "links": [8]}],
             "widgets_values": ["v1-5-pruned-emaonly.safetensors"]},
        ],
        "links": [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
                  [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"],
                  [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 8, 1, "VAE"], [9, 8, 0, 9, 0, "IMAGE"]],
        "version": 0.4,
    }
    api = comfy_server.workflow_to_api(default_graph)
    assert api["3"]["inputs"] == {"seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler",
                                  "scheduler": "normal", "denoise": 1, "model": ["4", 0], "positive": ["6", 0],
                                  "negative": ["7", 0], "latent_image": ["5", 0]}
    assert api["9"]["inputs"] == {"filename_prefix": "ComfyUI", "images": ["8", 0]}  # no widgets_values saved
    assert api["8"]["inputs"] == {"samples": ["3", 0], "vae": ["4", 2]}
    assert api["4"]["inputs"] == {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}
    assert api["5"]["inputs"] == {"width": 512, "height": 512, "batch_size": 1}


# ---------------------------------------------------------------------------- outside ComfyUI


def test_pack_root_imports_cleanly_without_comfyui():
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('comfy_api') is None, 'comfy_api must not be importable here'\n"
        f"spec = importlib.util.spec_from_file_location('hieraquery_pack', {str(REPO_ROOT / '__init__.py')!r},\n"
        f"    submodule_search_locations=[{str(REPO_ROOT)!r}])\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['hieraquery_pack'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "assert not hasattr(mod, 'comfy_entrypoint') and not hasattr(mod, 'NODE_CLASS_MAPPINGS')\n"
        "import hieraquery_pack.nodes\n"
        "assert 'torch' not in sys.modules and 'comfy_api' not in sys.modules\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
