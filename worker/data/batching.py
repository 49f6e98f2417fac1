"""Encoding, batching and sharding of DSS examples for the training loop.

DSS trains every example twice per step: `predict: ` + input -> label and `explain: ` + input ->
rationale, so each example is encoded into two inputs and two targets.

Two layouts. Encoder-decoder (T5): the input goes to the encoder, the target to the decoder,
padded on the right. Decoder-only (`causal=True`): the prompt (task prefix and input, in a
`PromptFrame`: the tokenizer's chat template when asked for, else a newline after the input)
and the completion (target + eos) form one sequence; the loss covers only the completion (the
prompt's labels are IGNORE_INDEX); padded on the right for training, on the left for
generation (`collate_prompts`), so every prompt ends where decoding starts. Batches group examples
of similar length (padding is wasted compute and memory), the probe batch is the worst case any
batch can reach (so an OOM shows in the first seconds), and DDP ranks always get the same
number of batches (a rank with one step fewer leaves the others waiting in all-reduce forever).

This is the one data module that imports torch; the rest stays importable on the controller.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import torch

from worker.data.dss import DSSExample
from worker.data.examples import TASK_PREFIXES
from worker.tokenizer import Keep, TextTokenizer

__all__ = [
    "IGNORE_INDEX",
    "EncodedExample",
    "PromptFrame",
    "collate",
    "collate_prompts",
    "encode_examples",
    "length_grouped_batches",
    "longest_batch",
    "padded_size",
    "shard",
]

#: Label value that torch's cross-entropy (and transformers' seq2seq models) ignore.
IGNORE_INDEX: Final = -100
#: Examples are sorted by length within windows of this many batches: large enough that
#: neighbours have similar lengths, small enough that batch composition still varies per epoch.
_MEGABATCH_FACTOR: Final = 50

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EncodedExample:
    """Token ids of one DSS example, each sequence ending with eos (decoder-only: the two
    prompts do not; their completions do)."""

    predict_ids: list[int]
    explain_ids: list[int]
    label_ids: list[int]
    rationale_ids: list[int]
    causal: bool = False

    @property
    def lengths(self) -> tuple[int, int, int, int]:
        """(predict, explain, label, rationale) lengths: the four padded dimensions; for a
        decoder-only example (prompt + label, prompt + rationale, 0, 0): its two sequences."""
        if self.causal:
            return (
                len(self.predict_ids) + len(self.label_ids),
                len(self.explain_ids) + len(self.rationale_ids), 0, 0,
            )
        return (
            len(self.predict_ids),
            len(self.explain_ids),
            len(self.label_ids),
            len(self.rationale_ids),
        )


@dataclass(frozen=True, slots=True)
class PromptFrame:
    """What a decoder-only prompt wraps around the task prefix and input: a head (bos, or
    the chat template's text before the user's message) and a tail (a newline, or the
    template's end of the user turn and start of the assistant's)."""

    head: list[int]
    tail: list[int]

    @classmethod
    def plain(cls, tok: TextTokenizer) -> PromptFrame:
        bos = getattr(tok, "bos_token_id", None)
        return cls([bos] if bos is not None else [], tok.encode("\n", 8)[:-1])

    @classmethod
    def of(cls, tok: TextTokenizer, chat_template: bool) -> PromptFrame:
        """training.chatTemplate's frame: the tokenizer's chat template when asked for and it
        has one, else the plain frame. Training and `ladder predict` both frame prompts here."""
        chat = getattr(tok, "chat_frame", None)
        frame = chat() if chat_template and chat is not None else None
        return cls(*frame) if frame is not None else cls.plain(tok)


def encode_examples(
    examples: Sequence[DSSExample],
    tok: TextTokenizer,
    max_input_tokens: int,
    max_output_tokens: int,
    task_prefixes: tuple[str, str] = TASK_PREFIXES,
    keep_input: Keep = "tail",
    *,
    causal: bool = False,
    frame: PromptFrame | None = None,
) -> list[EncodedExample]:
    """Encode each example's two task inputs (tail-truncated) and two targets (head-truncated).

    `keep_input="head"` keeps the start of an over-long input instead (training.inputTruncation
    keep-start, the authors' tokenizer default); the prefix is kept either way.

    The task prefix is encoded apart from the input and always kept: truncating the joined
    text from the tail would cut the prefix first, and the two tasks would become
    indistinguishable exactly on the long inputs. Inputs keep their tail because the question
    comes last; targets keep their head because a JSON label is read from the start.

    `causal`: decoder-only prompts, framed by `frame` (default `PromptFrame.plain`) and at
    most `max_input_tokens` long, frame included; no eos after the prompt.
    """
    if causal:
        return _encode_causal(examples, tok, max_input_tokens, max_output_tokens,
                              task_prefixes, keep_input, frame or PromptFrame.plain(tok))
    if max_output_tokens < 1:
        raise ValueError(f"max_output_tokens must be at least 1, got {max_output_tokens}")
    prefixes = [_prefix_ids(tok, p) for p in task_prefixes]
    longest_prefix = max(len(p) for p in prefixes)
    if max_input_tokens < longest_prefix + 2:
        raise ValueError(
            f"max_input_tokens={max_input_tokens} leaves no room for input after the task "
            f"prefix ({longest_prefix} tokens) and eos"
        )
    predict_prefix, explain_prefix = prefixes
    encoded: list[EncodedExample] = []
    for ex in examples:
        encoded.append(
            EncodedExample(
                predict_ids=predict_prefix
                + tok.encode(ex.input, max_input_tokens - len(predict_prefix), keep=keep_input),
                explain_ids=explain_prefix
                + tok.encode(ex.input, max_input_tokens - len(explain_prefix), keep=keep_input),
                label_ids=tok.encode(ex.label, max_output_tokens, keep="head"),
                rationale_ids=tok.encode(ex.rationale, max_output_tokens, keep="head"),
            )
        )
    return encoded


def _encode_causal(
    examples: Sequence[DSSExample], tok: TextTokenizer, max_input_tokens: int,
    max_output_tokens: int, task_prefixes: tuple[str, str], keep_input: Keep,
    frame: PromptFrame,
) -> list[EncodedExample]:
    if max_output_tokens < 2:
        raise ValueError(f"max_output_tokens must be at least 2, got {max_output_tokens}")
    prompts = [frame.head + _prefix_ids(tok, p) for p in task_prefixes]
    fixed = max(len(p) for p in prompts) + len(frame.tail)
    if max_input_tokens < fixed + 1:
        raise ValueError(
            f"max_input_tokens={max_input_tokens} leaves no room for input after the task "
            f"prefix and prompt frame ({fixed} tokens)"
        )

    def prompt(start: list[int], text: str) -> list[int]:
        # encode() appends eos, so one more than the room, then the eos is dropped
        room = max_input_tokens - len(start) - len(frame.tail) + 1
        return start + tok.encode(text, room, keep=keep_input)[:-1] + frame.tail

    predict_start, explain_start = prompts
    return [
        EncodedExample(
            predict_ids=prompt(predict_start, ex.input),
            explain_ids=prompt(explain_start, ex.input),
            label_ids=tok.encode(ex.label, max_output_tokens, keep="head"),
            rationale_ids=tok.encode(ex.rationale, max_output_tokens, keep="head"),
            causal=True,
        )
        for ex in examples
    ]


def _prefix_ids(tok: TextTokenizer, prefix: str) -> list[int]:
    ids = tok.encode(prefix, len(prefix) * 4 + 8)  # Generous: no tokenizer emits more per char.
    return ids[:-1]  # Drop the eos that encode appends.


def _pad(rows: Sequence[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _mask(rows: Sequence[list[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)


def collate(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest sequences (right padding) into long tensors.

    Targets are padded with IGNORE_INDEX by position rather than by replacing pad ids, so a
    tokenizer whose pad id equals its eos id still trains on the real eos.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    if batch[0].causal:
        return _collate_causal(batch, pad_id)
    return {
        "predict_input_ids": _pad([e.predict_ids for e in batch], pad_id),
        "predict_attention_mask": _mask([e.predict_ids for e in batch]),
        "labels": _pad([e.label_ids for e in batch], IGNORE_INDEX),
        "explain_input_ids": _pad([e.explain_ids for e in batch], pad_id),
        "explain_attention_mask": _mask([e.explain_ids for e in batch]),
        "rationale_labels": _pad([e.rationale_ids for e in batch], IGNORE_INDEX),
    }


def _collate_causal(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Prompt + completion as one right-padded sequence; labels mask the prompt and padding
    (transformers' causal LM loss shifts them by one itself)."""
    out: dict[str, torch.Tensor] = {}
    for task, target, label_key in (("predict", "label_ids", "labels"),
                                    ("explain", "rationale_ids", "rationale_labels")):
        prompts = [getattr(e, f"{task}_ids") for e in batch]
        targets = [getattr(e, target) for e in batch]
        rows = [p + t for p, t in zip(prompts, targets, strict=True)]
        labels = [[IGNORE_INDEX] * len(p) + t for p, t in zip(prompts, targets, strict=True)]
        out[f"{task}_input_ids"] = _pad(rows, pad_id)
        out[f"{task}_attention_mask"] = _mask(rows)
        out[label_key] = _pad(labels, IGNORE_INDEX)
    return out


def collate_prompts(
    batch: Sequence[EncodedExample], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of the `predict:` inputs for generation: right-padded for
    an encoder-decoder, left-padded prompts for a decoder-only model (decoding continues
    every row from its last real token)."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    rows = [e.predict_ids for e in batch]
    if not batch[0].causal:
        return _pad(rows, pad_id), _mask(rows)
    width = max(len(r) for r in rows)
    ids = [[pad_id] * (width - len(r)) + r for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def padded_size(encoded: Sequence[EncodedExample], indices: Sequence[int]) -> int:
    """Tokens in the collated batch, padding included: what its memory use scales with."""
    if not indices:
        return 0
    widths = [max(encoded[i].lengths[d] for i in indices) for d in range(4)]
    return len(indices) * sum(widths)


def length_grouped_batches(
    encoded: Sequence[EncodedExample], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """Batches of indices with similar lengths, in a shuffled order; each index exactly once.

    Shuffle everything, sort by length within windows of _MEGABATCH_FACTOR batches, cut into
    batches, then shuffle the batch order. The result depends only on (seed, epoch): the
    generator is seeded with a string, which random hashes with SHA-512, not hash().
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rng = random.Random(f"length-grouped:{seed}:{epoch}")
    order = list(range(len(encoded)))
    rng.shuffle(order)
    window = batch_size * _MEGABATCH_FACTOR
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: sum(encoded[i].lengths))
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def longest_batch(encoded: Sequence[EncodedExample], batch_size: int) -> list[int]:
    """Indices of the batch with the largest padded size any `batch_size` examples can reach.

    This is the probe batch: no batch of at most `batch_size` examples pads to more, so if one
    step on it fits in memory, the run will not OOM later on a longer batch. Padded size is
    batch_size x (sum of the four widths), so it is maximal when the batch holds, for each of
    the four dimensions, an example that is longest in it. With fewer slots than dimensions
    the best batch is found exactly among the examples that maximise each subset of
    dimensions (15 candidates at most). Ties go to the lowest index; the result is sorted.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    n = len(encoded)
    if n <= batch_size:
        return list(range(n))
    # For each non-empty subset of dimensions, the example with the largest summed length
    # over it. Any optimal batch can swap each member for the candidate of the dimensions that
    # member is longest in without getting smaller, so an optimum exists among candidates.
    candidates: list[int] = []
    for r in range(1, 5):
        for dims in itertools.combinations(range(4), r):
            best = max(range(n), key=lambda i: (sum(encoded[i].lengths[d] for d in dims), -i))
            if best not in candidates:
                candidates.append(best)
    if len(candidates) <= batch_size:
        chosen = set(candidates)
    else:
        chosen = set(
            max(
                itertools.combinations(sorted(candidates), batch_size),
                key=lambda combo: (padded_size(encoded, combo), [-i for i in combo]),
            )
        )
    # Fill the remaining slots: they do not change the widths, but a full batch has the full
    # memory footprint. Prefer long examples so activations other than padding are maximal too.
    rest = sorted(
        (i for i in range(n) if i not in chosen), key=lambda i: (-sum(encoded[i].lengths), i)
    )
    chosen.update(rest[: batch_size - len(chosen)])
    return sorted(chosen)


def shard(items: Sequence[T], rank: int, world_size: int, *, drop_last: bool = False) -> list[T]:
    """This rank's share of `items` (batches, or indices), the same count on every rank.

    Rank r takes items r, r + world_size, ... . When the count does not divide evenly, the
    list is padded by repeating items from its start (drop_last=False: every item is seen,
    a few twice) or cut to a multiple of world_size (drop_last=True: a few items are not
    seen). Unequal step counts would leave DDP ranks waiting on each other's all-reduce.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    items = list(items)
    if drop_last:
        items = items[: len(items) - len(items) % world_size]
    elif items and len(items) % world_size:
        missing = world_size - len(items) % world_size
        items += list(itertools.islice(itertools.cycle(items), missing))
    return items[rank::world_size]
