"""Bad input to the HieraQuery nodes in a real ComfyUI: each gives one clear message in ComfyUI's error
record (what the error panel shows), the server keeps running, and nothing in models/hieraquery changes."""

from __future__ import annotations

import json
import shutil

import pytest

from hq_checkpoints import folder_state, messages_of, models_folder


@pytest.fixture(scope="module")
def diffusers_folder(comfy_server):
    """A diffusers pipeline folder (model_index.json + a transformer) dropped into models/hieraquery/."""
    folder = models_folder(comfy_server) / "hq-test-diffusers-pipeline"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "SanaPipeline", "transformer": ["diffusers", "SanaTransformer2DModel"]}))
    (folder / "transformer" / "config.json").write_text(json.dumps({"_class_name": "SanaTransformer2DModel"}))
    yield folder.name
    shutil.rmtree(folder)


def loader(model: str) -> dict:
    return {"class_type": "HieraQueryLoader", "inputs": {"ckpt_name": model, "device": "default", "dtype": "default", "memory": "keep loaded"}}


def generate(model_link, **inputs) -> dict:
    return {"class_type": "HieraQueryGenerate", "inputs": {
        "model": model_link, "prompt": "a red circle", "seed": 0, "steps": 2, "guidance": 4.0, "width": 0, "height": 0,
        "batch_size": 1, "refine_strength": 1.0, **inputs}}


def edit(model_link, image_link, instruction="make it blue") -> dict:
    return {"class_type": "HieraQueryEdit", "inputs": {
        "model": model_link, "image": image_link, "instruction": instruction, "seed": 0, "steps": 2, "guidance": 4.0,
        "image_guidance": 1.5, "refine_strength": 1.0}}


def query_encode(model_link) -> dict:
    return {"class_type": "HieraQueryQueryEncode", "inputs": {"model": model_link, "prompt": "a red circle"}}


def connector(model_link, states_link) -> dict:
    return {"class_type": "HieraQueryConnector", "inputs": {"model": model_link, "query_states": states_link}}


def scale_sampler(model_link, conditions_link, scale: int) -> dict:
    return {"class_type": "HieraQueryScaleSampler", "inputs": {
        "model": model_link, "conditions": conditions_link, "scale": scale, "seed": 0, "steps": 2, "guidance": 4.0, "image_guidance": 1.5,
        "width": 0, "height": 0, "batch_size": 1, "refine_strength": 1.0}}


def empty_image(side: int) -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": side, "height": side, "batch_size": 1, "color": 0x3366CC}}


def save(image_link) -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": image_link, "filename_prefix": "hq_bad_input"}}


def bad_graphs(demo: str, tiny: str, diffusers: str) -> dict[str, tuple[dict, str, str]]:
    """name -> (graph, failing node class, words the message must hold)."""
    return {
        "checkpoint of another kind": (
            {"1": loader(diffusers), "2": generate(["1", 0]), "3": save(["2", 0])},
            "HieraQueryLoader", "diffusers pipeline (model_index.json), not a HieraQuery checkpoint"),
        "unknown weight precision": (
            {"1": {**loader(tiny), "inputs": {**loader(tiny)["inputs"], "dtype": "float8"}}, "2": generate(["1", 0]), "3": save(["2", 0])},
            "HieraQueryLoader", "dtype must be one of 'default', 'float32', 'bfloat16', 'float16', got 'float8'"),
        "image with an alpha channel": (
            {"1": loader(demo), "2": empty_image(64), "3": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
             "4": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["2", 0], "alpha": ["3", 0]}},
             "5": edit(["1", 0], ["4", 0]), "6": save(["5", 0])},
            "HieraQueryEdit", "alpha channel"),
        "image of an unsupported size": (
            {"1": loader(demo), "2": empty_image(60), "3": edit(["1", 0], ["2", 0]), "4": save(["3", 0])},
            "HieraQueryEdit", "a 60x60 target gives scale"),
        "empty instruction": (
            {"1": loader(demo), "2": empty_image(64), "3": edit(["1", 0], ["2", 0], instruction="   "), "4": save(["3", 0])},
            "HieraQueryEdit", "the instruction is empty"),
        "resolution the model cannot take": (
            {"1": loader(demo), "2": generate(["1", 0], width=36, height=36), "3": save(["2", 0])},
            "HieraQueryGenerate", "choose height and width that are multiples of"),
        "scale the model does not have": (
            {"1": loader(tiny), "2": query_encode(["1", 0]), "3": connector(["1", 0], ["2", 0]), "4": scale_sampler(["1", 0], ["3", 0], scale=7),
             "5": save(["4", 0])},
            "HieraQueryScaleSampler", "scale 7 does not exist; this checkpoint has scales 0 = 4x4"),
        "stages from two checkpoints": (
            {"1": loader(tiny), "2": loader(demo), "3": query_encode(["1", 0]), "4": connector(["2", 0], ["3", 0]),
             "5": scale_sampler(["2", 0], ["4", 0], scale=0), "6": save(["5", 0])},
            "HieraQueryConnector", "connect the same HieraQuery loader to every node"),
    }


def test_bad_inputs_give_one_clear_message_and_change_nothing(comfy_server, demo_checkpoint, tiny_checkpoint, diffusers_folder):
    folder = models_folder(comfy_server)
    before = folder_state(folder)
    for case, (graph, node_type, words) in bad_graphs(demo_checkpoint, tiny_checkpoint, diffusers_folder).items():
        pid = comfy_server.queue_prompt(graph)
        entry = comfy_server.wait(pid, timeout=120)
        assert entry["status"]["status_str"] == "error", case
        (error,) = messages_of(entry, "execution_error")
        assert error["node_type"] == node_type, (case, error["node_type"], error["exception_message"])
        assert error["exception_type"].endswith("HieraQueryError"), (case, error["exception_type"])
        assert words in error["exception_message"], (case, error["exception_message"])
        assert comfy_server.is_running(), case
    assert folder_state(folder) == before
    # ... and the next good job runs.
    pid, _ = comfy_server.run({"1": loader(tiny_checkpoint), "2": generate(["1", 0], seed=3), "3": save(["2", 0])}, timeout=120)
    assert len(comfy_server.outputs(pid)) == 1
