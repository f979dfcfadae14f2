"""The word-level tokenizer of small closed-vocabulary MLLMs."""

from transformers import PreTrainedTokenizerFast

from hieraquery_core.word_tokenizer import build_word_tokenizer


def test_word_tokenizer_round_trips_text_with_punctuation(tmp_path):
    tokenizer = build_word_tokenizer("a red circle and blue square , outline style".split())
    text = "a red circle and a blue square, outline style"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    tokenizer.save_pretrained(tmp_path)
    reloaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert reloaded.decode(reloaded(text)["input_ids"]) == text and reloaded.padding_side == "left"
