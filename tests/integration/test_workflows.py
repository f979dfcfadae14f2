"""The shipped workflows (workflows/*.json) inside a real ComfyUI: listed as templates, converted from the
UI format with the live schema, run through POST /prompt as shipped (the bundled demo checkpoint, see
hq_checkpoints.py), and their images checked: the files exist, have each scale's size, are not blank, and
different seeds differ. Also: progress with previews, interruption mid-sampling, then a normal job.

``HQ_WRITE_DOC_IMAGES=1`` also writes each workflow's pictures to docs/images/<workflow>.png and a
thumbnail to workflows/<workflow>.jpg (the template browser shows it); it refuses unless the bundled demo
is the checkpoint being run.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import textwrap
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import comfyui_harness as harness
from hieraquery_core.checkpoint import BUNDLED_DEMO_EDITS, BUNDLED_DEMO_PROMPT, BUNDLED_DEMO_SAMPLING, BUNDLED_DEMO_SEED, bundled_demo, load_checkpoint
from hq_checkpoints import DEMO_IS_BUNDLED, DEMO_NAME, DEMO_SIZE, assert_not_blank, messages_of, read_rgb

WORKFLOW_DIR = harness.REPO_ROOT / "workflows"
WORKFLOWS = {
    "hieraquery_text_to_image_stages": "coarse to fine from the composable nodes, every scale previewed, the prompt as the MLLM read it shown",
    "hieraquery_text_to_image": "the same with the one-node Generate",
    "hieraquery_edit": "instruction editing",
    "hieraquery_edit_chain": "a chain of three edits",
    "hieraquery_style_transfer": "style transfer",
    "hieraquery_describe": "understanding (Describe, shown with Preview as Text)",
}
SCALE_SIZES = [DEMO_SIZE // 4, DEMO_SIZE // 2, DEMO_SIZE]
WRITE_DOC_IMAGES = os.environ.get("HQ_WRITE_DOC_IMAGES") == "1"
PROMPT_AS_READ = "prompt as the MLLM read it"


def ui_workflow(stem: str) -> dict:
    return json.loads((WORKFLOW_DIR / f"{stem}.json").read_text())


def api_graph(server, stem: str) -> dict:
    return server.workflow_to_api(ui_workflow(stem))


def nodes_of(graph: dict, class_type: str) -> list[str]:
    return sorted((nid for nid, node in graph.items() if node["class_type"] == class_type), key=int)


def expected_sizes(graph: dict, node_id: str) -> list[int]:
    """Image sides an image-output node must show: a scale sampler's scale, every scale for Generate's
    'scales' list (output 1), otherwise the final size."""
    origin_id, slot = graph[node_id]["inputs"]["images"]
    origin = graph[origin_id]
    if origin["class_type"] == "HieraQueryScaleSampler":
        return [SCALE_SIZES[origin["inputs"]["scale"]]]
    if origin["class_type"] == "HieraQueryGenerate" and slot == 1:
        return SCALE_SIZES
    return [DEMO_SIZE]


def node_images(server, entry: dict, node_id: str) -> list[Path]:
    roots = {"output": server.output_dir, "temp": server.temp_dir}
    return [roots[i["type"]] / i.get("subfolder", "") / i["filename"] for i in entry["outputs"].get(node_id, {}).get("images", [])]


def set_seed(graph: dict, seed: int) -> None:
    """Every seed of the graph (widgets, and the PrimitiveInt that drives the scale samplers)."""
    for node in graph.values():
        for key in ("seed", "value"):
            if isinstance(node["inputs"].get(key), int) and (key == "seed" or node["class_type"] == "PrimitiveInt"):
                node["inputs"][key] = seed


def test_workflows_are_the_shipped_set_listed_as_templates_and_load_the_demo(comfy_server):
    assert sorted(p.stem for p in WORKFLOW_DIR.glob("*.json")) == sorted(WORKFLOWS)
    assert sorted(comfy_server.get_json("/workflow_templates")[harness.PACK_FOLDER]) == sorted(WORKFLOWS)
    for stem in WORKFLOWS:
        workflow = ui_workflow(stem)
        loaders = [n for n in workflow["nodes"] if n["type"] == "HieraQueryLoader"]
        assert len(loaders) == 1 and loaders[0]["widgets_values"][0] == DEMO_NAME, stem
        assert any(n["type"] == "Note" for n in workflow["nodes"]), f"{stem}: explain the workflow in a Note"
        seeds = [v[i - 1] for n in workflow["nodes"] if (v := n.get("widgets_values")) for i, w in enumerate(v) if w == "fixed"]
        assert seeds and set(seeds) == {BUNDLED_DEMO_SEED}, f"{stem}: fixed seeds {seeds}; the examples use the demo's seed"


def test_the_workflows_sample_as_the_demo_is():
    """Every Generate node paints with BUNDLED_DEMO_SAMPLING's text-to-image settings (the self-check's candidates
    among them), every Edit and Style Transfer node with its edit settings."""
    s = BUNDLED_DEMO_SAMPLING
    expected = {"HieraQueryGenerate": [s["steps"], s["guidance"], 0, 0, 1, s["refine_strength"], s["candidates"]],
                "HieraQueryEdit": [s["steps"], s["edit_guidance"], 1.5, s["edit_refine_strength"], s["edit_candidates"]]}
    expected["HieraQueryStyleTransfer"] = expected["HieraQueryEdit"]
    for stem in WORKFLOWS:
        for node in ui_workflow(stem)["nodes"]:
            if node["type"] in expected:
                assert node["widgets_values"][3:] == expected[node["type"]], (stem, node["type"], node["widgets_values"])


def test_the_edit_chain_workflow_is_the_chain_publishing_checks():
    """train.publish_demo checks a model to be bundled on BUNDLED_DEMO_PROMPT and BUNDLED_DEMO_EDITS: the shipped chain."""
    workflow = ui_workflow("hieraquery_edit_chain")
    image_from = {(link[3], link[4]): link[1] for link in workflow["links"] if link[5] == "IMAGE"}  # (node, input slot) -> the node it reads
    [node] = [n for n in workflow["nodes"] if n["type"] == "HieraQueryGenerate"]
    assert node["widgets_values"][0] == BUNDLED_DEMO_PROMPT
    chain = []
    while edit := next((n for n in workflow["nodes"] if n["type"] == "HieraQueryEdit" and image_from.get((n["id"], 1)) == node["id"]), None):
        chain.append(edit["widgets_values"][0])
        node = edit
    assert tuple(chain) == BUNDLED_DEMO_EDITS


@pytest.mark.parametrize("stem", sorted(WORKFLOWS))
def test_workflow_runs_as_shipped(comfy_server, demo_checkpoint, stem):
    graph = api_graph(comfy_server, stem)
    pid, entry = comfy_server.run(graph, timeout=240)
    outputs = nodes_of(graph, "SaveImage") + nodes_of(graph, "PreviewImage")
    assert outputs
    panels = []
    for node_id in outputs:
        paths = node_images(comfy_server, entry, node_id)
        sizes = expected_sizes(graph, node_id)
        assert len(paths) == len(sizes), (stem, node_id, paths)
        for path, side in zip(paths, sizes):
            assert path.is_file(), path
            pixels = read_rgb(path)
            assert pixels.shape[:2] == (side, side), (stem, node_id, pixels.shape)
            assert_not_blank(pixels, f"{stem} node {node_id}")
            panels.append((side, graph_position(stem, node_id), pixels))
    answers = shown_texts(graph, entry)
    assert len(answers) == len(nodes_of(graph, "HieraQueryDescribe")) + len(nodes_of(graph, "HieraQueryQueryEncode"))
    assert all(isinstance(a, str) and a.strip() for _, a in answers), answers
    if stem in ("hieraquery_edit", "hieraquery_edit_chain", "hieraquery_style_transfer"):
        source = read_rgb(node_images(comfy_server, entry, next(n for n in nodes_of(graph, "PreviewImage") if graph[n]["_meta"]["title"] == "Source"))[0])
        result = read_rgb(node_images(comfy_server, entry, nodes_of(graph, "SaveImage")[0])[0])
        # repainted, not passed through (how much it changes is the checkpoint's business, not the node's)
        assert not np.array_equal(source, result), f"{stem}: the edit returned its input"
    if WRITE_DOC_IMAGES:
        write_doc_images(stem, panels, answers)


def shown_texts(graph: dict, entry: dict) -> list[tuple[str, str]]:
    """What each Preview as Text node shows: (question, answer) for a Describe node's answer, and
    (PROMPT_AS_READ, text) for Query Encode's ``encoded_prompt``, which must be the prompt as the checkpoint's
    ``HieraQuery.plan`` reads it (the bundled demo plans, so its prompt gains the MLLM's answers)."""
    texts = []
    for nid in nodes_of(graph, "PreviewAny"):
        source = graph[graph[nid]["inputs"]["source"][0]]
        text = entry["outputs"][nid]["text"][0]
        if source["class_type"] == "HieraQueryDescribe":
            texts.append((source["inputs"]["question"], text))
            continue
        assert source["class_type"] == "HieraQueryQueryEncode", source
        prompt = source["inputs"]["prompt"]
        expected = load_checkpoint(bundled_demo()).plan([prompt])[0] if DEMO_IS_BUNDLED else prompt
        assert text == expected and (text != prompt) == DEMO_IS_BUNDLED, (text, expected)
        texts.append((PROMPT_AS_READ, text))
    return texts


def graph_position(stem: str, node_id: str) -> float:
    return next(n["pos"][0] for n in ui_workflow(stem)["nodes"] if str(n["id"]) == node_id)


def final_image(server, graph: dict, seed: int) -> np.ndarray:
    set_seed(graph, seed)
    pid, entry = server.run(graph, timeout=240)
    return read_rgb(node_images(server, entry, nodes_of(graph, "SaveImage")[0])[0])


def test_different_seeds_differ_and_the_stages_match_generate(comfy_server, demo_checkpoint):
    generate = api_graph(comfy_server, "hieraquery_text_to_image")
    a, b = final_image(comfy_server, generate, 11), final_image(comfy_server, generate, 12)
    assert np.abs(a - b).mean() > 1.0, "seeds 11 and 12 gave the same image"
    # The composable stages with one seed reproduce the one-node Generate painting one candidate (scale k draws noise
    # from seed + k); the shipped Generate keeps the self-check's pick of several, which single scales cannot make.
    [node] = nodes_of(generate, "HieraQueryGenerate")
    assert generate[node]["inputs"]["candidates"] > 1
    generate[node]["inputs"]["candidates"] = 1
    stages = final_image(comfy_server, api_graph(comfy_server, "hieraquery_text_to_image_stages"), 11)
    assert np.abs(stages - final_image(comfy_server, generate, 11)).max() <= 1


def sampler_graph(model: str, steps: int, seed: int) -> dict:
    return {
        "1": {"class_type": "HieraQueryLoader", "inputs": {"ckpt_name": model, "device": "default", "dtype": "default", "memory": "keep loaded"}},
        "2": {"class_type": "HieraQueryQueryEncode", "inputs": {"model": ["1", 0], "prompt": "two red circles"}},
        "3": {"class_type": "HieraQueryConnector", "inputs": {"model": ["1", 0], "query_states": ["2", 0]}},
        "4": {"class_type": "HieraQueryScaleSampler", "inputs": {
            "model": ["1", 0], "conditions": ["3", 0], "scale": 2, "seed": seed, "steps": steps, "guidance": 4.0, "image_guidance": 1.5,
            "width": 0, "height": 0, "batch_size": 1, "refine_strength": 1.0}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "hq_sampler"}},
    }


