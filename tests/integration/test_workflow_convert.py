"""UI-format -> API-format conversion rules of comfyui_harness.workflow_to_api, on synthetic
schemas (no server needed).  The live-schema checks are in test_harness.py."""

from __future__ import annotations

import pytest

import comfyui_harness as harness  # tests/ is put on sys.path by conftest.py

INFO = {
    "Src": {"input": {"required": {"n": ["INT", {"default": 1}]}}, "input_order": {"required": ["n"]},
            "output": ["IMAGE", "MASK"], "display_name": "Source"},
    "Sink": {"input": {"required": {"images": ["IMAGE", {}], "prefix": ["STRING", {"default": "p"}]},
                       "optional": {"mask": ["MASK", {}]}},
             "input_order": {"required": ["images", "prefix"], "optional": ["mask"]}, "output": [],
             "output_node": True},
    "Two": {"input": {"required": {"mask": ["MASK", {}], "image": ["IMAGE", {}]}},
            "input_order": {"required": ["mask", "image"]}, "output": ["IMAGE", "MASK"]},
    "Widgets": {"input": {
        "required": {
            "seed": ["INT", {"default": 0}],                               # name rule -> control slot
            "noise_seed": ["INT", {"default": 0, "control_after_generate": False}],  # explicit False: none
            "pick": ["COMBO", {"options": ["a", "b"], "control_after_generate": True}],  # 2 extra slots
            "forced": ["INT", {"forceInput": True}],                       # socket only
            "model": ["HQ_MODEL", {}],                                     # custom type: socket
            "file": [["x.png", "y.png"], {"image_upload": True}],          # upload button at the end
        },
        "optional": {"flag": ["BOOLEAN", {"default": True}], "ratio": ["FLOAT", {"default": 0.5}]}},
        "input_order": {"required": ["seed", "noise_seed", "pick", "forced", "model", "file"],
                        "optional": ["flag", "ratio"]},
        "output": ["IMAGE"]},
}


def node(nid, ntype, *, inputs=(), outputs=(), values=None, mode=0, **extra):
    n = {"id": nid, "type": ntype, "mode": mode, "inputs": list(inputs), "outputs": list(outputs), **extra}
    if values is not None:
        n["widgets_values"] = values
    return n


def test_widget_slots_follow_the_front_end_rules():
    slots = [name for name, _ in harness.widget_slots(INFO["Widgets"])]
    assert slots == ["seed", None, "noise_seed", "pick", None, None, "file", "flag", "ratio", None]


def test_widget_values_map_by_schema_order_and_skip_front_end_slots():
    wf = {"nodes": [node(1, "Widgets", values=[7, "randomize", 8, "b", "fixed", "", "y.png", False, 0.25, "image"])],
          "links": []}
    assert harness.workflow_to_api(wf, INFO)["1"]["inputs"] == {
        "seed": 7, "noise_seed": 8, "pick": "b", "file": "y.png", "flag": False, "ratio": 0.25}


def test_dict_widget_values_and_list_values_are_wrapped():
    wf = {"nodes": [node(1, "Widgets", values={"seed": 3, "pick": "a", "file": "x.png", "ratio": [1, 2]})],
          "links": []}
    assert harness.workflow_to_api(wf, INFO)["1"]["inputs"] == {
        "seed": 3, "pick": "a", "file": "x.png", "ratio": {"__value__": [1, 2]}}


def test_length_mismatch_raises_in_strict_mode_and_is_repaired_otherwise():
    short = {"nodes": [node(1, "Widgets", values=[7, "fixed", 8])], "links": []}
    with pytest.raises(harness.WorkflowConversionError, match="widgets_values has 3 entries"):
        harness.workflow_to_api(short, INFO)
    padded = harness.workflow_to_api(short, INFO, strict=False)["1"]["inputs"]
    assert padded["seed"] == 7 and padded["noise_seed"] == 8 and padded["flag"] is True and padded["ratio"] == 0.5
    long = {"nodes": [node(1, "Sink", values=["q", "viewer-state"])], "links": []}
    assert harness.workflow_to_api(long, INFO, strict=False)["1"]["inputs"] == {"prefix": "q"}


