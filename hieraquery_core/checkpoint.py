"""HieraQuery checkpoints: one folder, safetensors only, written atomically.

Layout (section 4.2's parts, each where its library expects it)::

    config.json                 HieraQueryConfig: scales, sizes, backbone kinds and paths
    hieraquery.safetensors      the multi-scale queries (Eq. 1-3), the connector (Eq. 4-5) and the
                                alignment projector (section 3.2)
    transformer/                the DiT, diffusers ``save_pretrained`` (safetensors)
    mllm/                       the frozen MLLM + its processor, transformers ``save_pretrained``
    vae/                        the VAE, when the model paints latents

The frozen MLLM and VAE may instead stay in their own folders, recorded as absolute paths
(``embed_backbones=False``: no copy of a multi-GB model per checkpoint). Loading never touches a hub
(``local_files_only``) and never unpickles (``use_safetensors``). A save writes into a temporary
sibling folder and renames it into place, so an interrupted save leaves the old checkpoint intact.
"""

from __future__ import annotations

import copy
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .backbones import PICKLE_SUFFIXES
from .config import HieraQueryConfig
from .errors import HieraQueryError, require
from .model import HieraQuery

WEIGHTS_NAME = "hieraquery.safetensors"
CONFIG_NAME = "config.json"
STAGE_NAME = "stage.json"
"""How a published checkpoint was made (its commands and held-out scores; ``train.make_demo.publish`` writes it, the CLI banner reads it)."""
OWN_PREFIXES = ("queries.", "connector.", "aligner.")


def own_state_dict(model: HieraQuery) -> dict[str, torch.Tensor]:
    """The parameters that live in hieraquery.safetensors (everything but the backbones' folders)."""
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k.startswith(OWN_PREFIXES)}


def replace_directory(tmp: Path, target: Path) -> None:
    """Move a fully written ``tmp`` folder to ``target``, replacing an older one only after it is complete."""
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)


