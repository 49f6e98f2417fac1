"""The knobs that set the authors' recipe: each changes what it should.

- training.maxGradNorm: the step's gradient norm is bounded (the HF Trainer's default 1.0);
- training.inputTruncation: each side keeps the right tokens of an over-long input.
"""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator

from orchestrator.core.catalog import ARCHITECTURES
from orchestrator.core.spec import InputTruncation, Training
from worker.data.batching import collate, encode_examples
from worker.data.dss import DSSExample
from worker.data.querydsl import generate_querydsl
from worker.models import random_t5
from worker.tokenizer import ByteTokenizer
from worker.train import input_keep, train_step


def _update_norm(max_grad_norm: float | None) -> float:
    """The L2 norm of one SGD step at learning rate 1 (= the norm of the gradient applied)."""
    torch.manual_seed(0)
    model = random_t5(ARCHITECTURES["ladder/t5-tiny-s"]).eval()  # eval: no dropout
    before = copy.deepcopy(model)
    tokenizer = ByteTokenizer()
    encoded = encode_examples(generate_querydsl(2, seed=3, preamble="short"), tokenizer, 96, 64)
    batch = collate(encoded, tokenizer.pad_token_id)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    train_step(Accelerator(cpu=True), model, optimizer, [batch], 0.5,
               max_grad_norm=max_grad_norm)
    deltas = [(p - q).detach().flatten() for p, q in zip(model.parameters(), before.parameters(),
                                                strict=True)]
    return float(torch.cat(deltas).norm())


def test_clipping_bounds_the_gradient_norm() -> None:
    free = _update_norm(None)
    assert free > 0.5, f"the unclipped gradient norm {free} is too small to show clipping"
    clipped = _update_norm(0.25)
    assert clipped == pytest.approx(0.25, rel=1e-3)
    assert _update_norm(free * 4) == pytest.approx(free, rel=1e-4)  # a loose bound changes nothing


def test_clipping_is_off_by_default() -> None:
    assert Training().max_grad_norm is None
    assert Training.model_validate({"maxGradNorm": 1.0}).max_grad_norm == 1.0


@pytest.mark.parametrize("side", list(InputTruncation), ids=lambda side: side.value)
def test_each_truncation_side_keeps_the_right_tokens(side: InputTruncation) -> None:
    tokenizer = ByteTokenizer()
    text = "START" + "0123456789" * 9 + "END"  # 98 bytes, 20 of them kept
    example = DSSExample(input=text, label="{}", rationale="r")
    kept = text[-20:] if side is InputTruncation.KEEP_END else text[:20]
    (encoded,) = encode_examples([example], tokenizer, 9 + 20 + 1, 64,
                                 keep_input=input_keep(side))
    prefix = tokenizer.encode("predict: ", 64)[:-1]
    assert len(prefix) == 9
    assert encoded.predict_ids == prefix + tokenizer.encode(kept, 64)
    assert tokenizer.decode(encoded.predict_ids) == "predict: " + kept
    assert ("END" in kept) is (side is InputTruncation.KEEP_END)
    assert ("START" in kept) is (side is InputTruncation.KEEP_START)


def test_ladder_keeps_the_end_by_default() -> None:
    assert Training().input_truncation is InputTruncation.KEEP_END
