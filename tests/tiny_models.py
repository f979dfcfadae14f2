"""Tiny HieraQuery models built from the real transformers / diffusers classes, for the tests."""

from __future__ import annotations

import torch

torch.set_num_threads(1)  # tiny models are per-call overhead: one thread is fastest, and much faster on a shared machine

from hieraquery_core.model import HieraQuery
from hieraquery_core.tiny import tiny_config

COMBOS = [
    ("sana", "qwen2_5_vl", "pixel"),
    ("sd3", "qwen2_5_vl", "autoencoder_kl"),
    ("sana", "causal_lm", "autoencoder_dc"),
    ("sd3", "causal_lm", "pixel"),
]


def make_model(dit: str = "sana", mllm: str = "qwen2_5_vl", codec: str = "pixel", seed: int = 0, **kwargs) -> HieraQuery:
    torch.manual_seed(seed)
    return HieraQuery.from_config(tiny_config(dit, mllm, codec, **kwargs)).eval()


def wake_new_channels(model: HieraQuery) -> None:
    """What training does to the zero-initialised input weights of ``HieraQuery.read_source``, in one step."""
    with torch.no_grad():
        model.dit.patch_projection().weight[:, model.codec.channels:].normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
