"""ComfyUI nodes of the HieraQuery pack.

``extension.py`` holds the V3 ``ComfyExtension`` and ``comfy_entrypoint``; it imports
``comfy_api`` and is therefore imported only inside ComfyUI (see the repository root
``__init__.py``).  Node modules go next to it and are listed in
``extension.node_classes()``.  Keep this file free of ComfyUI imports so that
``import <pack>.nodes`` stays harmless outside ComfyUI.
"""