async def _watch(server, graph: dict, interrupt_after_progress: bool) -> tuple[str, list[dict], list[bytes]]:
    """Queue ``graph`` with a websocket client; collect its messages until the prompt ends (interrupting it
    at its first progress message when asked)."""
    import aiohttp

    client_id = f"hq-nodes-{time.monotonic_ns()}"
    texts, binaries = [], []
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.base_url}/ws?clientId={client_id}") as ws:
            pid = await loop.run_in_executor(None, lambda: server.queue_prompt(graph, client_id=client_id))
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                msg = await ws.receive(timeout=240)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    binaries.append(bytes(msg.data))
                    continue
                data = json.loads(msg.data)
                texts.append(data)
                if interrupt_after_progress and data["type"] == "progress" and data["data"]["prompt_id"] == pid:
                    await loop.run_in_executor(None, lambda: server.interrupt(pid))
                    interrupt_after_progress = False
                if data["type"] in ("execution_interrupted", "execution_error") or (
                        data["type"] == "executing" and data["data"].get("node") is None and data["data"].get("prompt_id") == pid):
                    break
    return pid, texts, binaries


@pytest.mark.parametrize("space", ["pixel", "latent"])
def test_sampler_reports_every_step_with_a_preview_of_the_scale(comfy_server, tiny_checkpoint, tiny_latent_checkpoint, space):
    """One progress update per step. Previews: every step in pixel space (free); in latent space, where each
    costs a VAE decode, only at the end of the scale unless ComfyUI runs with --preview-method (this server
    does not; nodes/comfy_runtime.py)."""
    steps = 4
    model = tiny_checkpoint if space == "pixel" else tiny_latent_checkpoint
    pid, texts, binaries = asyncio.run(_watch(comfy_server, sampler_graph(model, steps, seed=21), False))
    progress = [m["data"] for m in texts if m["type"] == "progress" and m["data"]["node"] == "4"]
    assert [p["value"] for p in progress] == list(range(1, steps + 1)) and all(p["max"] == steps for p in progress)
    previews = [b for b in binaries if struct.unpack(">I", b[:4])[0] == 1]  # PREVIEW_IMAGE, JPEG
    assert len(previews) == (steps if space == "pixel" else 1)
    with Image.open(BytesIO(previews[-1][8:])) as jpeg:
        assert jpeg.format == "JPEG" and jpeg.size[0] == jpeg.size[1]