def save_checkpoint(model: HieraQuery, directory: str | Path, embed_backbones: bool = True) -> Path:
    """Write ``model`` as a checkpoint folder (atomically). Returns the folder."""
    target = Path(directory).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        config = copy.deepcopy(model.config)
        if embed_backbones or not config.mllm.path:
            model.mllm.model.save_pretrained(tmp / "mllm", safe_serialization=True)
            model.mllm.processor.save_pretrained(tmp / "mllm")
            config.mllm.path, config.mllm.config = "mllm", None
        else:
            config.mllm.path = str((Path(model.source_dir or ".") / config.mllm.path).absolute())
        model.dit.transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
        config.dit.path, config.dit.config = "transformer", None
        if model.codec.vae is not None:
            if embed_backbones or not config.codec.path:
                model.codec.vae.save_pretrained(tmp / "vae", safe_serialization=True)
                config.codec.path, config.codec.config = "vae", None
            else:
                config.codec.path = str((Path(model.source_dir or ".") / config.codec.path).absolute())
        config.connector.path = None
        save_file(own_state_dict(model), tmp / WEIGHTS_NAME, metadata={"format": "pt", "scales": ",".join(s.name for s in config.scales)})
        config.save(tmp / CONFIG_NAME)
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def check_checkpoint_folder(directory: str | Path) -> Path:
    """One clear error for every way a path can fail to be a HieraQuery checkpoint folder."""
    path = Path(directory)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise HieraQueryError(f"{path.name} is a pickle file; HieraQuery loads safetensors checkpoints only (a folder with config.json and {WEIGHTS_NAME})")
        if path.name in (CONFIG_NAME, WEIGHTS_NAME):
            path = path.parent
        else:
            raise HieraQueryError(f"{path} is a file; a HieraQuery checkpoint is a folder holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    require(path.is_dir(), f"checkpoint folder {path} does not exist; check the path (or put the checkpoint under models/hieraquery/)")
    require(
        (path / CONFIG_NAME).is_file() or not (path / "model_index.json").is_file(),
        f"{path} holds a diffusers pipeline (model_index.json), not a HieraQuery checkpoint; choose a folder saved by hieraquery_core ({CONFIG_NAME} + {WEIGHTS_NAME})",
    )
    require((path / CONFIG_NAME).is_file(), f"{path} has no {CONFIG_NAME}; it is not a HieraQuery checkpoint (was it saved by hieraquery_core.save_checkpoint?)")
    if not (path / WEIGHTS_NAME).is_file():
        HieraQueryConfig.load(path / CONFIG_NAME)  # the config.json of another kind of model says so, rather than "incomplete"
        pickled = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        hint = f" (found pickle files {pickled}, which are never loaded)" if pickled else ""
        raise HieraQueryError(f"{path} has no {WEIGHTS_NAME}{hint}; the checkpoint is incomplete, copy it again")
    return path


def load_own_weights(model: HieraQuery, weights: Path) -> None:
    """Load hieraquery.safetensors into the model, naming any key or shape that does not fit the config."""
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as exc:
        raise HieraQueryError(f"{weights} is not a readable safetensors file ({exc}); the file is damaged, copy it again") from exc
    expected = own_state_dict(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    scale_text = ", ".join(f"{s.name} ({s.num_queries} queries)" for s in model.config.scales)
    if missing or unexpected:
        raise HieraQueryError(
            f"{weights.name} does not match config.json (scales {scale_text}): missing {missing[:5]}, unexpected {unexpected[:5]}; "
            "restore the checkpoint's own config.json"
        )
    for key in sorted(set(expected) & set(state)):
        if state[key].shape != expected[key].shape:
            raise HieraQueryError(
                f"{weights.name}: {key} has shape {list(state[key].shape)} but config.json (scales {scale_text}) needs "
                f"{list(expected[key].shape)}; the config does not match these weights, restore the checkpoint's own config.json"
            )
    model.load_state_dict(state, strict=False)


def locate_backbones(config: HieraQueryConfig, checkpoint_dir: Path, backbone_dirs: Mapping[str, Sequence[str | Path]]) -> None:
    """Point relative backbone paths that are not inside the checkpoint at the first search folder holding them.

    ``backbone_dirs`` maps "mllm", "dit" and "codec" to folders to search (e.g. ComfyUI's
    models/text_encoders, models/diffusion_models, models/vae), so one shared copy of a multi-GB backbone
    serves several checkpoints. Paths found nowhere are left as they are (loading names the missing folder).
    """
    for key in ("mllm", "dit", "codec"):
        spec = getattr(config, key)
        if not spec.path or Path(spec.path).is_absolute() or (checkpoint_dir / spec.path).exists():
            continue
        found = next((Path(d) / spec.path for d in backbone_dirs.get(key, ()) if (Path(d) / spec.path).is_dir()), None)
        if found is not None:
            spec.path = str(found.absolute())


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, backbone_dirs: Mapping[str, Sequence[str | Path]] | None = None
) -> HieraQuery:
    """Load a checkpoint folder saved by :func:`save_checkpoint` (no network, no pickle).

    ``backbone_dirs``: extra folders where backbones named by relative paths may live (:func:`locate_backbones`).
    """
    path = check_checkpoint_folder(directory)
    config = HieraQueryConfig.load(path / CONFIG_NAME)
    locate_backbones(config, path, backbone_dirs or {})
    model = HieraQuery.from_config(config, base_dir=path)
    load_own_weights(model, path / WEIGHTS_NAME)
    model.eval()
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


BUNDLED_DEMO = Path(__file__).parent / "assets" / "shapesworld-demo"
"""The ShapesWorld demo checkpoint shipped with the package (trained by ``make demo-checkpoint``)."""


BUNDLED_DEMO_SAMPLING = {"steps": 16, "guidance": 4.0, "refine_strength": 0.4, "edit_refine_strength": 0.7, "edit_guidance": 1.5,
                         "candidates": 8, "edit_candidates": 1}
"""The sampling settings the bundled demo was tuned for on training-split prompts and validation edits, never on
held-out ones (docs/demo-and-ablations.md section 3, "The sampling re-tuned", and the check on the model bundled now):
in text-to-image each scale after the first starts from the previous one re-noised to 0.4, at guidance 4 (held-out
GenEval 0.867, against 0.580 with every scale from noise); an edit reads the input image at every scale, starts each
scale after the first from the previous one re-noised to 0.7 (held-out edits 0.930, against 0.885 with every scale
from noise), with text guidance 1.5 (3 spreads a recolour over objects the instruction does not name: 0.685 against
0.56 on validation edits of an earlier model). Text-to-image keeps the self-check's pick of 8 cascades (``candidates``,
:mod:`.self_check`; held-out GenEval 0.937 against 0.867 for one, the 8 chosen on validation prompts first); edits paint one."""

BUNDLED_DEMO_SEED = 2
"""The seed of the ``demo`` command and the example workflows. Sampled as the demo is (8 candidates), every seed 0-11
paints the demo prompt as named and passes all three edits (``results/demo-source-edit-seed-check-candidates-8.json``).
With one cascade per image, with the model bundled in session 34 (2026-12-06, the
first trained with scenes 4 px apart) the demo prompt "a red circle to the left of a blue square" comes out as named
for 7 of the seeds 0-11, and of the edit-chain workflow's edits "make the red circle green" succeeds on 8, "add a
yellow triangle" on 12 and "remove the blue square" on 8 (each on the previous result; scored by the evaluator's
``score_prompt`` and ``edit_correct``; ``results/demo-source-edit-seed-check.json``, written by
:func:`train.publish_demo.seed_check`). Seeds 0, 1, 2, 3, 6, 8 and 11 pass the prompt and all three edits; 2 stays
the seed, as it was for the models before."""


BUNDLED_DEMO_PROMPT = "a red circle to the left of a blue square"
"""The ``demo`` command's prompt and the example workflows' (the edit chain starts from it)."""

BUNDLED_DEMO_EDITS = ("make the red circle green", "add a yellow triangle", "remove the blue square")
"""The edit-chain workflow's instructions, each applied to the previous result; the ``demo`` command makes the first.
:mod:`train.publish_demo` checks a model to be bundled on this chain over seeds 0-11."""


def bundled_demo() -> Path | None:
    """The bundled demo checkpoint folder, or None while it has not been trained yet."""
    return BUNDLED_DEMO if (BUNDLED_DEMO / WEIGHTS_NAME).is_file() else None
