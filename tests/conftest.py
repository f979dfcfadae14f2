"""Shared fixtures: tiny HieraQuery models built from the real transformers / diffusers classes."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, torch.get_num_threads()))

from tiny_models import make_model  # noqa: E402
from hieraquery_core.model import HieraQuery  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model() -> HieraQuery:
    """SANA + Qwen2.5-VL + pixel space, 4/8/16 queries at 8/16/32 px (do not mutate)."""
    return make_model()
