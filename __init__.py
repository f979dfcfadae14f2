"""HieraQuery: ComfyUI node pack entry point.

Inside ComfyUI (which loads this file as the package ``custom_nodes/<folder>``) this exposes
the V3 entry point ``comfy_entrypoint`` from ``nodes/extension.py``.  ComfyUI 0.3.75 uses it
only when the module has no ``NODE_CLASS_MAPPINGS`` (nodes.py, load_custom_node), so this file
must never define that name.

Outside ComfyUI (``comfy_api`` / ``folder_paths`` not importable: unit tests, tools,
packaging) importing this package does nothing and needs nothing beyond the standard library.
"""

import importlib.util as _importlib_util

__all__ = []

# find_spec on a top-level name only searches sys.path; it imports nothing.  Both are top-level
# modules of a ComfyUI checkout (running main.py puts that folder on sys.path).
_IN_COMFYUI = all(_importlib_util.find_spec(m) is not None for m in ("comfy_api", "folder_paths"))

if _IN_COMFYUI:
    # Deliberately not wrapped in try/except: inside ComfyUI an import error here must show
    # up as "IMPORT FAILED" with its traceback in ComfyUI's log, not vanish.
    from .nodes.extension import comfy_entrypoint  # noqa: F401

    __all__ = ["comfy_entrypoint"]
