"""A word-level tokenizer for small, closed-vocabulary MLLMs (tests, ShapesWorld).

Real Qwen2.5-VL checkpoints carry their own tokenizer; a world as small as ShapesWorld only needs its
vocabulary. The tokenizer is a ``tokenizers`` WordLevel model wrapped as a transformers
``PreTrainedTokenizerFast``, with the Qwen2.5-VL special tokens, so the real ``Qwen2_5_VLProcessor``
works unchanged on top of it and ``save_pretrained`` / ``from_pretrained`` round-trip it.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, UNK = "<|endoftext|>", "<unk>"
VISION_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
SPECIAL_TOKENS = [PAD, UNK, *VISION_TOKENS]


def build_word_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A left-padding tokenizer over ``words`` (split on whitespace and punctuation) plus special tokens."""
    vocab: dict[str, int] = {}
    for token in [*SPECIAL_TOKENS, *words]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=PAD,
        unk_token=UNK,
        additional_special_tokens=VISION_TOKENS,
        padding_side="left",
        clean_up_tokenization_spaces=True,  # decode "circle , outline" as "circle, outline"
    )
    return tokenizer
