"""Shared fixtures. Heavy imports (torch, the model) happen only in the fixtures that need them."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_model():
    """SANA + Qwen2.5-VL + pixel space, 4/8/16 queries at 8/16/32 px (do not mutate)."""
    from tiny_models import make_model

    return make_model()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train several times faster on one thread than on two on a loaded 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
