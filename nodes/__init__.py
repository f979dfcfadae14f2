"""ComfyUI nodes of the HieraQuery pack (reference: docs/nodes.md).

Without ComfyUI (importable anywhere, unit-tested in tests/test_nodes_*.py):

- ``jobs.py``: what each node does, as plain functions over ``hieraquery_core``;
- ``runtime.py``: the values passed between nodes and how a job reports progress;
- ``checkpoints.py``: finding checkpoint folders (and the bundled demo).

Inside ComfyUI only (they import ``comfy_api`` / ``comfy``; see the repository root ``__init__.py``):

- ``comfy_runtime.py``: model folders, devices, ModelPatcher residency, ProgressBar with previews;
- ``widgets.py``: socket types and shared inputs;
- ``loader.py``, ``stages.py``, ``tasks.py``: the V3 node classes;
- ``extension.py``: the ``ComfyExtension`` and ``comfy_entrypoint``.

Keep this file free of ComfyUI imports so that ``import <pack>.nodes`` stays harmless outside ComfyUI.
"""
