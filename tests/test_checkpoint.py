"""Checkpoints: safetensors folders, exact round trip, external backbone folders, and clear errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from hieraquery_core.checkpoint import WEIGHTS_NAME, load_checkpoint, save_checkpoint
from hieraquery_core.errors import HieraQueryError
from hieraquery_core.pipeline import HieraQueryPipeline, SamplingOptions

from tiny_models import COMBOS, make_model


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def images(model, seed: int = 1) -> list[torch.Tensor]:
    return HieraQueryPipeline(model).generate("a red circle", seed=seed, options=SamplingOptions(steps=2)).images


@pytest.mark.parametrize("dit,mllm,codec", COMBOS)
def test_save_load_round_trip_gives_identical_outputs(tmp_path, dit, mllm, codec):
    model = make_model(dit, mllm, codec, alignment_weight=1.0 if mllm == "qwen2_5_vl" else 0.0)
    folder = save_checkpoint(model, tmp_path / "ckpt")
    files = {p.name for p in folder.rglob("*") if p.is_file()}
    assert not any(name.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")) for name in files)
    assert WEIGHTS_NAME in files and "config.json" in files
    loaded = load_checkpoint(folder)
    assert all(torch.equal(a, b) for a, b in zip(images(model), images(loaded)))
    reference, state = model.state_dict(), loaded.state_dict()
    assert reference.keys() == state.keys() and all(torch.equal(reference[k], state[k]) for k in reference)
    config = json.loads((folder / "config.json").read_text())
    assert config["scales"] == [{"grid": [4, 4], "resolution": 0.25}, {"grid": [8, 8], "resolution": 0.5}, {"grid": [16, 16], "resolution": 1.0}]
    assert (config["dit"]["kind"], config["mllm"]["kind"], config["codec"]["kind"]) == (dit, mllm, codec)


def test_backbones_can_stay_in_their_own_folders(tmp_path):
    model = make_model()
    first = save_checkpoint(model, tmp_path / "full")
    loaded = load_checkpoint(first)
    second = save_checkpoint(loaded, tmp_path / "slim", embed_backbones=False)
    config = json.loads((second / "config.json").read_text())
    assert not (second / "mllm").exists() and Path(config["mllm"]["path"]) == first / "mllm"
    assert all(torch.equal(a, b) for a, b in zip(images(model), images(load_checkpoint(second))))


def test_saving_over_a_checkpoint_replaces_it_atomically(tmp_path, monkeypatch):
    model = make_model()
    folder = save_checkpoint(model, tmp_path / "ckpt")
    before = snapshot(folder)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("hieraquery_core.checkpoint.save_file", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(make_model(seed=1), folder)
    assert snapshot(folder) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folder left behind


@pytest.fixture()
def saved(tmp_path):
    folder = save_checkpoint(make_model(), tmp_path / "ckpt")
    return folder, snapshot(folder)


def edit_config(folder: Path, **changes):
    data = json.loads((folder / "config.json").read_text())
    data.update(changes)
    (folder / "config.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda f: shutil.rmtree(f), "does not exist"),
        (lambda f: (f / "config.json").unlink(), "no config.json"),
        (lambda f: (f / WEIGHTS_NAME).unlink(), "no hieraquery.safetensors"),
        (lambda f: (f / WEIGHTS_NAME).rename(f / "hieraquery.bin"), "pickle files"),
        (lambda f: (f / WEIGHTS_NAME).write_bytes(b"not a safetensors file"), "not a readable safetensors"),
        (lambda f: (f / "config.json").write_text("{broken"), "not valid JSON"),
        (lambda f: edit_config(f, format="other"), "not a HieraQuery checkpoint"),
        (lambda f: edit_config(f, scales=[{"grid": [4, 4], "resolution": 0.25}, {"grid": [8, 8], "resolution": 0.5}, {"grid": [12, 12], "resolution": 1.0}]), "does not match these weights"),
        (lambda f: edit_config(f, scales=[{"grid": [16, 16], "resolution": 1.0}]), "does not match config.json"),
        (lambda f: edit_config(f, scales=[{"grid": [8, 8], "resolution": 1.0}, {"grid": [4, 4], "resolution": 0.5}]), "coarse to fine"),
        (lambda f: edit_config(f, dit={"kind": "unet"}), "choose one of"),
        (lambda f: shutil.rmtree(f / "transformer"), "DiT folder"),
        (lambda f: [p.rename(p.with_suffix(".bin")) for p in (f / "mllm").glob("*.safetensors")], "only has pickle weights"),
    ],
)
def test_bad_checkpoints_get_one_clear_error(saved, damage, message):
    folder, _ = saved
    damage(folder)
    with pytest.raises(HieraQueryError, match=message):
        load_checkpoint(folder)


def test_loading_never_changes_the_files(saved):
    folder, before = saved
    edit_config(folder, scales=[{"grid": [16, 16], "resolution": 1.0}])
    edited = snapshot(folder)
    with pytest.raises(HieraQueryError):
        load_checkpoint(folder)
    assert snapshot(folder) == edited
    assert edited.keys() == before.keys()


def test_pickle_file_or_plain_file_is_refused(tmp_path):
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"\x80\x04")
    with pytest.raises(HieraQueryError, match="pickle"):
        load_checkpoint(pickled)
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"")
    with pytest.raises(HieraQueryError, match="is a file"):
        load_checkpoint(other)


def test_connector_initialises_from_a_local_qwen2_folder(tmp_path):
    """The paper starts the connector from Qwen2.5-0.5B (section 4.2): ConnectorSpec.path loads a local folder."""
    from hieraquery_core.model import HieraQuery
    from hieraquery_core.tiny import tiny_config

    model = make_model()
    model.connector.encoder.save_pretrained(tmp_path / "qwen2-connector", safe_serialization=True)
    config = tiny_config()
    config.connector.path = str(tmp_path / "qwen2-connector")
    rebuilt = HieraQuery.from_config(config)
    reference = model.connector.encoder.state_dict()
    assert all(torch.equal(v, rebuilt.connector.encoder.state_dict()[k]) for k, v in reference.items())
    assert not rebuilt.connector.encoder.layers[0].self_attn.is_causal
