"""Trainer state without pickle: safetensors for tensors, JSON for the rest, folders written atomically.

``accelerate``'s ``save_state`` pickles the optimizer, the scheduler and the RNG states (``torch.save``);
its ``safe_serialization`` only covers the model weights. So the trainer writes its own state:

    step-000100/
        model/                       hieraquery_core.save_checkpoint (config.json + safetensors)
        optimizer.safetensors        every optimizer state tensor, flattened: "state/<param name>/<key>"
        ema.safetensors              with --ema-decay: the moving average of the trainable parameters
        rng-rank<r>.safetensors      python / numpy / torch (CPU, CUDA) RNG states of process r
        trainer_state.json           step, epoch, position in the epoch, scheduler, grad scaler,
                                     optimizer param groups, parameter names and shapes, run settings

The folder is written under a temporary name and renamed into place, so a checkpoint folder either
is complete or does not exist. The optimizer state is read and written through
``torch.distributed.checkpoint.state_dict`` (``get_optimizer_state_dict`` / ``set_optimizer_state_dict``
with full, CPU-offloaded state dicts), which keys it by parameter name and works the same for one
process, DDP and FSDP.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hieraquery_core.errors import HieraQueryError, require

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
EMA_NAME = "ema.safetensors"
MODEL_DIR = "model"
STEP_PREFIX = "step-"
STATE_FORMAT = "hieraquery-trainer"
STATE_VERSION = 1


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:07d}"


def rng_name(rank: int) -> str:
    return f"rng-rank{rank}.safetensors"


# --- RNG states ----------------------------------------------------------------------------------

def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's python, numpy and torch (CPU and every CUDA device) RNG states: tensors + metadata."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {}
    version, internal, gauss = random.getstate()
    tensors["python"] = torch.tensor(internal, dtype=torch.int64)
    meta["python"] = json.dumps({"version": version, "gauss": gauss})
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    meta["numpy"] = json.dumps({"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)})
    tensors["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = state
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Undo :func:`capture_rng`."""
    py = json.loads(meta["python"])
    random.setstate((py["version"], tuple(int(v) for v in tensors["python"].tolist()), py["gauss"]))
    npm = json.loads(meta["numpy"])
    np.random.set_state((npm["kind"], tensors["numpy"].numpy().astype(np.uint32), npm["pos"], npm["has_gauss"], npm["cached_gaussian"]))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in tensors] if torch.cuda.is_available() else []
    if cuda:
        torch.cuda.set_rng_state_all(cuda)


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (an evaluation hook, say) without changing the global RNG streams of training."""
    tensors, meta = capture_rng()
    try:
        yield
    finally:
        restore_rng(tensors, meta)


def save_rng(path: Path) -> None:
    tensors, meta = capture_rng()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def load_rng(path: Path) -> None:
    require(path.is_file(), f"{path} is missing; this checkpoint was written by a different number of processes (resume with the same number)")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    restore_rng(load_file(str(path)), meta)


# --- optimizer state -----------------------------------------------------------------------------

def flatten_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """A (name-keyed) optimizer state dict -> tensors, JSON param groups, JSON per-parameter scalars."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{name}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(name), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, groups, scalars


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]], scalars: dict[str, dict[str, Any]]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for flat, value in tensors.items():
        _, rest = flat.split("/", 1)
        name, key = rest.rsplit("/", 1)
        state.setdefault(name, {})[key] = value
    for name, entry in scalars.items():
        state.setdefault(name, {}).update(entry)
    param_groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": param_groups}


def optimizer_state_dict(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full optimizer state keyed by parameter name (gathered under FSDP), on the CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state_dict(module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))


def save_optimizer(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Write the tensors to ``path``; return the JSON part (param groups and scalars)."""
    tensors, groups, scalars = flatten_optimizer_state(state)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return {"param_groups": groups, "scalars": scalars}


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file, or one clear error saying it is damaged."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise HieraQueryError(f"{path} is not a readable safetensors file ({exc}); the checkpoint is damaged, resume from an older one") from exc


def load_optimizer(path: Path, json_part: dict[str, Any]) -> dict[str, Any]:
    tensors = read_tensors(path)
    return unflatten_optimizer_state(tensors, json_part["param_groups"], json_part.get("scalars", {}))


def save_ema(path: Path, names: list[str], shadow: list[torch.Tensor]) -> None:
    """The exponential moving average of the trainable parameters, keyed by parameter name."""
    save_file({n: t.detach().contiguous().cpu() for n, t in zip(names, shadow)}, str(path), metadata={"format": "pt"})


def load_ema(path: Path, names: list[str]) -> list[torch.Tensor]:
    """The averaged parameters written by :func:`save_ema`, in the order of ``names``."""
    require(path.is_file(), f"{path.parent} has no {path.name} although its run averaged the weights (--ema-decay); the checkpoint is damaged, resume from an older one")
    tensors = read_tensors(path)
    missing = [n for n in names if n not in tensors]
    require(not missing, f"{path} lacks the averages of {missing[:5]}; it belongs to a different configuration")
    return [tensors[n] for n in names]


# --- JSON helpers ---------------------------------------------------------------------------------

def jsonable(value: Any) -> Any:
    """Scheduler / grad-scaler states -> JSON (tensors become lists, tuples lists)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def scheduler_state(scheduler) -> dict[str, Any]:
    """A LambdaLR's state without its lambdas (they are rebuilt from the run's settings)."""
    return jsonable({k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"})


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file + fsync + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_NAME
    require(path.is_file(), f"{folder} has no {STATE_NAME}; it is not a training checkpoint (a model folder is given with --init-from)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HieraQueryError(f"{path} is not valid JSON ({exc}); resume from an older checkpoint") from exc
    require(data.get("format") == STATE_FORMAT and data.get("format_version") == STATE_VERSION,
            f"{path} is not a HieraQuery trainer state of version {STATE_VERSION}")
    return data


# --- folders ---------------------------------------------------------------------------------------

def list_checkpoints(folder: Path) -> list[Path]:
    """Complete step checkpoints under ``folder`` (oldest first)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX) and (p / STATE_NAME).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def temporary_dir(target: Path) -> Path:
    """The fixed temporary sibling a checkpoint is written into before its rename (same on every process)."""
    return target.with_name(f".{target.name}.tmp")


def commit_dir(tmp: Path, target: Path) -> None:
    """Rename a complete temporary folder into place (an older folder of that name is replaced)."""
    from hieraquery_core.checkpoint import replace_directory

    replace_directory(tmp, target)


def prune(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (keep <= 0: keep all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
