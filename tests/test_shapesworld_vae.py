"""ShapesWorld's autoencoder (train/shapesworld_vae.py): training, latent statistics, the saved folder, scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from hieraquery_core.backbones import build_codec
from hieraquery_core.config import BackboneSpec
from hieraquery_core.images import to_signed
from train.shapesworld_vae import (evaluate_vae, reconstruction_loss, save_vae, scene_batch, set_latent_statistics, shapesworld_vae_config,
                                   train_vae)

pytestmark = pytest.mark.usefixtures("one_thread")


def small_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(**shapesworld_vae_config((8, 16, 16), latent_channels=4, groups=4))


def test_config_downsamples_four_times_to_four_latent_channels():
    vae = AutoencoderKL(**shapesworld_vae_config())
    latents = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
    assert latents.shape == (1, 4, 16, 16)
    assert vae.decode(latents).sample.shape == (1, 3, 64, 64)


def test_training_lowers_the_reconstruction_loss_of_unseen_scenes():
    vae = small_vae()
    fixed = scene_batch(np.random.default_rng(123), 8)
    with torch.no_grad():
        before = reconstruction_loss(vae.eval(), fixed, torch.Generator().manual_seed(0))[0].item()
    losses = train_vae(vae, steps=45, batch=8, lr=3e-3, log_every=0)
    with torch.no_grad():
        after = reconstruction_loss(vae, fixed, torch.Generator().manual_seed(0))[0].item()
    assert len(losses) == 45 and after < 0.7 * before
    assert not any(p.requires_grad for p in vae.parameters()) and not vae.training  # frozen afterwards, like any VAE


def test_latent_statistics_and_the_saved_folder_load_as_the_models_codec(tmp_path):
    vae = small_vae()
    stats = set_latent_statistics(vae, n=32)
    assert vae.config.scaling_factor == stats["scaling_factor"] > 0 and vae.config.shift_factor == stats["shift_factor"]
    out = tmp_path / "vae"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")  # an existing folder is replaced whole
    save_vae(vae, out, {"note": "test"})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors", "vae_scores.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]  # no .tmp or .old left behind
    assert json.loads((out / "vae_scores.json").read_text()) == {"note": "test"}
    codec = build_codec(BackboneSpec("autoencoder_kl", path=str(out)))
    assert codec.downsample == 4 and codec.channels == 4
    latents = codec.encode(to_signed(scene_batch(np.random.default_rng([1, 9]), 32)))  # the calibration scenes
    assert abs(latents.mean().item()) < 1e-4 and abs(latents.std().item() - 1) < 1e-3


def test_evaluation_scores_every_size():
    report = evaluate_vae(small_vae(), n=12, batch=6)
    assert report["n"] == 12
    for size in (64, 32, 16):
        assert 0 <= report[f"geneval_{size}"] <= 1 and report[f"mae_{size}"] > 1  # an untrained autoencoder is far from the renders
