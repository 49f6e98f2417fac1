"""The DSS loss: a * L_label + (1 - a) * L_rationale, and a = 1 never runs the rationale pass."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from worker.train import dss_forward, dss_loss


@pytest.mark.parametrize("a", [0.0, 0.25, 0.5, 0.9])
def test_weighted_sum(a: float) -> None:
    label, rationale = torch.tensor(2.0), torch.tensor(6.0)
    assert dss_loss(label, rationale, a).item() == pytest.approx(a * 2.0 + (1 - a) * 6.0)


def test_gradients_follow_the_weights() -> None:
    label = torch.tensor(1.0, requires_grad=True)
    rationale = torch.tensor(1.0, requires_grad=True)
    dss_loss(label, rationale, 0.3).backward()
    assert label.grad.item() == pytest.approx(0.3)
    assert rationale.grad.item() == pytest.approx(0.7)


def test_label_only_ignores_the_rationale() -> None:
    label = torch.tensor(2.0)
    assert dss_loss(label, None, 1.0) is label
    assert dss_loss(label, torch.tensor(float("nan")), 1.0) is label  # not even NaN leaks in


def test_rationale_required_below_one() -> None:
    with pytest.raises(ValueError, match="needs the rationale loss"):
        dss_loss(torch.tensor(1.0), None, 0.5)


class CountingModel:
    """Stands in for a seq2seq model: records which task inputs it saw, returns fixed losses."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(
        self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
        use_cache: bool = True,
    ) -> SimpleNamespace:
        task = "predict" if input_ids[0, 0].item() == 1 else "explain"
        self.calls.append(task)
        return SimpleNamespace(loss=torch.tensor(2.0 if task == "predict" else 6.0))


BATCH = {
    "predict_input_ids": torch.tensor([[1, 5]]), "predict_attention_mask": torch.ones(1, 2),
    "labels": torch.tensor([[7]]),
    "explain_input_ids": torch.tensor([[2, 5]]), "explain_attention_mask": torch.ones(1, 2),
    "rationale_labels": torch.tensor([[8]]),
}


def test_forward_runs_both_tasks() -> None:
    model = CountingModel()
    loss, label, rationale = dss_forward(model, BATCH, 0.5)
    assert model.calls == ["predict", "explain"]
    assert (loss.item(), label.item(), rationale.item()) == (4.0, 2.0, 6.0)


def test_forward_with_a_one_skips_the_explain_pass() -> None:
    model = CountingModel()
    loss, label, rationale = dss_forward(model, BATCH, 1.0)
    assert model.calls == ["predict"]
    assert rationale is None and loss is label
