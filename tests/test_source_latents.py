"""A DiT that also reads the input image's latents (the project's InstructPix2Pix-style extension for edits)."""

import dataclasses

import pytest
import torch

from hieraquery_core.checkpoint import load_checkpoint, save_checkpoint
from hieraquery_core.errors import HieraQueryError
from hieraquery_core.model import HieraQuery, TrainingBatch
from hieraquery_core.pipeline import HieraQueryPipeline, SamplingOptions
from hieraquery_core.tiny import tiny_config

from tiny_models import make_model, wake_new_channels

OPTIONS = SamplingOptions(steps=2, guidance=3.0, image_guidance=1.5)
SOURCES = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
INSTRUCTIONS = ["make the red circle blue", "remove the green square"]


def edit_batch(images=SOURCES) -> TrainingBatch:
    return TrainingBatch(INSTRUCTIONS, torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6)),
                         None if images is None else [[img] for img in images])


def loss(model: HieraQuery, batch: TrainingBatch) -> torch.Tensor:
    return model.training_loss(batch, torch.Generator().manual_seed(0), sigma=0.6, dropout=False).total


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
    size, each distinct image encoded once per scale; several images per prompt repeat each source; text-to-image
    reads zeros."""
    model = make_model()
    model.read_source()
    encoded, read = [], []
    latents_of, dit_forward = model.source_latents, model.dit.forward

    def record_encoding(images, batch, size):
        encoded.append(size)
        return latents_of(images, batch, size)

    def record_dit(latents, sigma, condition, source=None):
        read.append(source.clone())
        return dit_forward(latents, sigma, condition, source)

    monkeypatch.setattr(model, "source_latents", record_encoding)
    monkeypatch.setattr(model.dit, "forward", record_dit)
    pipe = HieraQueryPipeline(model)
    out = pipe.edit(SOURCES, INSTRUCTIONS, seed=0, options=dataclasses.replace(OPTIONS, images_per_prompt=2))
    assert out.final.shape == (4, 3, 32, 32)
    sizes = [(8, 8), (16, 16), (32, 32)]
    assert encoded == [size for size in sizes for _ in range(2)]  # the black image and the source, once each
    for k, size in enumerate(sizes):  # OPTIONS: 2 steps per scale, the same inputs at both
        black, source = (latents_of(x, 2, size).repeat_interleave(2, 0) for x in (torch.zeros_like(SOURCES), SOURCES))
        assert torch.equal(read[2 * k], torch.cat([black, source, source])) and torch.equal(read[2 * k + 1], read[2 * k])
    read.clear()
    pipe.generate("a red circle", seed=0, options=OPTIONS)
    assert read and all(not source.any() for source in read)


def test_a_dit_with_other_channel_counts_is_one_clear_error():
    config = tiny_config("sana", "qwen2_5_vl", "pixel")
    config.dit.config = {**config.dit.config, "in_channels": 5, "out_channels": 3}
    with pytest.raises(HieraQueryError, match="set dit.config in_channels to 3 .or 6 to read the input image's latents too. and out_channels to 3"):
        HieraQuery.from_config(config)


def test_widening_updates_the_models_config_and_leaves_the_callers_alone():
    config = tiny_config("sana", "qwen2_5_vl", "pixel")
    model = HieraQuery.from_config(config)
    model.read_source()
    assert (model.config.dit.config["in_channels"], model.config.dit.config["out_channels"]) == (6, 3)
    assert config.dit.config["in_channels"] == 3 and HieraQuery.from_config(model.config).reads_source
