"""The HieraQuery nodes as ComfyUI sees them: /object_info (inputs, tooltips, outputs, descriptions, seed
widgets, the loader's checkpoint list) and validation of bad graphs (node_errors, never a crash)."""

from __future__ import annotations

import pytest

import comfyui_harness as harness
from hq_checkpoints import DEMO_NAME, TINY_NAME

NODES = {
    # node id: (required inputs in order, optional inputs, output types, output names)
    "HieraQueryLoader": (["ckpt_name", "device", "dtype", "memory"], [], ["HIERAQUERY_MODEL"], ["model"]),
    "HieraQueryQueryEncode": (["model", "prompt"], ["image"], ["HQ_QUERY_STATES", "STRING"], ["query_states", "encoded_prompt"]),
    "HieraQueryConnector": (["model", "query_states"], [], ["HQ_CONDITIONS"], ["conditions"]),
    "HieraQueryScaleSampler": (
        ["model", "conditions", "scale", "seed", "steps", "guidance", "image_guidance", "width", "height", "batch_size", "refine_strength"],
        ["previous"], ["IMAGE", "LATENT"], ["image", "latent"]),
    "HieraQueryGenerate": (
        ["model", "prompt", "seed", "steps", "guidance", "width", "height", "batch_size", "refine_strength"], ["candidates"],
        ["IMAGE", "IMAGE", "IMAGE"], ["image", "scales", "scales_batch"]),
    "HieraQueryEdit": (["model", "image", "instruction", "seed", "steps", "guidance", "image_guidance", "refine_strength"], ["candidates"], ["IMAGE"], ["image"]),
    "HieraQueryStyleTransfer": (["model", "image", "instruction", "seed", "steps", "guidance", "image_guidance", "refine_strength"], ["candidates"], ["IMAGE"], ["image"]),
    "HieraQueryDescribe": (["model", "image", "question", "max_new_tokens"], [], ["STRING"], ["text"]),
}


def test_every_node_is_listed_with_its_inputs_tooltips_outputs_and_description(comfy_server):
    info = comfy_server.object_info()
    ours = sorted(name for name, node in info.items() if node["python_module"] == f"custom_nodes.{harness.PACK_FOLDER}")
    assert ours == sorted(NODES)
    for name, (required, optional, outputs, output_names) in NODES.items():
        node = info[name]
        assert node["input_order"]["required"] == required, name
        assert node["input_order"].get("optional", []) == optional, name
        assert node["output"] == outputs and node["output_name"] == output_names, name
        assert node["category"].startswith("HieraQuery") and node["display_name"].startswith("HieraQuery "), name
        assert len(node["description"]) > 40, f"{name} needs a description"
        for section in ("required", "optional"):
            for input_name, spec in node["input"].get(section, {}).items():
                assert len(spec[1].get("tooltip", "")) > 15, f"{name}.{input_name} needs a tooltip"
        assert all(len(t or "") > 10 for t in node["output_tooltips"]), name
    generate = info["HieraQueryGenerate"]
    assert generate["output_is_list"] == [False, True, False]
    assert info["HieraQueryStyleTransfer"]["input"]["required"]["instruction"][1]["display_name"] == "style"


def test_seeds_are_comfyui_seed_widgets(comfy_server):
    for name in ("HieraQueryScaleSampler", "HieraQueryGenerate", "HieraQueryEdit", "HieraQueryStyleTransfer"):
        kind, opts = comfy_server.object_info(name)["input"]["required"]["seed"]
        assert kind == "INT" and opts["control_after_generate"] is True and opts["min"] == 0 and opts["max"] == 2**64 - 1


def test_loader_lists_checkpoint_folders_and_the_bundled_demo(comfy_server, demo_checkpoint, tiny_checkpoint):
    required = comfy_server.object_info("HieraQueryLoader")["input"]["required"]
    options = required["ckpt_name"][1]["options"]
    assert DEMO_NAME in options and TINY_NAME in options
    assert not any(o.startswith(TINY_NAME + "/") for o in options), "a checkpoint's subfolders are not checkpoints"
    assert required["device"][1]["options"] == ["default", "cpu"]
    assert required["memory"][1]["options"] == ["keep loaded", "offload after use"]


def tiny_graph(model: str, **generate_inputs) -> dict:
    return {
        "1": {"class_type": "HieraQueryLoader", "inputs": {"ckpt_name": model, "device": "default", "dtype": "default", "memory": "keep loaded"}},
        "2": {"class_type": "HieraQueryGenerate", "inputs": {
            "model": ["1", 0], "prompt": "a red circle", "seed": 0, "steps": 2, "guidance": 4.0, "width": 0, "height": 0,
            "batch_size": 1, "refine_strength": 1.0, **generate_inputs}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "hq_schema"}},
    }


@pytest.mark.parametrize(("change", "node", "error_type", "input_name"), [
    (lambda g: g["2"]["inputs"].update(model=["2", 0]), "2", "return_type_mismatch", "model"),              # IMAGE into the model socket
    (lambda g: g["3"]["inputs"].update(images=["1", 0]), "3", "return_type_mismatch", "images"),            # HIERAQUERY_MODEL into SaveImage
    (lambda g: g["2"]["inputs"].update(steps=0), "2", "value_smaller_than_min", "steps"),
    (lambda g: g["2"]["inputs"].update(guidance=50.0), "2", "value_bigger_than_max", "guidance"),
    # V3 combos are not membership-checked by ComfyUI 0.3.75; the loader checks the checkpoint name itself.
    (lambda g: g["1"]["inputs"].update(ckpt_name="no-such-checkpoint"), "1", "custom_validation_failed", "ckpt_name"),
    (lambda g: g["2"]["inputs"].pop("prompt"), "2", "required_input_missing", "prompt"),
])
def test_bad_links_and_values_are_refused_with_node_errors(comfy_server, tiny_checkpoint, change, node, error_type, input_name):
    graph = tiny_graph(tiny_checkpoint)
    change(graph)
    with pytest.raises(harness.PromptRejected) as rejected:
        comfy_server.queue_prompt(graph)
    errors = rejected.value.node_errors[node]["errors"]
    assert errors[0]["type"] == error_type and errors[0]["extra_info"]["input_name"] == input_name, errors
    if error_type == "custom_validation_failed":
        assert "'no-such-checkpoint' was not found in" in errors[0]["details"] and "models/hieraquery" in errors[0]["details"]
    assert comfy_server.is_running()


def test_a_valid_graph_runs_after_refusals(comfy_server, tiny_checkpoint):
    pid, entry = comfy_server.run(tiny_graph(tiny_checkpoint, seed=5), timeout=120)
    assert len(comfy_server.outputs(pid)) == 1


@pytest.mark.parametrize(("device", "dtype", "memory"), [("cpu", "float32", "offload after use"), ("default", "bfloat16", "keep loaded")])
def test_loader_device_precision_and_memory_choices_run(comfy_server, tiny_checkpoint, device, dtype, memory):
    graph = tiny_graph(tiny_checkpoint)
    graph["1"]["inputs"].update(device=device, dtype=dtype, memory=memory)
    for seed in (7, 8):  # the second run finds the model where the first left it (offloaded or kept)
        graph["2"]["inputs"]["seed"] = seed
        pid, entry = comfy_server.run(graph, timeout=120)
        assert len(comfy_server.outputs(pid)) == 1
