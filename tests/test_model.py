"""The whole model at tiny sizes: shapes, dtypes, gradients, losses (sections 3.1-3.2, Eq. 1-5)."""

import dataclasses

import pytest
import torch

from hieraquery_core.config import ScaleSpec
from hieraquery_core.errors import HieraQueryError
from hieraquery_core.model import TrainingBatch

from tiny_models import COMBOS, make_model


def batch_for(model, n: int = 2, size: int = 32, seed: int = 0) -> TrainingBatch:
    g = torch.Generator().manual_seed(seed)
    targets = torch.rand(n, 3, size, size, generator=g)
    images = [[torch.rand(3, size, size, generator=g)] for _ in range(n)] if model.mllm.supports_images else None
    return TrainingBatch(["a red circle", "two blue squares"][:n] * (n // 2 or 1), targets, images)


@pytest.mark.parametrize("dit,mllm,codec", COMBOS)
def test_shapes_and_dtypes_through_every_stage(dit, mllm, codec):
    model = make_model(dit, mllm, codec)
    images = [[torch.rand(3, 32, 32)], [torch.rand(3, 32, 32)]] if mllm == "qwen2_5_vl" else None
    states = model.encode(["a red circle", "a blue square to the left of a green circle"], images)
    assert [tuple(s.shape) for s in states] == [(2, 16, 64), (2, 64, 64), (2, 256, 64)]
    assert all(s.dtype == torch.float32 for s in states)
    conditions = model.condition(states)
    assert [c.tokens.shape for c in conditions] == [(2, n, model.dit.caption_dim) for n in (16, 64, 256)]
    assert (conditions[0].pooled is not None) == (dit == "sd3")
    sizes = model.scale_sizes()
    assert sizes == [(8, 8), (16, 16), (32, 32)]
    for condition, (h, w) in zip(conditions, sizes):
        latents = model.codec.encode(torch.rand(2, 3, h, w) * 2 - 1)
        f = model.codec.downsample
        assert latents.shape == (2, model.codec.channels, h // f, w // f)
        velocity = model.dit(latents, torch.full((2,), 0.5), condition)
        assert velocity.shape == latents.shape and velocity.dtype == latents.dtype
        assert model.codec.decode(velocity).shape == (2, 3, h, w)


@pytest.mark.parametrize("dit,mllm,codec", COMBOS[:3])
def test_gradients_reach_queries_connector_dit_but_not_mllm(dit, mllm, codec):
    model = make_model(dit, mllm, codec, alignment_weight=0.5 if mllm == "qwen2_5_vl" else 0.0).train()
    loss = model.training_loss(batch_for(model), torch.Generator().manual_seed(0))
    loss.total.backward()
    for name, module in (("queries", model.queries), ("connector", model.connector), ("dit", model.dit)):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), name
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in model.queries.queries)
    assert all(not p.requires_grad and p.grad is None for p in model.mllm.parameters())
    if model.codec.vae is not None:
        assert all(not p.requires_grad for p in model.codec.vae.parameters())
    if model.aligner is not None:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.aligner.parameters())


def test_mllm_stays_in_eval_mode_while_training(tiny_model):
    model = make_model()
    model.train()
    assert not model.mllm.model.training and model.connector.training


def test_query_states_depend_on_prompt_and_image_and_coarse_scales_do_not_see_finer_ones(tiny_model):
    with torch.no_grad():
        a = tiny_model.encode(["a red circle"])
        b = tiny_model.encode(["a blue square"])
        img = tiny_model.encode(["a red circle"], [[torch.rand(3, 32, 32)]])
        assert not torch.allclose(a[0], b[0])
        assert not torch.allclose(a[2], img[2])
        # causal MLLM: perturbing the finest queries leaves the coarsest scale's states unchanged (Eq. 4)
        original = tiny_model.queries.queries[2].data.clone()
        tiny_model.queries.queries[2].data += 1.0
        c = tiny_model.encode(["a red circle"])
        tiny_model.queries.queries[2].data.copy_(original)
    assert torch.allclose(a[0], c[0], atol=1e-6) and not torch.allclose(a[2], c[2])


