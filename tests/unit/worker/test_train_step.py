"""One optimizer step in passes (training.microBatchSize): the same update as the whole batch
in one pass, because each pass's loss is weighted by its share of the batch's target tokens."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator

from orchestrator.core.catalog import ARCHITECTURES
from worker.data.batching import collate, encode_examples
from worker.data.querydsl import generate_querydsl
from worker.models import random_t5
from worker.tokenizer import ByteTokenizer
from worker.train import train_step


def _batches(sizes: list[int], examples: int = 4) -> list[dict[str, torch.Tensor]]:
    tokenizer = ByteTokenizer()
    examples_ = generate_querydsl(examples, seed=3, preamble="short")
    encoded = encode_examples(examples_, tokenizer, 96, 64)
    out, start = [], 0
    for size in sizes:
        out.append(collate(encoded[start:start + size], tokenizer.pad_token_id))
        start += size
    return out


def _step(model: torch.nn.Module, passes: list[dict[str, torch.Tensor]], a: float
          ) -> torch.Tensor:
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    return train_step(accelerator, model, optimizer, passes, a)


@pytest.mark.parametrize("a", [pytest.param(0.5, id="dss"), pytest.param(1.0, id="label-only")])
@pytest.mark.parametrize("sizes", [pytest.param([1, 1, 1, 1], id="four-passes-of-one"),
                                   pytest.param([3, 1], id="uneven-passes")])
def test_passes_update_like_one_batch(sizes: list[int], a: float) -> None:
    whole = _model().eval()  # eval: no dropout, so both runs see the same function
    split = copy.deepcopy(whole)
    before = copy.deepcopy(whole)
    one = _step(whole, _batches([4]), a)
    many = _step(split, _batches(sizes), a)
    assert torch.allclose(one, many, rtol=1e-4, atol=1e-5), (one, many)
    for (name, p), q in zip(whole.named_parameters(), split.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name
    moved = [name for (name, p), q in zip(whole.named_parameters(), before.parameters(),
                                          strict=True) if not torch.equal(p, q)]
    assert moved, "the step changed nothing: the comparison would prove nothing"


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return random_t5(ARCHITECTURES["ladder/t5-tiny-s"])
