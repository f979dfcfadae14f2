"""The frozen multimodal LLM f_theta of Eq. 4: H = f_theta(Z_input).

A thin adapter over a transformers model. The prompt (and, for editing and understanding, one or more
images) is tokenised by the model's own processor; the multi-scale query sequence Z_input (Eq. 3) is
appended through ``inputs_embeds``; the last hidden states (after the final norm) at the query
positions are returned. Prompts are left-padded, so the query block sits at the same positions for
every sample of a batch and attends (causally) to the whole prompt.

Backbones:
- ``qwen2_5_vl``: transformers' ``Qwen2_5_VLForConditionalGeneration`` with its ``Qwen2_5_VLProcessor``
  (images are placed with the model's own vision tokens; 3-D rotary positions are computed by the
  model from ``mm_token_type_ids``). Its vision encoder provides the alignment targets (section 3.2)
  and ``describe`` answers questions about images, so understanding stays usable.
- ``causal_lm``: any ``AutoModelForCausalLM`` with its tokenizer, text-to-image only.

The weights are frozen (``requires_grad_(False)``, eval mode) but the forward pass is differentiable,
so gradients reach the queries through it, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import HieraQueryError, require

ImageList = Sequence[Sequence[torch.Tensor]]
"""Per prompt, a list of images, each a float tensor [3, H, W] in [0, 1]."""


class FrozenMLLM(nn.Module):
    """Frozen MLLM adapter: prompt (+ images) + Z_input -> hidden states at the query positions."""

    def __init__(self, model: nn.Module, processor, kind: str) -> None:
        super().__init__()
        require(kind in ("qwen2_5_vl", "causal_lm"), f"unknown MLLM kind {kind!r}")
        self.kind = kind
        self.model = model.requires_grad_(False).eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer if hasattr(processor, "tokenizer") else processor
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def train(self, mode: bool = True) -> "FrozenMLLM":
        """The MLLM stays in eval mode (no dropout) even while the rest of the model trains."""
        super().train(mode)
        self.model.eval()
        return self

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def supports_images(self) -> bool:
        return self.kind == "qwen2_5_vl"

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def _prompt_text(self, prompt: str, num_images: int) -> str:
        """The prompt as the model expects it: its chat template when it has one, else plain text."""
        if getattr(self.tokenizer, "chat_template", None):
            content = [{"type": "image"}] * num_images + [{"type": "text", "text": prompt}]
            messages = [{"role": "user", "content": content}]
            target = self.processor if num_images else self.tokenizer
            return target.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        vision = "<|vision_start|><|image_pad|><|vision_end|>" * num_images
        return f"{vision} {prompt}".strip() if vision else prompt

    def tokenize(self, prompts: Sequence[str], images: ImageList | None = None) -> dict[str, torch.Tensor]:
        """Processor outputs for a batch of prompts, each with its own list of images."""
        images = images if images is not None else [[] for _ in prompts]
        require(len(images) == len(prompts), f"got {len(prompts)} prompts but {len(images)} image lists; give one list of images per prompt")
        flat = [img for per_prompt in images for img in per_prompt]
        if flat and not self.supports_images:
            raise HieraQueryError(f"this MLLM ({self.kind}) is text-only and cannot read images; load a Qwen2.5-VL-based checkpoint for editing and understanding")
        texts = [self._prompt_text(p, len(imgs)) for p, imgs in zip(prompts, images)]
        if self.kind == "causal_lm":
            return dict(self.tokenizer(texts, return_tensors="pt", padding=True))
        kwargs = {"images": [img.float().clamp(0, 1) for img in flat], "do_rescale": False} if flat else {}
        return dict(self.processor(text=texts, return_tensors="pt", padding=True, **kwargs))

    def forward(self, z_input: torch.Tensor, prompts: Sequence[str], images: ImageList | None = None, prompt_tokens: int = 0) -> torch.Tensor:
        """Eq. 4: the last hidden states over Z_input, [B, len(Z_input), d].

        With ``prompt_tokens`` (project extension, ``HieraQueryConfig.prompt_tokens``) the states of the prompt's last
        ``prompt_tokens`` positions come first, [B, prompt_tokens + len(Z_input), d]: a shorter prompt's are
        right-aligned after zeros (so a prompt's states never depend on the batch it is encoded in), a longer one
        keeps its end (for a chat template: its closing tokens and the end of the user's text)."""
        inputs = {k: v.to(self.device) for k, v in self.tokenize(prompts, images).items()}
        ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
        batch, length = ids.shape[0], z_input.shape[0]
        embed = self.model.get_input_embeddings()
        prompt_embeds = embed(ids)
        embeds = torch.cat([prompt_embeds, z_input.to(prompt_embeds.dtype).unsqueeze(0).expand(batch, -1, -1)], dim=1)
        placeholder = torch.full((batch, length), self.tokenizer.pad_token_id, dtype=ids.dtype, device=ids.device)
        full_ids = torch.cat([ids, placeholder], dim=1)
        full_mask = torch.cat([mask, torch.ones_like(placeholder)], dim=1)
        if self.kind == "causal_lm":
            positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
            out = self.model.get_decoder()(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions)
        else:
            if "mm_token_type_ids" in inputs:
                inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(placeholder)], dim=1)
            if "pixel_values" not in inputs:
                inputs.pop("mm_token_type_ids", None)
                inputs["position_ids"] = (full_mask.cumsum(-1) - 1).clamp(min=0)
            out = self.model.model(input_ids=full_ids, inputs_embeds=embeds, attention_mask=full_mask, use_cache=False, **inputs)
        hidden = out.last_hidden_state
        if not prompt_tokens:
            return hidden[:, -length:]
        prompt = (hidden[:, :-length] * mask[..., None].to(hidden.dtype))[:, -prompt_tokens:]  # left padding: the prompt ends here
        prompt = torch.nn.functional.pad(prompt, (0, 0, prompt_tokens - prompt.shape[1], 0))
        return torch.cat([prompt, hidden[:, -length:]], dim=1)

    def vision_features(self, images: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """The vision encoder's (merged) patch features of a batch [B, 3, H, W] in [0, 1]: [B, h, w, D].

        These are the alignment targets of section 3.2; their grid (h, w) is the encoder's token grid,
        interpolated to each DiT scale by :mod:`hieraquery_core.alignment`. Computed without gradients unless
        ``grad`` (the one-off pretraining of a ShapesWorld MLLM's vision tower, ``train.shapesworld_mllm``).
        """
        if not self.supports_images:
            raise HieraQueryError("representation alignment needs the MLLM's vision encoder, and this MLLM is text-only; set alignment.weight to 0 or use a Qwen2.5-VL backbone")
        proc = self.processor.image_processor(images=list(images.detach().float().clamp(0, 1)), do_rescale=False, return_tensors="pt")
        grid = proc["image_grid_thw"].to(self.device)
        pixels = proc["pixel_values"].to(self.device)
        with torch.set_grad_enabled(grad):
            feats = self.model.model.get_image_features(pixels, grid).pooler_output
        merge = self.model.config.vision_config.spatial_merge_size
        t, h, w = (int(v) for v in grid[0])
        return torch.stack(feats).reshape(len(feats), h // merge, w // merge, -1)

    @torch.no_grad()
    def describe(self, images: torch.Tensor | None, questions: Sequence[str], max_new_tokens: int = 32) -> list[str]:
        """The MLLM's own answer to a question about each image (its understanding, untouched).

        ``images=None`` asks the questions with no image (a question about a text, e.g. a prompt).
        """
        image_lists = None
        if images is not None:
            if not self.supports_images:
                raise HieraQueryError("this MLLM is text-only and cannot describe images; load a Qwen2.5-VL-based checkpoint")
            require(len(images) == len(questions), f"got {len(images)} images but {len(questions)} questions; give one question per image")
            image_lists = [[img] for img in images]
        inputs = {k: v.to(self.device) for k, v in self.tokenize(questions, image_lists).items()}
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
