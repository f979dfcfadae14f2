"""The model sizes the benchmarks run at: ``tiny`` (the tests' model), ``medium`` (CPU-sized, the DiT
dominates) and ``real`` (the paper's backbones, section 4.2: SANA-1.6B DiT, Qwen2.5-0.5B-sized
connector, with a Qwen2.5-VL-3B-shaped MLLM standing in for Ming-Lite-Omni). All at random weights,
built from the real transformers / diffusers classes through :mod:`hieraquery_core.backbones`.

``medium`` keeps the real model's proportions at a quarter of its token counts: SANA's patch-1 DiT on
the latents of a 16x deep-compression autoencoder (AutoencoderDC), 256 image tokens at full resolution
against 1024 for SANA at 1024 px, and query grids scaled down the same way (2x2 / 4x4 / 8x8 instead
of the paper's 4x4 / 8x8 / 16x16), so image tokens outnumber caption tokens 4:1 as they do at real size.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from hieraquery_core.checkpoint import BUNDLED_DEMO_PROMPT
from hieraquery_core.config import AlignmentSpec, BackboneSpec, ConnectorSpec, HieraQueryConfig, ScaleSpec, default_scales
from hieraquery_core.model import HieraQuery
from hieraquery_core.tiny import TINY_VOCABULARY, tiny_config

SIZES = ("tiny", "medium", "real")


def qwen2_5_vl_spec(text: dict, vision: dict, image_pixels: int) -> BackboneSpec:
    """A Qwen2.5-VL backbone built from a config (word-level tokenizer over the tiny vocabulary)."""
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    unit = head_dim // 16  # Qwen2.5-VL splits half of each head 2:3:3 over (time, height, width): [16, 24, 24] at head_dim 128
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2 * unit, 3 * unit, 3 * unit]}
    return BackboneSpec("qwen2_5_vl", config={"text_config": {**text, "rope_parameters": rope}, "vision_config": vision}, options={"vocabulary": list(TINY_VOCABULARY), "image_pixels": image_pixels})


def sana_spec(width: int, layers: int, heads: int, cross_heads: int, caption_channels: int, in_channels: int, sample_size: int) -> BackboneSpec:
    """A SANA transformer (linear self-attention, cross-attention, Mix-FFN, patch 1, no positional table)."""
    cfg = dict(
        in_channels=in_channels, out_channels=in_channels, num_attention_heads=heads, attention_head_dim=width // heads, num_layers=layers,
        num_cross_attention_heads=cross_heads, cross_attention_head_dim=width // cross_heads, cross_attention_dim=width,
        caption_channels=caption_channels, mlp_ratio=2.5, sample_size=sample_size, patch_size=1, interpolation_scale=None,
    )
    return BackboneSpec("sana", config=cfg)


def dc_ae_spec(channels: list[int], layers: list[int], latent_channels: int, attention_stages: int, scaling_factor: float) -> BackboneSpec:
    """A deep-compression autoencoder (downsampling 2 ** (stages - 1)); the last stages use EfficientViT blocks."""
    stages = len(channels)
    types = ["ResBlock"] * (stages - attention_stages) + ["EfficientViTBlock"] * attention_stages
    multiscales = [[]] * (stages - attention_stages) + [[5]] * attention_stages
    cfg = dict(
        in_channels=3, latent_channels=latent_channels, attention_head_dim=32,
        encoder_block_types=types, decoder_block_types=types, encoder_block_out_channels=channels, decoder_block_out_channels=channels,
        encoder_layers_per_block=layers, decoder_layers_per_block=layers, encoder_qkv_multiscales=multiscales, decoder_qkv_multiscales=multiscales,
        upsample_block_type="interpolate", downsample_block_type="Conv", scaling_factor=scaling_factor,
    )
    return BackboneSpec("autoencoder_dc", config=cfg)


def medium_config(alignment_weight: float = 0.0) -> HieraQueryConfig:
    """CPU-sized: a 4-layer Qwen2.5-VL-shaped MLLM (width 512), a 4-layer connector (width 512), a
    ~136M-parameter SANA DiT (SANA-600M's width 1152, 6 blocks) on a 16x AutoencoderDC with 32 latent channels, 256 px."""
    text = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
    vision = dict(depth=4, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=512, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1, 3])
    return HieraQueryConfig(
        mllm=qwen2_5_vl_spec(text, vision, image_pixels=224 * 224),
        dit=sana_spec(width=1152, layers=6, heads=36, cross_heads=16, caption_channels=1152, in_channels=32, sample_size=16),
        codec=dc_ae_spec(channels=[32, 64, 128, 256, 256], layers=[1, 1, 1, 1, 1], latent_channels=32, attention_stages=2, scaling_factor=0.41407),
        connector=ConnectorSpec(hidden_size=512, num_layers=4, num_heads=8, num_kv_heads=2, intermediate_size=1536),
        scales=[ScaleSpec((2, 2), 0.25), ScaleSpec((4, 4), 0.5), ScaleSpec((8, 8), 1.0)],
        alignment=AlignmentSpec(weight=alignment_weight, block=None, projector_dim=256),
        image_size=256,
        name="bench-medium",
    )


def real_config(alignment_weight: float = 0.0) -> HieraQueryConfig:
    """The paper's sizes (section 4.2) at 1024 px: Qwen2.5-VL-3B-shaped MLLM, Qwen2.5-0.5B-shaped
    connector, SANA-1.6B-shaped DiT on DC-AE f32c32 latents, scales 4x4 / 8x8 / 16x16."""
    text = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000)
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
    return HieraQueryConfig(
        mllm=qwen2_5_vl_spec(text, vision, image_pixels=448 * 448),
        dit=sana_spec(width=2240, layers=20, heads=70, cross_heads=20, caption_channels=2304, in_channels=32, sample_size=32),
        codec=dc_ae_spec(channels=[128, 256, 512, 512, 1024, 1024], layers=[3, 3, 3, 3, 3, 3], latent_channels=32, attention_stages=3, scaling_factor=0.41407),
        connector=ConnectorSpec(),
        scales=default_scales(),
        alignment=AlignmentSpec(weight=alignment_weight, block=None, projector_dim=2048),
        image_size=1024,
        name="bench-real",
    )


def bench_config(size: str, alignment_weight: float = 0.0) -> HieraQueryConfig:
    """The config of one benchmark size; the tiny one is the tests' model (SANA + Qwen2.5-VL, pixels, 32 px)."""
    if size == "tiny":
        return replace(tiny_config(alignment_weight=alignment_weight), name="bench-tiny")
    if size == "medium":
        return medium_config(alignment_weight)
    if size == "real":
        return real_config(alignment_weight)
    raise ValueError(f"unknown benchmark size {size!r}; choose one of {', '.join(SIZES)}")


PROMPT = BUNDLED_DEMO_PROMPT
"""The benchmarks' prompt, the demo's (words of the tiny vocabulary, which every size's tokenizer uses)."""


def build_model(size: str, device: torch.device, dtype: torch.dtype, alignment_weight: float = 0.0, seed: int = 0) -> HieraQuery:
    """A randomly initialised model of one size, built directly on ``device`` (no host copy of the real
    sizes' weights), then cast to ``dtype``; eval mode."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = HieraQuery.from_config(bench_config(size, alignment_weight))
    return model.to(dtype=dtype).eval()
