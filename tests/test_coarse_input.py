"""A DiT that also reads the previous scale's image (the project's cascaded-diffusion extension, ``HieraQuery.read_coarse``)."""

import dataclasses

import pytest
import torch

from hieraquery_core.checkpoint import load_checkpoint, save_checkpoint
from hieraquery_core.errors import HieraQueryError
from hieraquery_core.images import resize, to_signed
from hieraquery_core.model import HieraQuery, TrainingBatch
from hieraquery_core.pipeline import HieraQueryPipeline, SamplingOptions
from hieraquery_core.tiny import tiny_config

from tiny_models import make_model

OPTIONS = SamplingOptions(steps=2, guidance=3.0, refine_strength=1.0)
PROMPTS = ["a red circle", "two blue squares"]
TARGETS = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
SIZES = [(8, 8), (16, 16), (32, 32)]  # the tiny config's scales at 32 px


def wake_coarse_channels(model: HieraQuery) -> None:
    """What training does to the zero-initialised weights of the coarse channels (the last ones), in one step."""
    with torch.no_grad():
        model.dit.patch_projection().weight[:, -model.codec.channels:].normal_(0, 0.5, generator=torch.Generator().manual_seed(1))


def record_dit_inputs(model: HieraQuery, monkeypatch) -> list[torch.Tensor]:
    """Every ``extra`` tensor the DiT is called with, in call order."""
    read, forward = [], model.dit.forward

    def record(latents, sigma, condition, extra=None):
        read.append(extra.clone())
        return forward(latents, sigma, condition, extra)

    monkeypatch.setattr(model.dit, "forward", record)
    return read


@pytest.mark.parametrize("dit,codec", [("sana", "pixel"), ("sd3", "autoencoder_kl")])
def test_widening_changes_nothing_until_trained_and_then_finer_scales_follow_the_coarse_image(dit, codec):
    model = make_model(dit, "qwen2_5_vl", codec)
    pipe = HieraQueryPipeline(model)
    before = pipe.generate(PROMPTS, seed=3, options=OPTIONS)
    model.read_coarse(0.2)
    assert model.reads_coarse and not model.reads_source and model.dit.in_channels == 2 * model.codec.channels
    assert model.config.coarse_input_noise == 0.2
    after = pipe.generate(PROMPTS, seed=3, options=OPTIONS)
    assert all(torch.equal(a, b) for a, b in zip(before.images, after.images))
    wake_coarse_channels(model)
    woken = pipe.generate(PROMPTS, seed=3, options=OPTIONS)
    assert torch.equal(woken.images[0], before.images[0])  # the coarsest scale reads zeros, which the new weights ignore
    assert not torch.equal(woken.final, before.final)
    # a finer scale painted from noise (strength 1) still reads the image it is given as the previous scale
    encoded = pipe.encode(PROMPTS)
    bright, dark = torch.ones(2, 3, 16, 16), torch.zeros(2, 3, 16, 16)
    assert not torch.equal(*(pipe.sample_scale(encoded, 2, (32, 32), seed=1, steps=2, init=x) for x in (bright, dark)))


def test_sampling_reads_the_previous_scale_upsampled_and_the_coarsest_reads_zeros(monkeypatch):
    model = make_model()
    model.read_coarse(0.3)
    wake_coarse_channels(model)
    read = record_dit_inputs(model, monkeypatch)
    out = HieraQueryPipeline(model).generate(PROMPTS, seed=0, options=dataclasses.replace(OPTIONS, images_per_prompt=2))
    assert len(out.images) == 3 and len(read) == 6  # 2 steps per scale
    assert not read[0].any() and not read[1].any()
    for k in (1, 2):
        expected = model.codec.encode(to_signed(resize(out.images[k - 1], SIZES[k])))  # no noise when sampling
        for extra in read[2 * k: 2 * k + 2]:  # the empty and the prompted branch read the same image
            assert extra.shape == (8, 3, *SIZES[k])
            assert torch.allclose(extra[:4], expected) and torch.equal(extra[:4], extra[4:])


