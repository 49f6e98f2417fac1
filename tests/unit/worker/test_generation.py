"""Exact match and JSON validity of generated Query DSL, and greedy generation itself."""

from __future__ import annotations

import pytest
import torch

from orchestrator.core.catalog import ARCHITECTURES
from worker.data import DSSExample
from worker.data.batching import encode_examples
from worker.generation import GenerationScore, generate_texts, score_generations
from worker.models import random_t5
from worker.tokenizer import ByteTokenizer

LABEL = '{"query": {"term": {"city": "Oslo"}}, "size": 5}'


@pytest.mark.parametrize(
    ("generated", "label", "exact", "valid"),
    [
        pytest.param(LABEL, LABEL, 1, 1, id="identical"),
        pytest.param('{"size":5,"query":{"term":{"city":"Oslo"}}}', LABEL, 1, 1,
                     id="same-json-other-order-and-spacing"),
        pytest.param('{"size": 6, "query": {"term": {"city": "Oslo"}}}', LABEL, 0, 1,
                     id="valid-json-wrong-value"),
        pytest.param('{"query": {"term": {"city": "Oslo"}}, "size": 5', LABEL, 0, 0,
                     id="truncated"),
        pytest.param("null", LABEL, 0, 1, id="json-null-is-valid-json"),
        pytest.param("", LABEL, 0, 0, id="empty"),
        pytest.param("  free text ", "free text", 1, 0, id="non-json-label-compared-as-text"),
    ],
)
def test_score(generated: str, label: str, exact: int, valid: int) -> None:
    assert score_generations([generated], [label]) == GenerationScore(1, exact, valid)


def test_rates_and_sums() -> None:
    score = score_generations([LABEL, "{", "[]"], [LABEL, LABEL, LABEL]) + GenerationScore(1, 1, 1)
    assert (score.examples, score.exact, score.json_valid) == (4, 2, 3)
    assert score.exact_match == 0.5 and score.json_valid_rate == 0.75
    assert GenerationScore().exact_match is None


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError):
        score_generations(["{}"], [])


def test_greedy_generation_keeps_order_and_bounds() -> None:
    torch.manual_seed(0)
    model = random_t5(ARCHITECTURES["ladder/t5-tiny-s"])
    tok = ByteTokenizer()
    examples = [DSSExample(f"question {'x' * i}", "{}", "because") for i in (1, 30, 5)]
    encoded = encode_examples(examples, tok, 64, 16)
    texts = generate_texts(model, tok, encoded, batch_size=2, max_new_tokens=6,
                           device=torch.device("cpu"))
    alone = [generate_texts(model, tok, [e], batch_size=1, max_new_tokens=6,
                            device=torch.device("cpu"))[0] for e in encoded]
    assert texts == alone  # batching (and padding) changes nothing, order is restored
    assert all(len(t.encode()) <= 6 * 3 for t in texts)  # at most 6 tokens, replacement chars
    assert model.training  # left as found
