"""The Loader node's logic without ComfyUI: listing checkpoint folders (and the bundled demo), resolving a
name, loading read-only with a dtype, backbones from ComfyUI-style model folders, and clear errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from nodes_support import checkpoint_root, folder_state, pack_module  # noqa: F401

checkpoints = pack_module("nodes.checkpoints")
jobs = pack_module("nodes.jobs")


def test_lists_checkpoint_folders_not_their_subfolders_nor_unfinished_saves(checkpoint_root, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "bundled_demo", lambda: None)
    other_root = tmp_path / "extra"
    for folder, marker in (("pipeline", "model_index.json"), (".tiny.tmp-1234", "config.json"), ("empty", None)):
        (other_root / folder).mkdir(parents=True)  # .tmp-: an interrupted atomic save
        if marker:
            (other_root / folder / marker).write_text("{}")
    assert checkpoints.list_checkpoints([checkpoint_root, other_root, tmp_path / "missing"]) == ["pipeline", "team/tiny-kl", "tiny"]


def test_bundled_demo_is_listed_from_the_package_and_a_user_folder_of_that_name_wins(checkpoint_root, tmp_path, monkeypatch):
    demo = tmp_path / "package" / "shapesworld-demo"
    monkeypatch.setattr(checkpoints, "bundled_demo", lambda: demo)
    assert checkpoints.list_checkpoints([checkpoint_root]) == ["shapesworld-demo", "team/tiny-kl", "tiny"]
    assert checkpoints.resolve_checkpoint("shapesworld-demo", [checkpoint_root]) == demo
    user_copy = tmp_path / "models" / "shapesworld-demo"
    user_copy.mkdir(parents=True)
    assert checkpoints.resolve_checkpoint("shapesworld-demo", [tmp_path / "models"]) == user_copy
    monkeypatch.setattr(checkpoints, "bundled_demo", lambda: None)
    assert checkpoints.list_checkpoints([checkpoint_root]) == ["team/tiny-kl", "tiny"]


@pytest.mark.parametrize("name", ["missing", "../tiny", "/abs/tiny", ""])
def test_names_outside_the_folders_are_refused_clearly(checkpoint_root, name, monkeypatch):
    monkeypatch.setattr(checkpoints, "bundled_demo", lambda: None)
    with pytest.raises(ValueError, match="not found in|not a checkpoint name"):
        checkpoints.resolve_checkpoint(name, [checkpoint_root])


def test_load_gives_a_working_model_in_the_chosen_dtype_and_changes_nothing(checkpoint_root):
    before = folder_state(checkpoint_root)
    model = jobs.load_model("team/tiny-kl", [checkpoint_root], dtype=torch.bfloat16)
    assert model.name == "team/tiny-kl" and model.path == checkpoint_root / "team" / "tiny-kl"
    assert {p.dtype for p in model.pipeline.model.parameters()} == {torch.bfloat16}
    images = jobs.generate(model, "a red circle", seed=0, steps=1, guidance=4.0)
    assert images[-1].dtype == torch.float32 and images[-1].shape == (1, 32, 32, 3)
    assert folder_state(checkpoint_root) == before


def test_checkpoints_of_another_kind_are_named_as_such(checkpoint_root, tmp_path):
    root = tmp_path / "models"
    (root / "pipeline" / "transformer").mkdir(parents=True)
    (root / "pipeline" / "model_index.json").write_text(json.dumps({"_class_name": "SanaPipeline"}))
    shutil.copytree(checkpoint_root / "tiny" / "transformer", root / "bare-transformer")
    with pytest.raises(ValueError, match=r"holds a diffusers pipeline \(model_index.json\), not a HieraQuery checkpoint"):
        jobs.load_model("pipeline", [root])
    with pytest.raises(ValueError, match="this config.json is not a HieraQuery checkpoint config"):
        jobs.load_model("bare-transformer", [root])


def test_backbones_named_by_relative_paths_come_from_model_folders(checkpoint_root, tmp_path):
    """A checkpoint whose DiT lives in a shared folder (ComfyUI's models/diffusion_models)."""
    ckpt = tmp_path / "hieraquery" / "shared-dit"
    shutil.copytree(checkpoint_root / "tiny", ckpt)
    shared = tmp_path / "diffusion_models"
    shared.mkdir()
    (ckpt / "transformer").rename(shared / "tiny-sana")
    config = json.loads((ckpt / "config.json").read_text())
    config["dit"]["path"] = "tiny-sana"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="the DiT folder .*tiny-sana does not exist"):
        jobs.load_model("shared-dit", [ckpt.parent])
    model = jobs.load_model("shared-dit", [ckpt.parent], backbone_dirs={"dit": [tmp_path / "nowhere", shared]})
    assert model.pipeline.model.config.dit.path == str(shared / "tiny-sana")
    assert json.loads((ckpt / "config.json").read_text())["dit"]["path"] == "tiny-sana"  # the file is not rewritten


def test_fingerprint_changes_when_the_checkpoint_is_replaced(checkpoint_root, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(checkpoint_root / "tiny", root / "tiny")
    first = jobs.checkpoint_fingerprint("tiny", [root])
    weights = root / "tiny" / "hieraquery.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert jobs.checkpoint_fingerprint("tiny", [root]) != first
    assert jobs.checkpoint_fingerprint("gone", [root]) == "gone"