def test_interrupt_mid_sampling_stops_the_job_and_the_next_job_runs(comfy_server, demo_checkpoint):
    slow = sampler_graph(demo_checkpoint, steps=1000, seed=31)  # minutes if not interrupted
    t0 = time.monotonic()
    pid, texts, _ = asyncio.run(_watch(comfy_server, slow, True))
    entry = comfy_server.wait(pid, timeout=60)
    assert time.monotonic() - t0 < 60
    assert entry["status"]["status_str"] == "error"
    (interrupted,) = messages_of(entry, "execution_interrupted")
    assert interrupted["node_id"] == "4" and interrupted["node_type"] == "HieraQueryScaleSampler"
    steps_done = [m["data"]["value"] for m in texts if m["type"] == "progress" and m["data"]["node"] == "4"]
    assert steps_done and max(steps_done) < 1000
    assert comfy_server.outputs(pid) == []

    pid2, entry2 = comfy_server.run(sampler_graph(demo_checkpoint, steps=2, seed=32), timeout=120)
    (path,) = comfy_server.outputs(pid2)
    assert read_rgb(path).shape[:2] == (DEMO_SIZE, DEMO_SIZE)


# ---------------------------------------------------------------------------- docs/images (opt-in)


def write_doc_images(stem: str, panels: list[tuple[int, float, np.ndarray]], answers: list[tuple[str, str]]) -> None:
    """The workflow's pictures side by side (smallest scale first, then left to right in the graph, repeats
    dropped), each enlarged to 128 px with nearest neighbour; Describe's questions and answers (and the prompt as
    the MLLM read it) underneath."""
    assert DEMO_IS_BUNDLED, "docs/images must show the bundled demo checkpoint, which has not been trained yet"
    unique = []
    for side, x, pixels in sorted(panels, key=lambda p: (p[0], p[1])):
        if not any(pixels.shape == u.shape and np.array_equal(pixels, u) for u in unique):
            unique.append(pixels)
    tile, gap, char = 128, 8, 6  # char: about the width of one glyph of PIL's default font
    tiles = len(unique) * (tile + gap) - gap
    lines = [wrapped for question, answer in answers for wrapped in textwrap.wrap(f"{question}: {answer}", max(tiles // char, 40))]
    height = tile + (18 * len(lines) + 8 if lines else 0)
    width = max(tiles, char * max((len(line) for line in lines), default=0) + 4)
    sheet = Image.new("RGB", (width, height), "white")
    for i, pixels in enumerate(unique):
        sheet.paste(Image.fromarray(pixels.astype(np.uint8)).resize((tile, tile), Image.NEAREST), (i * (tile + gap), 0))
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(lines):
        draw.text((2, tile + 6 + 18 * i), line, fill="black")
    sheet.save(harness.REPO_ROOT / "docs" / "images" / f"{stem}.png", optimize=True)
    sheet.save(WORKFLOW_DIR / f"{stem}.jpg", quality=90)
