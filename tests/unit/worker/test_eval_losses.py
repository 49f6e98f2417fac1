"""The evaluation losses, recorded apart: label, rationale and the DSS-weighted one, each the
per-example mean over the eval split, checked against a hand computation on a real model."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from orchestrator.core.catalog import ARCHITECTURES
from worker.data.batching import encode_examples
from worker.data.querydsl import generate_querydsl
from worker.models import random_t5
from worker.tokenizer import ByteTokenizer
from worker.train import dss_forward, evaluate, to_device


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, list, ByteTokenizer]:
    torch.manual_seed(0)
    tokenizer = ByteTokenizer()
    encoded = encode_examples(generate_querydsl(5, seed=3, preamble="short"), tokenizer, 96, 64)
    return random_t5(ARCHITECTURES["ladder/t5-tiny-s"]).eval(), encoded, tokenizer


def by_hand(model: torch.nn.Module, encoded: list, tokenizer: ByteTokenizer
            ) -> tuple[float, float]:
    """Each example alone (batch 1): the means of its label and rationale losses."""
    labels, rationales = [], []
    model.eval()  # evaluate() leaves the model in train mode (dropout on), as training wants
    with torch.no_grad():
        for i in range(len(encoded)):
            _, label, rationale = dss_forward(
                model, to_device(encoded, [i], tokenizer, torch.device("cpu")), 0.5)
            assert rationale is not None
            labels.append(label.item())
            rationales.append(rationale.item())
    return sum(labels) / len(labels), sum(rationales) / len(rationales)


def test_dss_run_records_all_three(setup: tuple) -> None:
    model, encoded, tokenizer = setup
    label, rationale, dss = evaluate(Accelerator(cpu=True), model, encoded, tokenizer, 1, 0.5)
    want_label, want_rationale = by_hand(model, encoded, tokenizer)
    assert label == pytest.approx(want_label, rel=1e-5)
    assert rationale == pytest.approx(want_rationale, rel=1e-5)
    assert dss == pytest.approx(0.5 * want_label + 0.5 * want_rationale, rel=1e-5)
    assert abs(label - rationale) > 1e-3, "equal losses would not tell the two apart"


def test_label_only_run_skips_the_rationale_unless_selected(setup: tuple) -> None:
    model, encoded, tokenizer = setup
    want_label, want_rationale = by_hand(model, encoded, tokenizer)
    label, rationale, dss = evaluate(Accelerator(cpu=True), model, encoded, tokenizer, 1, 1.0)
    assert rationale is None and label == pytest.approx(want_label, rel=1e-5) and dss == label
    label, rationale, dss = evaluate(Accelerator(cpu=True), model, encoded, tokenizer, 1, 1.0,
                                     with_rationale=True)
    assert rationale == pytest.approx(want_rationale, rel=1e-5)
    assert dss == label  # a = 1: the DSS loss is the label loss
