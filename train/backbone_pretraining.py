"""The optimisation loop of the one-off ShapesWorld backbones: the frozen MLLM (``train/shapesworld_mllm.py``)
and the autoencoder (``train/shapesworld_vae.py``).

Both are trained once, before the paper's three HieraQuery stages, on freshly sampled batches (so there is no
dataset, epoch or resume to manage, unlike ``train/train.py``): AdamW, a linear warm-up of min(100, steps / 10)
steps multiplied by a half cosine to 0, gradients clipped at norm 1, the loss printed every ``log_every`` steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

BatchLoss = Callable[[int], tuple[torch.Tensor, str]]
"""``batch_loss(step) -> (loss, note)``: the loss of a fresh batch, and text appended to the log line."""


def pretrain_loop(params: list[nn.Parameter], steps: int, lr: float, batch_loss: BatchLoss, *, weight_decay: float = 0.0,
                  betas: tuple[float, float] = (0.9, 0.999), log_every: int = 50, after_step: Callable[[int], None] | None = None) -> list[float]:
    """Run ``steps`` optimizer steps over ``params``; ``after_step(n)`` is called after the n-th (e.g. to checkpoint). Returns the losses."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    warmup = max(1, min(100, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))
    losses, start = [], time.time()
    for step in range(steps):
        loss, note = batch_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps} loss {np.mean(losses[-log_every:]):.4f}{note} ({time.time() - start:.0f}s)", flush=True)
        if after_step is not None:
            after_step(step + 1)
    return losses
