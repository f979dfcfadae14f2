"""Optimizer and learning-rate schedule (paper section 4.2; MetaQuery's AdamW settings).

Schedule: transformers' ``get_cosine_with_min_lr_schedule_with_warmup_lr_rate``. It is the one
schedule transformers 5.x ships whose warmup starts from a non-zero rate (``warmup_lr_rate``);
``get_cosine_with_min_lr_schedule_with_warmup`` and diffusers' ``get_scheduler("cosine", ...)`` both
warm up from 0. With ``warmup_lr_rate = min_lr / lr`` and ``min_lr`` the learning rate of optimizer
step ``i`` (0-based) of ``T`` is exactly the paper's "from 1e-6 up to 5e-5 and back to 1e-6":

- step 0: ``min_lr`` (1e-6), rising linearly to ``lr`` (5e-5) at step ``warmup - 1``;
- then a half cosine from ``lr`` to ``min_lr``, reached at the last step ``T - 1``.

Optimizer: ``torch.optim.AdamW`` with betas (0.9, 0.95) and weight decay 0.1 (MetaQuery's recipe),
decay applied as transformers' ``Trainer`` does (not to biases and norm weights, found with
``transformers.trainer_pt_utils.get_parameter_names``). The frozen MLLM (and VAE) are never given to it.
The fused implementation is used (CPU and CUDA): bench/ measured the optimizer step at 10.1% of a
medium training step unfused and 2.5% fused (BENCHMARKS.md).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup_lr_rate
from transformers.trainer_pt_utils import get_parameter_names

from hieraquery_core.errors import require

NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
"""transformers ``Trainer.get_decay_parameter_names``' patterns: these parameters get no weight decay."""


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed and a non-decayed group (names kept for logging)."""
    decay_names = set(get_parameter_names(model, [nn.LayerNorm], NO_DECAY_PATTERNS))
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if name in decay_names else no_decay).append(param)
    require(bool(decay or no_decay), "the model has no trainable parameters")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, lr: float = 5e-5, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over everything trainable (the MLLM is frozen by the model itself)."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=True)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr: float = 1e-6):
    """Linear warmup from ``min_lr`` to the optimizer's lr, then cosine down to ``min_lr`` at the last step."""
    require(total_steps > 0, "the number of training steps must be positive")
    require(0 <= warmup_steps <= total_steps, f"warmup ({warmup_steps}) must be between 0 and the number of steps ({total_steps})")
    peak = optimizer.defaults["lr"]
    require(0 <= min_lr <= peak, f"min lr {min_lr} must be between 0 and the peak lr {peak}")
    return get_cosine_with_min_lr_schedule_with_warmup_lr_rate(
        optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps, min_lr=min_lr, warmup_lr_rate=min_lr / peak if peak else 0.0
    )


def lr_curve(total_steps: int, warmup_steps: int, lr: float = 5e-5, min_lr: float = 1e-6) -> list[float]:
    """The learning rate of every optimizer step (for plots and tests)."""
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=lr)
    sched = make_scheduler(opt, total_steps, warmup_steps, min_lr)
    out = []
    for _ in range(total_steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out
