"""ShapesWorld's latent space: a small diffusers ``AutoencoderKL`` trained once on ShapesWorld renders.

The paper's DiT paints in a frozen VAE's latent space (SANA's DC-AE, section 4.2). ShapesWorld has no
pretrained VAE, so this module makes one, as ``train/shapesworld_mllm.py`` makes the frozen MLLM: a
4x-downsampling ``AutoencoderKL`` (64 px -> a 16 x 16 x 4 latent; the DiT then uses patch 1, so its token grids
stay 4x4 / 8x8 / 16x16) trained to reconstruct random scenes at every scale's size (64, 32 and 16 px, resized
as the trainer resizes its targets) with an L1 + MSE loss and a small KL term (Stable Diffusion's weight,
1e-6). There is no adversarial or perceptual term: no LPIPS weights can be had offline, and flat-coloured
shapes need none. The latents' mean and standard deviation over fresh scenes become the VAE's
``shift_factor`` and ``scaling_factor`` (SD3's convention, used by :class:`hieraquery_core.latent_codec.LatentCodec`).

It is validated the way the rest of ShapesWorld is: the GenEval parser scores decoded reconstructions of
held-out scenes (``evaluate_vae``: 1.0 means the scorer cannot tell them from the renders). The result is
a Hugging Face folder (``config.json`` + safetensors), frozen afterwards like any VAE.

    python -m train.shapesworld_vae --steps 3000 --out hieraquery_core/assets/shapesworld-vae
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from hieraquery_core.checkpoint import replace_directory
from hieraquery_core.images import resize, to_signed
from hieraquery_core.shapesworld import geneval, heldout_pairs, random_scene, render
from train.backbone_pretraining import pretrain_loop
from train.evaluate import to_uint8
from train.shapesworld_data import to_pixels

ASSET_DIR = Path(__file__).resolve().parents[1] / "hieraquery_core" / "assets" / "shapesworld-vae"
TRAIN_SEED = 1
SIZES = (64, 32, 16)
"""The sizes the demo's scales paint at (spec: 64 px, and 32 / 16 px area-downsampled)."""
KL_WEIGHT = 1e-6


def shapesworld_vae_config(channels: tuple[int, ...] = (16, 32, 64), latent_channels: int = 4, groups: int = 8) -> dict[str, Any]:
    """An ``AutoencoderKL`` config downsampling 2^(len(channels) - 1) times (4x by default)."""
    blocks = len(channels)
    return dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * blocks, up_block_types=["UpDecoderBlock2D"] * blocks,
                block_out_channels=list(channels), latent_channels=latent_channels, layers_per_block=1, norm_num_groups=groups, sample_size=64,
                scaling_factor=1.0, shift_factor=0.0)


def scene_batch(rng: np.random.Generator, n: int) -> torch.Tensor:
    """``n`` random scenes (filled and outline), rendered at 64 px: [n, 3, 64, 64] in [0, 1]."""
    return torch.stack([to_pixels(render(random_scene(rng))) for _ in range(n)])


def reconstruction_loss(vae: AutoencoderKL, pixels: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1 + MSE of the decoded sample, KL to the unit normal) for images [B, 3, H, W] in [0, 1]."""
    x = to_signed(pixels)
    posterior = vae.encode(x).latent_dist
    decoded = vae.decode(posterior.sample(generator)).sample
    return F.l1_loss(decoded, x) + F.mse_loss(decoded, x), posterior.kl().mean() / x[0].numel()


def train_vae(vae: AutoencoderKL, steps: int, batch: int = 32, lr: float = 1e-3, seed: int = TRAIN_SEED, log_every: int = 100) -> list[float]:
    """AdamW with warm-up and cosine decay; each step takes one fresh batch at one of :data:`SIZES` (in turn)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 5])
    generator = torch.Generator().manual_seed(seed)
    vae.requires_grad_(True).train()

    def batch_loss(step: int) -> tuple[torch.Tensor, str]:
        size = SIZES[step % len(SIZES)]
        recon, kl = reconstruction_loss(vae, resize(scene_batch(rng, batch), (size, size)), generator)
        return recon + KL_WEIGHT * kl, f" kl {kl.item():.1f}"

    losses = pretrain_loop(list(vae.parameters()), steps, lr, batch_loss, log_every=log_every)
    vae.requires_grad_(False).eval()
    return losses


@torch.no_grad()
def set_latent_statistics(vae: AutoencoderKL, n: int = 256, seed: int = TRAIN_SEED) -> dict[str, float]:
    """Set ``shift_factor`` / ``scaling_factor`` to the mean / 1 / std of the latent means of ``n`` fresh scenes."""
    latents = vae.encode(to_signed(scene_batch(np.random.default_rng([seed, 9]), n))).latent_dist.mode()
    stats = {"shift_factor": float(latents.mean()), "scaling_factor": float(1.0 / latents.std())}
    vae.register_to_config(**stats)
    return stats


@torch.no_grad()
def evaluate_vae(vae: AutoencoderKL, n: int = 120, batch: int = 40) -> dict[str, Any]:
    """GenEval of decoded reconstructions (latent mean) of held-out scenes at each size, and their mean absolute error (0-255)."""
    pairs = heldout_pairs(n)
    renders = torch.stack([to_pixels(render(scene)) for _, _, scene in pairs])
    report: dict[str, Any] = {"n": n}
    for size in SIZES:
        decoded, originals = [], []
        for start in range(0, n, batch):
            pixels = resize(renders[start : start + batch], (size, size))
            out = vae.decode(vae.encode(to_signed(pixels)).latent_dist.mode()).sample
            decoded += to_uint8((out.clamp(-1, 1) + 1) / 2)
            originals += to_uint8(pixels)
        report[f"geneval_{size}"] = geneval((c, p, img) for (c, p, _), img in zip(pairs, decoded))["overall"]
        report[f"mae_{size}"] = float(np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(decoded, originals)]))
    return report


def save_vae(vae: AutoencoderKL, out: Path, report: dict[str, Any]) -> None:
    """A diffusers folder (config.json + safetensors) and ``vae_scores.json``; an existing folder is replaced only once the new one is complete."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp, safe_serialization=True)
    (tmp / "vae_scores.json").write_text(json.dumps(report, indent=2) + "\n")
    replace_directory(tmp, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--channels", default="16,32,64", help="block widths; n widths downsample 2^(n-1) times (default %(default)s: 4x)")
    parser.add_argument("--latent-channels", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-n", type=int, default=120)
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--out", type=Path, default=ASSET_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**shapesworld_vae_config(tuple(int(c) for c in args.channels.split(",")), args.latent_channels))
    train_vae(vae, args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    report = {"steps": args.steps, "batch": args.batch, **set_latent_statistics(vae, seed=args.seed), **evaluate_vae(vae, n=args.eval_n)}
    save_vae(vae, args.out, report)
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
