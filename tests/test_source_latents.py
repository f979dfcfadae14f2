"""A DiT that also reads the input image's latents (the project's InstructPix2Pix-style extension for edits)."""

import dataclasses

import pytest
import torch

from hieraquery_core.checkpoint import load_checkpoint, save_checkpoint
from hieraquery_core.errors import HieraQueryError
from hieraquery_core.model import HieraQuery, TrainingBatch
from hieraquery_core.pipeline import HieraQueryPipeline, SamplingOptions
from hieraquery_core.tiny import tiny_config

from tiny_models import make_model

OPTIONS = SamplingOptions(steps=2, guidance=3.0, image_guidance=1.5)
SOURCES = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
INSTRUCTIONS = ["make the red circle blue", "remove the green square"]


def edit_batch(images=SOURCES) -> TrainingBatch:
    return TrainingBatch(INSTRUCTIONS, torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6)),
                         None if images is None else [[img] for img in images])


def loss(model: HieraQuery, batch: TrainingBatch) -> torch.Tensor:
    return model.training_loss(batch, torch.Generator().manual_seed(0), sigma=0.6, dropout=False).total


def wake_new_channels(model: HieraQuery) -> None:
    """What training does to the zero-initialised input weights, in one step."""
    with torch.no_grad():
        model.dit.patch_projection().weight[:, model.codec.channels:].normal_(0, 0.5, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("dit,codec", [("sana", "pixel"), ("sd3", "autoencoder_kl")])
def test_widening_changes_nothing_until_trained_and_then_the_source_matters(dit, codec):
    model = make_model(dit, "qwen2_5_vl", codec)
    pipe = HieraQueryPipeline(model)
    before = (loss(model, edit_batch()), pipe.edit(SOURCES, INSTRUCTIONS, seed=3, options=OPTIONS).final, pipe.generate("a red circle", seed=3, options=OPTIONS).final)
    assert not model.reads_source
    model.read_source()
    model.read_source()  # a second call does nothing
    assert model.reads_source and model.dit.in_channels == 2 * model.codec.channels and model.dit.out_channels == model.codec.channels
    after = (loss(model, edit_batch()), pipe.edit(SOURCES, INSTRUCTIONS, seed=3, options=OPTIONS).final, pipe.generate("a red circle", seed=3, options=OPTIONS).final)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    wake_new_channels(model)
    assert not torch.equal(loss(model, edit_batch()), loss(model, edit_batch(SOURCES.flip(0))))
    # no input image (text-to-image) reads zeros: the same as a sample whose image list is empty
    assert torch.equal(loss(model, edit_batch(None)), model.training_loss(dataclasses.replace(edit_batch(), images=[[], []]),
                                                                             torch.Generator().manual_seed(0), sigma=0.6, dropout=False).total)


def test_the_widened_dit_saves_and_loads_and_edits_the_same(tmp_path):
    model = make_model()
    model.read_source()
    wake_new_channels(model)
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "ckpt"))
    assert loaded.reads_source
    a = HieraQueryPipeline(model).edit(SOURCES, INSTRUCTIONS, seed=4, options=OPTIONS).final
    b = HieraQueryPipeline(loaded).edit(SOURCES, INSTRUCTIONS, seed=4, options=OPTIONS).final
    assert torch.equal(a, b)


def test_each_guidance_branch_reads_its_own_image_at_each_scale(monkeypatch):
    """Editing: the empty branch reads a black image, the image-only and full branches the source, at every scale's
    size; several images per prompt repeat each source; text-to-image reads nothing."""
    model = make_model()
    model.read_source()
    seen = []
    original = model.source_latents

    def record(images, batch, size):
        seen.append((None if images is None else images.clone(), batch, size))
        return original(images, batch, size)

    monkeypatch.setattr(model, "source_latents", record)
    pipe = HieraQueryPipeline(model)
    out = pipe.edit(SOURCES, INSTRUCTIONS, seed=0, options=dataclasses.replace(OPTIONS, images_per_prompt=2))
    assert out.final.shape == (4, 3, 32, 32)
    assert [size for _, _, size in seen] == [(8, 8)] * 3 + [(16, 16)] * 3 + [(32, 32)] * 3
    repeated = SOURCES.repeat_interleave(2, 0)
    for k in range(3):
        black, image_only, full = (seen[3 * k + i][0] for i in range(3))
        assert torch.equal(black, torch.zeros_like(repeated)) and torch.equal(image_only, repeated) and torch.equal(full, repeated)
    seen.clear()
    pipe.generate("a red circle", seed=0, options=OPTIONS)
    assert seen and all(images is None for images, _, _ in seen)


def test_a_dit_with_other_channel_counts_is_one_clear_error():
    config = tiny_config("sana", "qwen2_5_vl", "pixel")
    config.dit.config = {**config.dit.config, "in_channels": 5, "out_channels": 3}
    with pytest.raises(HieraQueryError, match="set dit.config in_channels to 3 .or 6 to read the input image's latents too. and out_channels to 3"):
        HieraQuery.from_config(config)
