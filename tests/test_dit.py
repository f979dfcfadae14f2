"""The DiT wrapper's caption-path cache (dit.py: ``constant_condition``), for SANA and SD3."""

from collections import Counter

import pytest
import torch

from hieraquery_core.connector import ScaleCondition
from hieraquery_core.pipeline import HieraQueryPipeline, SamplingOptions

from tiny_models import make_model


def inputs(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dit = model.dit
    latents = torch.randn(2, dit.in_channels, 8, 8, generator=g)
    pooled = torch.randn(2, dit.pooled_dim, generator=g) if dit.pooled_dim else None
    return latents, ScaleCondition(torch.randn(2, 5, dit.caption_dim, generator=g), pooled)


def counting(modules, monkeypatch) -> Counter:
    """Count the real computations of each module: calls of its class's forward (hooks would also see memoised calls)."""
    counts: Counter = Counter()
    for cls in {type(m) for m in modules}:
        def forward(self, *args, _original=cls.forward, **kwargs):
            counts[id(self)] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(cls, "forward", forward)
    return counts


@pytest.mark.parametrize("kind", ["sana", "sd3"])
def test_caption_path_runs_once_per_condition_and_results_are_unchanged(kind, monkeypatch):
    model = make_model(dit=kind, mllm="causal_lm")
    dit = model.dit
    latents, condition = inputs(model)
    sigmas = [torch.tensor(s) for s in (0.9, 0.5, 0.1)]
    with torch.no_grad():
        plain = [dit(latents, s, condition) for s in sigmas]
        path = dit.caption_path()
        counts = counting(path, monkeypatch)
        with dit.constant_condition():
            cached = [dit(latents, s, condition) for s in sigmas]
            assert [counts[id(m)] for m in path] == [1] * len(path)  # each caption-path module computed once for three steps
            dit(latents, sigmas[0], inputs(model, seed=1)[1])
            assert [counts[id(m)] for m in path] == [2] * len(path)  # a different condition is computed, not served from the memo
    for a, b in zip(plain, cached):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all("forward" not in m.__dict__ for m in dit.caption_path())  # the class's forward is back


def test_condition_modified_in_place_is_recomputed_and_gradients_are_never_memoised():
    model = make_model()
    dit = model.dit
    latents, condition = inputs(model)
    sigma = torch.tensor(0.5)
    with dit.constant_condition():
        with torch.no_grad():
            before = dit(latents, sigma, condition)
            condition.tokens.mul_(2.0)
            after = dit(latents, sigma, condition)
            fresh = dit(latents, sigma, ScaleCondition(condition.tokens.clone()))
        torch.testing.assert_close(after, fresh, rtol=0, atol=0)
        assert not torch.equal(before, after)
        tokens = condition.tokens.clone().requires_grad_(True)
        dit(latents, sigma, ScaleCondition(tokens)).sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0


def test_an_instance_forward_set_by_someone_else_survives_the_cache():
    model = make_model()
    module = model.dit.caption_path()[0]
    calls = []
    original = module.forward

    def wrapped(x):
        calls.append(1)
        return original(x)

    module.forward = wrapped  # as accelerate's offload hooks do
    latents, condition = inputs(model)
    with torch.no_grad(), model.dit.constant_condition():
        model.dit(latents, torch.tensor(0.5), condition)
        model.dit(latents, torch.tensor(0.4), condition)
    assert module.__dict__["forward"] is wrapped and calls == [1]


def test_the_pipeline_samples_the_same_images_with_the_cache_as_without(monkeypatch):
    pipe = HieraQueryPipeline(make_model())
    options = SamplingOptions(steps=3)
    cached = pipe.generate("a red circle", seed=5, options=options).images
    monkeypatch.setattr(type(pipe.model.dit), "caption_path", lambda self: [])  # nothing memoised
    plain = pipe.generate("a red circle", seed=5, options=options).images
    for a, b in zip(cached, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
