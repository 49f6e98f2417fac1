"""Tokenizers written locally for tests (no hub): shared by the decoder-only model and export
tests."""

from __future__ import annotations

from pathlib import Path


def save_chat_tokenizer(path: Path) -> Path:
    """A tiny character-level tokenizer with bos, eos, pad and a chat template, saved to
    `path` as a Hub checkpoint's tokenizer is."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<|user|>": 3, "<|assistant|>": 4}
    vocab.update({c: i + 5 for i, c in enumerate(chars)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        additional_special_tokens=["<|user|>", "<|assistant|>"])
    tok.chat_template = ("{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    tok.save_pretrained(str(path))
    return path