def test_left_padding_does_not_change_a_prompts_states(tiny_model):
    with torch.no_grad():
        alone = tiny_model.encode(["a red circle"])
        batched = tiny_model.encode(["a red circle", "a blue square to the left of a green circle and a red triangle"])
    assert all(torch.allclose(x[0], y[0], atol=1e-5) for x, y in zip(alone, batched))


def test_connector_is_bidirectional_within_a_scale_and_isolated_across_scales(tiny_model):
    torch.manual_seed(0)
    states = [torch.randn(1, 16, 64), torch.randn(1, 64, 64), torch.randn(1, 256, 64)]
    changed = [s.clone() for s in states]
    changed[0][:, -1] += 1.0
    with torch.no_grad():
        before, after = tiny_model.condition(states), tiny_model.condition(changed)
    assert not torch.allclose(before[0].tokens[:, 0], after[0].tokens[:, 0])  # an earlier token sees a later one
    assert torch.equal(before[1].tokens, after[1].tokens) and torch.equal(before[2].tokens, after[2].tokens)


def test_alignment_loss_is_finite_and_decreases_when_optimised_alone():
    model = make_model(alignment_weight=1.0)
    batch = batch_for(model)
    features = model.mllm.vision_features(batch.targets)
    assert features.shape == (2, 4, 4, 64)
    with torch.no_grad(), model.dit.capture_block(None) as captured:
        cond = model.condition(model.encode(batch.prompts))[2]
        model.dit(torch.randn(2, 3, 32, 32), torch.full((2,), 0.5), cond)
    tokens = captured[0]
    assert tokens.shape == (2, 256, model.dit.inner_dim)
    opt = torch.optim.Adam(model.aligner.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model.aligner(tokens, (16, 16), features)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert -1.0 <= losses[-1] < losses[0] - 0.2


def test_training_loss_without_alignment_is_the_flow_loss_alone():
    model = make_model(alignment_weight=1.0)
    batch = batch_for(model)
    aligned, plain = (model.training_loss(batch, generator=torch.Generator().manual_seed(0), dropout=False, align=align) for align in (True, False))
    assert len(aligned.alignment) == len(model.config.scales) and plain.alignment == []
    assert torch.allclose(torch.stack(plain.flow), torch.stack(aligned.flow))  # the same draws: only the alignment term differs
    assert torch.allclose(plain.total, torch.stack(plain.flow).sum())
    assert torch.allclose(aligned.total, plain.total + torch.stack(aligned.alignment).sum())


def test_alignment_features_are_interpolated_to_each_scales_token_grid():
    from hieraquery_core.alignment import RepresentationAlignment

    features = torch.arange(16.0).view(1, 4, 4, 1).expand(1, 4, 4, 3)
    for grid in [(2, 2), (4, 4), (16, 16)]:
        out = RepresentationAlignment.interpolate_features(features, grid)
        assert out.shape == (1, grid[0] * grid[1], 3)
    coarse = RepresentationAlignment.interpolate_features(features, (2, 2))
    assert torch.allclose(coarse[0, :, 0], torch.tensor([2.5, 4.5, 10.5, 12.5]))


@pytest.mark.parametrize("alignment", [0.0, 1.0])
def test_a_few_steps_reduce_the_training_loss_on_a_fixed_batch(alignment):
    model = make_model(alignment_weight=alignment).train()
    model.config.prompt_dropout = model.config.image_dropout = 0.0
    batch = batch_for(model)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=2e-3)

    def loss_at(step_seed: int) -> float:
        with torch.no_grad():
            return model.training_loss(batch, torch.Generator().manual_seed(step_seed)).total.item()

    before = sum(loss_at(s) for s in range(3))
    for step in range(25):
        out = model.training_loss(batch, torch.Generator().manual_seed(step % 3))
        assert len(out.flow) == 3 and len(out.alignment) == (3 if alignment else 0)
        opt.zero_grad()
        out.total.backward()
        opt.step()
    after = sum(loss_at(s) for s in range(3))
    assert after < 0.8 * before


