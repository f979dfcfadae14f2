"""Rectified-flow (flow-matching) training objective, as in MetaQuery and SD3.

x_sigma = (1 - sigma) x_0 + sigma * eps, and the DiT regresses the velocity eps - x_0 with a mean
squared error. Noise levels are drawn with diffusers' ``compute_density_for_timestep_sampling``
(uniform, or SD3's logit-normal). The same convention is used by diffusers'
``FlowMatchEulerDiscreteScheduler`` at sampling time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_density_for_timestep_sampling


def sample_sigmas(batch: int, scheme: str, device: torch.device, generator: torch.Generator | None = None, logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor:
    """Noise levels in (0, 1) for a batch: 'uniform', or 'logit_normal' (sigmoid of a normal draw; SD3 uses
    mean 0, std 1; a positive mean trains more often near pure noise, where the layout is decided)."""
    weighting = "logit_normal" if scheme == "logit_normal" else "none"
    sigmas = compute_density_for_timestep_sampling(weighting, batch, logit_mean=logit_mean, logit_std=logit_std, device="cpu", generator=generator)
    return sigmas.to(device)


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_sigma = (1 - sigma) x0 + sigma noise, sigma broadcast over [B, ...]."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1.0 - s) * x0 + s * noise


def flow_matching_loss(predicted_velocity: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """MSE between the predicted velocity and the rectified-flow target noise - x0."""
    return F.mse_loss(predicted_velocity.float(), (noise - x0).float())
