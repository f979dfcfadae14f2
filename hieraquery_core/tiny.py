"""Tiny configurations of the real backbone classes.

Used by the tests, the benchmarks' "tiny" rows and the command line's fallback when no trained
checkpoint is given. Every part is the real transformers / diffusers class, only very small and
randomly initialised, so the whole model runs on a CPU in well under a second.
"""

from __future__ import annotations

from typing import Any

from .config import AlignmentSpec, BackboneSpec, ConnectorSpec, HieraQueryConfig, ScaleSpec, default_scales

TINY_VOCABULARY = (
    "a an the and of is are there what how many color to left right above below it make remove add style outline filled "
    "red green blue yellow purple orange circle square triangle circles squares triangles one two three four zero yes no "
    "describe image picture , ? ."
).split()

TEXT_HIDDEN = 64


def tiny_mllm(kind: str = "qwen2_5_vl", vocabulary: list[str] | None = None, image_pixels: int = 64 * 64) -> BackboneSpec:
    """A 2-layer Qwen2.5-VL (2-block vision tower, patch 8) or a 2-layer Qwen2 causal LM."""
    text = dict(hidden_size=TEXT_HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    options: dict[str, Any] = {"vocabulary": list(vocabulary or TINY_VOCABULARY)}
    if kind == "causal_lm":
        return BackboneSpec("causal_lm", config={"model_type": "qwen2", **text}, options=options)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=TEXT_HIDDEN, patch_size=8, spatial_merge_size=2, temporal_patch_size=2, window_size=64, fullatt_block_indexes=[0, 1])
    options["image_pixels"] = image_pixels
    return BackboneSpec("qwen2_5_vl", config={"text_config": text, "vision_config": vision}, options=options)


def tiny_dit(kind: str = "sana", in_channels: int = 3, sample_size: int = 16) -> BackboneSpec:
    """A 2-block SANA or SD3 transformer, patch size 2, width 32."""
    if kind == "sd3":
        cfg = dict(sample_size=sample_size, patch_size=2, in_channels=in_channels, out_channels=in_channels, num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48, caption_projection_dim=32, pooled_projection_dim=16, pos_embed_max_size=sample_size)
    else:
        cfg = dict(sample_size=sample_size, patch_size=2, in_channels=in_channels, out_channels=in_channels, num_attention_heads=2, attention_head_dim=16, num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=48, mlp_ratio=2.0, interpolation_scale=1)
    return BackboneSpec(kind, config=cfg)


def tiny_codec(kind: str = "pixel") -> BackboneSpec:
    """Pixel space, or a 2x-downsampling AutoencoderKL / AutoencoderDC with 4 latent channels."""
    if kind == "autoencoder_kl":
        cfg = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], latent_channels=4, layers_per_block=1, norm_num_groups=4, scaling_factor=1.5, shift_factor=0.1)
        return BackboneSpec(kind, config=cfg)
    if kind == "autoencoder_dc":
        cfg = dict(in_channels=3, latent_channels=4, attention_head_dim=8, encoder_block_types="ResBlock", decoder_block_types="ResBlock", encoder_block_out_channels=[8, 16], decoder_block_out_channels=[8, 16], encoder_layers_per_block=[1, 1], decoder_layers_per_block=[1, 1], encoder_qkv_multiscales=[[], []], decoder_qkv_multiscales=[[], []], scaling_factor=0.5)
        return BackboneSpec(kind, config=cfg)
    return BackboneSpec("pixel")


def tiny_config(
    dit: str = "sana",
    mllm: str = "qwen2_5_vl",
    codec: str = "pixel",
    scales: list[ScaleSpec] | None = None,
    alignment_weight: float = 0.0,
    image_size: int = 32,
) -> HieraQueryConfig:
    """A complete tiny HieraQuery config (default: SANA, Qwen2.5-VL, pixel space, 4/8/16 queries, 32 px)."""
    codec_spec = tiny_codec(codec)
    channels = 3 if codec == "pixel" else 4
    factor = 1 if codec == "pixel" else 2
    return HieraQueryConfig(
        mllm=tiny_mllm(mllm),
        dit=tiny_dit(dit, in_channels=channels, sample_size=image_size // factor),
        codec=codec_spec,
        connector=ConnectorSpec(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64),
        scales=scales if scales is not None else default_scales(),
        alignment=AlignmentSpec(weight=alignment_weight, block=None, projector_dim=32),
        image_size=image_size,
        name="tiny-random",
    )