def test_condition_dropout_empties_prompts_and_blackens_images():
    model = make_model()
    model.config.prompt_dropout = model.config.image_dropout = 1.0
    batch = batch_for(model)
    dropped = model.drop_conditions(batch, torch.Generator().manual_seed(0))
    assert dropped.prompts == ["", ""] and all(img[0].abs().sum() == 0 for img in dropped.images)
    assert torch.equal(dropped.targets, batch.targets)
    model.config.prompt_dropout = model.config.image_dropout = 0.0
    kept = model.drop_conditions(batch, None)
    assert kept.prompts == batch.prompts and torch.equal(kept.images[0][0], batch.images[0][0]) and torch.equal(kept.targets, batch.targets)


@pytest.mark.parametrize("keeps_image", [False, True])
def test_a_dropped_instruction_trains_towards_the_input_image_only_when_configured(keeps_image):
    """``dropped_prompt_keeps_image``: prompt dropped, image kept -> the target is the input image (stage 2's
    reconstruction); off (MetaQuery / InstructPix2Pix) the target stays the edited image."""
    model = make_model()
    model.config.dropped_prompt_keeps_image = keeps_image
    model.config.prompt_dropout, model.config.image_dropout = 1.0, 0.0
    batch = batch_for(model)
    batch.images[1] = []  # a text-to-image sample replayed in the batch: no input image, its target stays
    out = model.drop_conditions(batch, torch.Generator().manual_seed(0))
    assert out.prompts == ["", ""]
    assert torch.equal(out.targets[0], batch.images[0][0] if keeps_image else batch.targets[0])
    assert torch.equal(out.targets[1], batch.targets[1])
    model.config.image_dropout = 1.0  # image dropped too: the unconditional branch keeps the real target
    assert torch.equal(model.drop_conditions(batch, torch.Generator().manual_seed(0)).targets, batch.targets)


def test_training_noise_levels_follow_the_configured_logit_normal():
    """sigma = sigmoid(N(mean, std)) per sample and scale (section 4.2's flow matching; SD3's logit-normal)."""
    model = make_model()
    seen = []
    model.dit.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    medians = {}
    for mean in (0.0, 1.5):
        model.config.timestep_logit_mean = mean
        seen.clear()
        for seed in range(40):
            model.training_loss(batch_for(model), torch.Generator().manual_seed(seed))
        medians[mean] = torch.cat(seen).median().item()
    assert abs(medians[0.0] - 0.5) < 0.1 and abs(medians[1.5] - torch.sigmoid(torch.tensor(1.5)).item()) < 0.1
    with pytest.raises(HieraQueryError, match="timestep_logit_std"):
        dataclasses.replace(model.config, timestep_logit_std=0.0)


def test_single_scale_configuration_uses_the_same_code_path():
    model = make_model(scales=[ScaleSpec((16, 16), 1.0)])
    assert model.queries.sequence_length == 258
    loss = model.training_loss(batch_for(model), torch.Generator().manual_seed(0))
    assert len(loss.flow) == 1 and torch.isfinite(loss.total)
    assert model.scale_sizes() == [(32, 32)]


def test_two_scale_and_non_square_query_grids():
    model = make_model(scales=[ScaleSpec((4, 4), 0.25), ScaleSpec((16, 21), 1.0)])
    states = model.encode(["a red circle"])
    assert [s.shape[1] for s in states] == [16, 336]


def test_text_only_mllm_refuses_images_and_alignment_with_a_clear_error():
    model = make_model(mllm="causal_lm")
    with pytest.raises(HieraQueryError, match="text-only"):
        model.encode(["make it blue"], [[torch.rand(3, 32, 32)]])
    with pytest.raises(HieraQueryError, match="vision encoder"):
        make_model(mllm="causal_lm", alignment_weight=1.0)


def test_bad_resolutions_are_refused_with_the_fix(tiny_model):
    with pytest.raises(HieraQueryError, match="multiple of"):
        tiny_model.scale_sizes(30, 32)
    sd3 = make_model("sd3", "qwen2_5_vl", "pixel")
    with pytest.raises(HieraQueryError, match="positional table"):
        sd3.scale_sizes(128, 128)