def test_links_reroutes_primitives_bypass_and_mute():
    wf = {
        "nodes": [
            node(1, "Src", values=[1], outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [1]},
                                                {"name": "MASK", "type": "MASK", "links": [2, 6]}]),
            node(2, "Reroute", inputs=[{"name": "", "type": "*", "link": 1}],
                 outputs=[{"name": "", "type": "IMAGE", "links": [3]}]),
            node(3, "Reroute", inputs=[{"name": "", "type": "*", "link": 3}],
                 outputs=[{"name": "", "type": "IMAGE", "links": [4]}]),
            # bypassed: IMAGE output 0 must route to its IMAGE input (slot 1), not slot 0 (MASK)
            node(4, "Two", mode=4, inputs=[{"name": "mask", "type": "MASK", "link": 2},
                                           {"name": "image", "type": "IMAGE", "link": 4}],
                 outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [5]}]),
            node(5, "Sink", values=["out"],
                 inputs=[{"name": "images", "type": "IMAGE", "link": 5},
                         {"name": "prefix", "type": "STRING", "widget": {"name": "prefix"}, "link": 7},
                         {"name": "mask", "type": "MASK", "link": 8}]),
            node(6, "PrimitiveNode", values=["from-primitive", "fixed"],
                 outputs=[{"name": "STRING", "type": "STRING", "widget": {"name": "prefix"}, "links": [7]}]),
            node(7, "Src", mode=2, values=[1], outputs=[{"name": "IMAGE", "type": "IMAGE", "links": []},
                                                        {"name": "MASK", "type": "MASK", "links": [8]}]),
            node(8, "Note", values=["hello"]),
        ],
        "links": [[1, 1, 0, 2, 0, "*"], [2, 1, 1, 4, 0, "MASK"], [3, 2, 0, 3, 0, "*"], [4, 3, 0, 4, 1, "IMAGE"],
                  [5, 4, 0, 5, 0, "IMAGE"], [7, 6, 0, 5, 1, "STRING"], [8, 7, 1, 5, 2, "MASK"]],
    }
    api = harness.workflow_to_api(wf, INFO)
    assert set(api) == {"1", "5"}
    assert api["5"]["inputs"] == {"images": ["1", 0], "prefix": "from-primitive"}  # mask from a muted node dropped
    assert api["5"]["_meta"] == {"title": "Sink"} and api["1"]["_meta"] == {"title": "Source"}


def test_object_links_of_schema_version_1():
    wf = {"nodes": [node(1, "Src", values=[2]), node(2, "Sink", values=["p"],
                                                      inputs=[{"name": "images", "type": "IMAGE", "link": 9}])],
          "links": [{"id": 9, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "IMAGE"}]}
    assert harness.workflow_to_api(wf, INFO)["2"]["inputs"] == {"prefix": "p", "images": ["1", 0]}


@pytest.mark.parametrize("wf, message", [
    ({"nodes": [node(1, "Nope")], "links": []}, "not registered"),
    ({"nodes": [node(1, "3f2c-uuid")], "links": [], "definitions": {"subgraphs": [{"id": "3f2c-uuid"}]}},
     "subgraph"),
    ({"nodes": [node(1, "workflow>My group")], "links": []}, "group node"),
    ({"1": {"class_type": "Src", "inputs": {}}}, "already an API-format prompt"),
])
def test_unsupported_inputs_raise(wf, message):
    with pytest.raises(harness.WorkflowConversionError, match=message):
        harness.workflow_to_api(wf, INFO)


def test_dom_widgets_are_refused():
    info = {"Cam": {"input": {"required": {"image": ["WEBCAM", {}]}}, "output": ["IMAGE"]}}
    with pytest.raises(harness.WorkflowConversionError, match="front-end widget WEBCAM"):
        harness.workflow_to_api({"nodes": [node(1, "Cam", values=[""])], "links": []}, info)


def test_unknown_types_on_bypassed_or_muted_nodes_are_ignored():
    wf = {"nodes": [node(1, "Src", values=[1]), node(2, "SomePackNode", mode=4), node(3, "Other", mode=2)],
          "links": []}
    assert set(harness.workflow_to_api(wf, INFO)) == {"1"}


def test_dangling_links_and_defaults_without_widgets_values():
    wf = {"nodes": [node(1, "Sink", inputs=[{"name": "images", "type": "IMAGE", "link": 4}])],
          "links": [[4, 77, 0, 1, 0, "IMAGE"]]}
    with pytest.raises(harness.WorkflowConversionError, match="missing node 77"):
        harness.workflow_to_api(wf, INFO)
    # no widgets_values at all: schema defaults, else the front end's own (first combo option)
    api = harness.workflow_to_api({"nodes": [node(1, "Widgets")], "links": []}, INFO)
    assert api["1"]["inputs"] == {"seed": 0, "noise_seed": 0, "pick": "a", "file": "x.png", "flag": True,
                                  "ratio": 0.5}
