"""The trainable connector g_theta (Eq. 4-5): query states H -> per-scale DiT conditions.

A bidirectional transformer built from transformers' Qwen2 classes (the paper follows MetaQuery with a
Qwen2.5-0.5B-sized connector, section 4.2), with a two-layer MLP wherever widths differ (section 4.2:
"wherever additional transformations of the hidden-states dimension are required, we use a two-layer
multilayer perceptron"): MLLM width -> connector width, connector width -> the DiT's caption width,
and, for DiTs that take one (SD3), connector width -> the pooled-projection width (mean-pooled).

Every scale is encoded by the same weights but only attends within itself (a block-diagonal mask), so
the condition of scale k is g_theta(H_{s_k}), as Eq. 5 feeds each scale's tokens to its own DiT pass;
all scales still go through one batched forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2Model

from .config import ConnectorSpec


def two_layer_mlp(in_dim: int, out_dim: int, hidden: int | None = None) -> nn.Sequential:
    """The paper's width adapter: Linear -> GELU -> Linear."""
    hidden = hidden or out_dim
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, out_dim))


@dataclass
class ScaleCondition:
    """The DiT condition of one scale: caption tokens [B, N_k, caption_dim] and, for SD3, a pooled vector."""

    tokens: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, *args, **kwargs) -> "ScaleCondition":
        return ScaleCondition(self.tokens.to(*args, **kwargs), None if self.pooled is None else self.pooled.to(*args, **kwargs))

    @staticmethod
    def cat(conditions: list["ScaleCondition"]) -> "ScaleCondition":
        """Concatenate along the batch (for classifier-free guidance in one DiT call)."""
        pooled = None if conditions[0].pooled is None else torch.cat([c.pooled for c in conditions])
        return ScaleCondition(torch.cat([c.tokens for c in conditions]), pooled)

    def repeat(self, n: int) -> "ScaleCondition":
        return ScaleCondition(self.tokens.repeat_interleave(n, 0), None if self.pooled is None else self.pooled.repeat_interleave(n, 0))


def connector_config(spec: ConnectorSpec) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=1,  # the connector only ever sees inputs_embeds
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=4096,
        attn_implementation="sdpa",
    )


class Connector(nn.Module):
    """g_theta: bidirectional Qwen2 encoder with two-layer MLP adapters on both sides."""

    def __init__(self, in_dim: int, spec: ConnectorSpec, caption_dim: int, pooled_dim: int | None, encoder: Qwen2Model | None = None) -> None:
        super().__init__()
        self.encoder = encoder if encoder is not None else Qwen2Model(connector_config(spec))
        # The connector only ever sees inputs_embeds: its token embedding is never used, so it is not trained
        # (an unused trainable parameter breaks DDP, and Qwen2.5-0.5B's is 136M parameters of optimizer state).
        self.encoder.embed_tokens.requires_grad_(False)
        width = self.encoder.config.hidden_size
        for layer in self.encoder.layers:
            layer.self_attn.is_causal = False
        self.proj_in = two_layer_mlp(in_dim, width) if in_dim != width else nn.Identity()
        self.proj_out = two_layer_mlp(width, caption_dim)
        self.pooled_proj = two_layer_mlp(width, pooled_dim) if pooled_dim else None

    def forward(self, states: list[torch.Tensor]) -> list[ScaleCondition]:
        """Per-scale hidden states H_{s_k} [B, N_k, d] -> per-scale conditions (Eq. 5's g_theta(H))."""
        lengths = [s.shape[1] for s in states]
        x = self.proj_in(torch.cat(states, dim=1))
        batch, total = x.shape[:2]
        scale_id = torch.repeat_interleave(torch.arange(len(lengths), device=x.device), torch.tensor(lengths, device=x.device))
        block_mask = (scale_id[:, None] == scale_id[None, :])[None, None].expand(batch, 1, total, total)
        positions = torch.cat([torch.arange(n, device=x.device) for n in lengths])[None].expand(batch, -1)
        hidden = self.encoder(inputs_embeds=x, attention_mask=block_mask, position_ids=positions).last_hidden_state
        conditions = []
        for chunk in hidden.split(lengths, dim=1):
            pooled = self.pooled_proj(chunk.mean(dim=1)) if self.pooled_proj is not None else None
            conditions.append(ScaleCondition(self.proj_out(chunk), pooled))
        return conditions