def test_training_reads_the_target_at_the_previous_scale_noised_up_to_the_level(monkeypatch):
    model = make_model()
    model.read_coarse(0.0)
    read = record_dit_inputs(model, monkeypatch)
    batch = TrainingBatch(PROMPTS, TARGETS)
    model.training_loss(batch, torch.Generator().manual_seed(0), sigma=0.5, dropout=False)
    assert not read[0].any()
    clean = [model.codec.encode(to_signed(resize(resize(TARGETS, SIZES[k - 1]), SIZES[k]))) for k in (1, 2)]
    assert all(torch.allclose(read[k], clean[k - 1]) for k in (1, 2))
    model.read_coarse(0.5)  # already widened: only the level changes
    assert model.dit.in_channels == 2 * model.codec.channels
    read.clear()
    for seed in (0, 0, 1):
        model.training_loss(batch, torch.Generator().manual_seed(seed), sigma=0.5, dropout=False)
    assert not read[0].any() and all(torch.equal(a, b) for a, b in zip(read[0:3], read[3:6]))  # the generator decides the noise
    assert not torch.equal(read[1], read[7])
    noised = read[1:3]
    model.read_coarse(0.01)
    read.clear()
    model.training_loss(batch, torch.Generator().manual_seed(0), sigma=0.5, dropout=False)
    for k in (1, 2):  # the same draws at another level: the distance from the clean latents scales with the level
        far, near = ((x - clean[k - 1]).flatten(1).norm(dim=1) for x in (noised[k - 1], read[k]))
        assert (near > 0).all() and torch.allclose(far / near, torch.full_like(far, 50.0), rtol=1e-3)


def test_source_and_coarse_channels_keep_their_order_whichever_is_added_first():
    """Input channels: the noisy latents, the input image's, the previous scale's."""
    original = make_model().dit.patch_projection().weight.clone()
    source_first, coarse_first = make_model(), make_model()
    channels = original.shape[1]
    source_first.read_source()
    source_first.read_coarse(0.1)
    coarse_first.read_coarse(0.1)
    wake_coarse_channels(coarse_first)
    woken = coarse_first.dit.patch_projection().weight[:, -channels:].clone()
    coarse_first.read_source()  # goes in before the coarse channels, which keep their weights
    for model in (source_first, coarse_first):
        assert model.reads_source and model.reads_coarse and model.dit.in_channels == 3 * channels
        weight = model.dit.patch_projection().weight
        assert torch.equal(weight[:, :channels], original) and not weight[:, channels:2 * channels].any()
    assert not source_first.dit.patch_projection().weight[:, 2 * channels:].any()
    assert torch.equal(coarse_first.dit.patch_projection().weight[:, 2 * channels:], woken)


def test_the_widened_dit_saves_and_loads_and_paints_the_same(tmp_path):
    model = make_model()
    model.read_source()
    model.read_coarse(0.25)
    wake_coarse_channels(model)
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "ckpt"))
    assert loaded.reads_coarse and loaded.reads_source and loaded.config.coarse_input_noise == 0.25
    a, b = (HieraQueryPipeline(m).generate(PROMPTS, seed=4, options=OPTIONS).final for m in (model, loaded))
    assert torch.equal(a, b)


def test_inline_configs_record_the_channels_and_the_callers_stays_as_it_was():
    config = tiny_config("sana", "qwen2_5_vl", "pixel")
    model = HieraQuery.from_config(config)
    model.read_coarse(0.2)
    assert model.config.dit.config["in_channels"] == 6 and config.dit.config["in_channels"] == 3 and config.coarse_input_noise is None
    assert HieraQuery.from_config(model.config).reads_coarse


def test_bad_levels_and_channel_counts_are_one_clear_error():
    with pytest.raises(HieraQueryError, match=r"coarse input's noise level must be in \[0, 1\), got 1.5"):
        make_model().read_coarse(1.5)
    with pytest.raises(HieraQueryError, match=r"coarse_input_noise is -0.1; it must be in \[0, 1\)"):
        dataclasses.replace(tiny_config("sana", "qwen2_5_vl", "pixel"), coarse_input_noise=-0.1)
    config = dataclasses.replace(tiny_config("sana", "qwen2_5_vl", "pixel"), coarse_input_noise=0.2)  # the DiT was not widened
    with pytest.raises(HieraQueryError, match="and coarse_input_noise is set; set dit.config in_channels to 6 .or 9 to read the input image's latents too."):
        HieraQuery.from_config(config)
