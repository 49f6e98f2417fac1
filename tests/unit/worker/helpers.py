"""Helpers shared by the worker's unit tests: a locally written chat tokenizer (no hub) and a
trial's model saved as train.py saves it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from orchestrator.core.worker_contract import AttemptSpec
    from worker.tokenizer import TextTokenizer


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


def save_moved_model(trial: AttemptSpec, directory: Path, scale: float
                     ) -> tuple[torch.nn.Module, TextTokenizer]:
    """The trial's model with every trainable weight moved by noise of `scale` (LoRA's B
    starts at zero), saved as train.py saves it (manifest included); returned in eval mode."""
    import torch

    from worker.models import build_model, save_trained

    torch.manual_seed(trial.seed)
    model, tokenizer, _ = build_model(trial, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * scale)
    save_trained(model, tokenizer, directory, {
        "sweep": trial.sweep, "trial": trial.trial_id,
        "spec": trial.model_dump(mode="json", by_alias=True),
        "method": trial.method.value, "epoch": 2, "eval_loss": 1.25, "device": "cpu",
    })
    model.eval()
    return model, tokenizer
