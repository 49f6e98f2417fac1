"""What a DSS dataset holds before a sweep trains on it (`ladder dataset stats`).

Counts; token lengths of the two task inputs and the two targets against the spec's limits
(`training.maxInputTokens`, `maxOutputTokens`: how many examples would be cut); repeated inputs
(dropped before the split), repeated inputs with different labels (the teacher contradicting
itself), and labels that are not JSON or not Query DSL. No torch: the tokenizer is any
function from text to a token count, the byte tokenizer by default.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from worker.data.dsl_validation import validate_query_dsl
from worker.data.examples import TASK_PREFIXES, DSSExample

__all__ = ["DatasetStats", "Lengths", "dataset_stats", "token_counter"]


@dataclass(frozen=True, slots=True)
class Lengths:
    """A length distribution in tokens, and how many exceed `limit` (would be truncated)."""

    limit: int
    min: int
    p50: int
    p90: int
    p99: int
    max: int
    mean: float
    over: int

    @classmethod
    def of(cls, values: Sequence[int], limit: int) -> Lengths:
        ordered = sorted(values)
        n = len(ordered)

        def q(p: float) -> int:  # nearest rank
            return ordered[min(n - 1, max(0, int(p * n + 0.999999) - 1))]

        return cls(limit, ordered[0], q(0.5), q(0.9), q(0.99), ordered[-1],
                   round(sum(ordered) / n, 1), sum(v > limit for v in ordered))


@dataclass(slots=True)
class DatasetStats:
    examples: int
    distinct_inputs: int
    repeated_inputs: int  # records whose input appeared before (dropped before the split)
    conflicting_inputs: int  # distinct inputs that appear with more than one label
    identical_records: int  # records identical to an earlier one in all three columns
    lengths: dict[str, Lengths]
    labels_not_json: list[int] = field(default_factory=list)  # 1-based record numbers
    labels_not_dsl: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples, "distinct_inputs": self.distinct_inputs,
            "repeated_inputs": self.repeated_inputs,
            "conflicting_inputs": self.conflicting_inputs,
            "identical_records": self.identical_records,
            "lengths": {k: asdict(v) for k, v in self.lengths.items()},
            "labels_not_json": self.labels_not_json, "labels_not_dsl": self.labels_not_dsl,
        }


def dataset_stats(
    examples: Sequence[DSSExample],
    count_tokens: Callable[[str], int],
    *,
    max_input_tokens: int,
    max_output_tokens: int,
    querydsl: bool = True,
) -> DatasetStats:
    """Statistics of `examples`; `count_tokens(text)` counts tokens with eos, as training
    encodes them. Each task input is its prefix plus the input, as the trainer encodes it."""
    if not examples:
        raise ValueError("no examples")
    prefix_tokens = [count_tokens(p) - 1 for p in TASK_PREFIXES]  # without their eos
    input_tokens = [count_tokens(ex.input) for ex in examples]
    lengths = {
        "input (predict)": Lengths.of([t + prefix_tokens[0] for t in input_tokens],
                                      max_input_tokens),
        "input (explain)": Lengths.of([t + prefix_tokens[1] for t in input_tokens],
                                      max_input_tokens),
        "label": Lengths.of([count_tokens(ex.label) for ex in examples], max_output_tokens),
        "rationale": Lengths.of([count_tokens(ex.rationale) for ex in examples],
                                max_output_tokens),
    }
    labels: dict[str, set[str]] = defaultdict(set)
    records: set[tuple[str, str, str]] = set()
    identical = 0
    not_json: list[int] = []
    not_dsl: list[int] = []
    for number, ex in enumerate(examples, start=1):
        key = (ex.input, ex.label, ex.rationale)
        identical += key in records
        records.add(key)
        try:
            value = json.loads(ex.label)
        except (ValueError, RecursionError):
            not_json.append(number)
            labels[ex.input].add(ex.label)
            continue
        labels[ex.input].add(json.dumps(value, sort_keys=True))
        if querydsl and validate_query_dsl(value):
            not_dsl.append(number)
    return DatasetStats(
        examples=len(examples), distinct_inputs=len(labels),
        repeated_inputs=len(examples) - len(labels),
        conflicting_inputs=sum(len(v) > 1 for v in labels.values()),
        identical_records=identical, lengths=lengths, labels_not_json=not_json,
        labels_not_dsl=not_dsl,
    )


def token_counter(tokenizer: str) -> Callable[[str], int]:
    """Tokens of a text plus its eos, as training encodes it: `byte` (Ladder's byte tokenizer,
    `worker.tokenizer.ByteTokenizer`: one token per UTF-8 byte; a test ties the two) or a
    `tokenizer.json` (or a directory holding one, such as a downloaded FLAN-T5), read with
    the `tokenizers` package and no torch. Raises ValueError naming the tokenizer."""
    if tokenizer == "byte":
        return lambda text: len(text.encode("utf-8", errors="replace")) + 1
    path = Path(tokenizer)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"tokenizer {tokenizer}: not 'byte', a tokenizer.json or a "
                         "directory holding one")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ValueError(f"tokenizer {tokenizer}: needs the tokenizers package "
                         "(pip install tokenizers)") from None
    try:
        loaded = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust library raises its own Exception type
        raise ValueError(f"tokenizer {path}: cannot load ({exc})") from None
    return lambda text: len(loaded.encode(text, add_special_tokens=False).ids) + 1
