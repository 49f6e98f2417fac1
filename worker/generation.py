"""Greedy generation on the evaluation split: exact match and JSON validity of the DSL.

The paper's only quality metric is the evaluation loss; these two say whether the model
writes usable Query DSL. Exact match compares as parsed JSON (key order and whitespace do not
matter); a label that is not JSON (datasets with `labelsMustBeJson: false`) is compared as
stripped text. Generation is expensive (up to maxOutputTokens decoding steps per batch), so it
runs after the last epoch, every `generateEvery` epochs when asked, on at most
`generateLimit` examples.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from worker.data.batching import EncodedExample, collate_prompts, length_grouped_batches
from worker.tokenizer import TextTokenizer

__all__ = ["GenerationScore", "generate_texts", "parse_json", "score_generations"]

_NOT_JSON = object()


def parse_json(text: str) -> Any:
    """The parsed value, or the `_NOT_JSON` sentinel (None is valid JSON: `null`)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # a generated `[[[[...` deeper than the reader goes
        return _NOT_JSON


@dataclass(frozen=True, slots=True)
class GenerationScore:
    """Counts, so that workers' shares add up before dividing."""

    examples: int = 0
    exact: int = 0
    json_valid: int = 0

    def __add__(self, other: GenerationScore) -> GenerationScore:
        return GenerationScore(
            self.examples + other.examples,
            self.exact + other.exact,
            self.json_valid + other.json_valid,
        )

    @property
    def exact_match(self) -> float | None:
        return self.exact / self.examples if self.examples else None

    @property
    def json_valid_rate(self) -> float | None:
        return self.json_valid / self.examples if self.examples else None


def score_generations(generations: Sequence[str], labels: Sequence[str]) -> GenerationScore:
    if len(generations) != len(labels):
        raise ValueError(f"{len(generations)} generations for {len(labels)} labels")
    exact = valid = 0
    for generated, label in zip(generations, labels, strict=True):
        parsed = parse_json(generated)
        valid += parsed is not _NOT_JSON
        expected = parse_json(label)
        if expected is _NOT_JSON:
            exact += generated.strip() == label.strip()
        else:
            exact += parsed is not _NOT_JSON and parsed == expected
    return GenerationScore(len(labels), exact, valid)


@torch.no_grad()
def generate_texts(
    model: nn.Module,
    tokenizer: TextTokenizer,
    encoded: Sequence[EncodedExample],
    *,
    batch_size: int,
    max_new_tokens: int,
    device: torch.device,
) -> list[str]:
    """Greedy decoding of each example's `predict:` input, in the order of `encoded`.

    A decoder-only model continues its left-padded prompt; only the new tokens are decoded."""
    was_training = model.training
    model.eval()
    texts: list[str] = [""] * len(encoded)
    # Length-grouped so that short inputs are not padded to long ones; order restored below.
    batches = length_grouped_batches(encoded, batch_size, seed=0, epoch=0)
    try:
        for indices in batches:
            rows = [encoded[i] for i in indices]
            input_ids, attention_mask = collate_prompts(rows, tokenizer.pad_token_id)
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            if rows[0].causal:
                output = output[:, input_ids.shape[1]:]  # the prompt comes back first
            for i, ids in zip(indices, output.tolist(), strict=True):
                texts[i] = tokenizer.decode(ids)  # skips the start token (pad), stops at eos
    finally:
        model.train(was_training)
    return texts
