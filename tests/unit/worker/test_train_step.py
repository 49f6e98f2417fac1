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


def test_probe_step_gives_the_budget_its_verdict_before_the_backward() -> None:
    """The probe's forward pass is checked before its backward: a forward that already holds
    more than the CPU budget fails the trial without the backward (as long again), and a
    forward within it goes on to the whole step."""
    from worker.memory import HostMemoryBudget, MemoryBudgetExceeded
    from worker.train import probe_step

    model = _model()
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    budget = HostMemoryBudget(1, warm_up=False)  # one byte: any forward's activations exceed it
    budget.observe(budget.baseline_bytes + 2**20)
    stages: list[str] = []

    def check(stage: str) -> int:
        stages.append(stage)
        return budget.check(stage)

    with pytest.raises(MemoryBudgetExceeded, match="the probe step's forward pass"):
        probe_step(accelerator, model, optimizer, _batches([4])[0], 0.5, after_forward=check)
    assert stages == ["the probe step's forward pass on the longest batch"]
    assert all(p.grad is None for p in model.parameters())  # no backward ran

    within = HostMemoryBudget(2**40, warm_up=False)
    stages.clear()
    probe_step(accelerator, model, optimizer, _batches([4])[0], 0.5,
               after_forward=lambda stage: stages.append(stage) or within.check(stage))
    assert len(stages) == 1 and not optimizer.state  # the whole step ran, and left no state
