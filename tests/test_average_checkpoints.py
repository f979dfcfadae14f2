"""Checkpoint averaging (``train.average_checkpoints``): weighted means of every weight, and clear errors."""

import pytest
import torch

from hieraquery_core.checkpoint import load_checkpoint, save_checkpoint
from hieraquery_core.errors import HieraQueryError
from train.average_checkpoints import average_checkpoints, check_weights, main, parse_weights

from tiny_models import make_model


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """One tiny model saved as it is (A) and with its DiT, queries and connector moved (B, a "fine-tuned" sibling)."""
    root = tmp_path_factory.mktemp("average")
    save_checkpoint(make_model(), root / "a")
    model = make_model()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith(("mllm.", "codec.")):
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))))
    save_checkpoint(model, root / "b")
    return root


def test_every_weight_is_the_weighted_mean_and_the_frozen_backbones_are_untouched(two_checkpoints):
    out = average_checkpoints([two_checkpoints / "a", two_checkpoints / "b"], two_checkpoints / "ab", [0.25, 0.75])
    a, b, ab = (load_checkpoint(p).state_dict() for p in (two_checkpoints / "a", two_checkpoints / "b", out))
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert any(k.startswith("dit.") for k in moved) and any(k.startswith("connector.") for k in moved) and any(k.startswith("queries.") for k in moved)
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(ab[k], 0.25 * a[k] + 0.75 * b[k])
    assert all(torch.equal(ab[k], a[k]) for k in a if k.startswith(("mllm.", "codec.")))


def test_a_checkpoint_averaged_with_itself_samples_the_same_image(two_checkpoints):
    from hieraquery_core.pipeline import HieraQueryPipeline, SamplingOptions

    out = average_checkpoints([two_checkpoints / "a", two_checkpoints / "a"], two_checkpoints / "aa")
    images = [HieraQueryPipeline(load_checkpoint(p)).generate("a red circle", seed=1, options=SamplingOptions(steps=2)).final for p in (two_checkpoints / "a", out)]
    torch.testing.assert_close(images[0], images[1])


def test_different_architectures_are_refused_and_nothing_is_written(two_checkpoints, tmp_path):
    save_checkpoint(make_model(dit="sd3"), tmp_path / "sd3")
    with pytest.raises(HieraQueryError, match="one architecture"):
        average_checkpoints([two_checkpoints / "a", tmp_path / "sd3"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_checkpoints_on_different_frozen_mllms_are_refused(two_checkpoints, tmp_path):
    save_checkpoint(make_model(seed=1), tmp_path / "other")
    with pytest.raises(HieraQueryError, match="another frozen MLLM"):
        average_checkpoints([two_checkpoints / "a", tmp_path / "other"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,match", [("0.5", "2 checkpoints"), ("0.7,0.7", "sum to 1"), ("a,b", "comma-separated"), ("-0.5,1.5", ">= 0")])
def test_bad_weights_get_one_clear_error(text, match):
    with pytest.raises(HieraQueryError, match=match):
        check_weights(parse_weights(text), 2)


def test_bad_weights_from_python_are_refused_before_anything_is_loaded_or_written(tmp_path):
    missing = [tmp_path / "not-a-checkpoint-a", tmp_path / "not-a-checkpoint-b"]
    with pytest.raises(HieraQueryError, match="sum to 1"):
        average_checkpoints(missing, tmp_path / "out", weights=[1.0, 1.0])
    assert not (tmp_path / "out").exists()


def test_the_command_refuses_to_overwrite_an_input(two_checkpoints, capsys):
    before = (two_checkpoints / "a" / "hieraquery.safetensors").read_bytes()
    assert main([str(two_checkpoints / "a"), str(two_checkpoints / "b"), "--out", str(two_checkpoints / "a")]) == 2
    assert "is one of the inputs" in capsys.readouterr().err
    assert (two_checkpoints / "a" / "hieraquery.safetensors").read_bytes() == before
