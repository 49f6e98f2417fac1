"""training.selectionLoss: which evaluation loss picks the best epoch (and drives the plateau)."""

from __future__ import annotations

import pytest

from orchestrator.core.spec import SelectionLoss, Training
from orchestrator.core.worker_contract import EpochRecord, best_record, selected_loss

# (label, rationale) per epoch at a = 0.5: the label loss is lowest at epoch 2, the rationale
# loss keeps falling (lowest at 3), and their weighted sum is lowest at epoch 3 as well.
LOSSES = {1: (1.00, 2.00), 2: (0.40, 1.80), 3: (0.50, 0.90)}
A = 0.5


def epochs(selection: SelectionLoss) -> list[EpochRecord]:
    records = []
    for epoch, (label, rationale) in LOSSES.items():
        dss = A * label + (1 - A) * rationale
        records.append(EpochRecord(
            epoch=epoch, train_loss=1.0, train_label_loss=1.0, learning_rate=5e-5,
            samples_per_second=1.0, wall_seconds=1.0,
            eval_loss=selected_loss(selection, label=label, rationale=rationale, dss=dss),
            eval_label_loss=label, eval_rationale_loss=rationale, eval_dss_loss=dss,
        ))
    return records


@pytest.mark.parametrize(("selection", "best"), [
    (SelectionLoss.LABEL, 2), (SelectionLoss.RATIONALE, 3), (SelectionLoss.DSS, 3),
])
def test_the_selected_loss_picks_the_best_epoch(selection: SelectionLoss, best: int) -> None:
    record = best_record(epochs(selection))
    assert record is not None and record.epoch == best
    # The best epoch's figures travel with it, whichever loss chose it.
    assert (record.eval_label_loss, record.eval_rationale_loss) == LOSSES[best]


def test_label_and_dss_disagree_on_the_same_run() -> None:
    label, dss = best_record(epochs(SelectionLoss.LABEL)), best_record(epochs(SelectionLoss.DSS))
    assert label is not None and dss is not None and label.epoch != dss.epoch


def test_default_is_the_authors_label_loss() -> None:
    assert Training().selection_loss is SelectionLoss.LABEL
    assert Training.model_validate({"selectionLoss": "dss"}).selection_loss is SelectionLoss.DSS


def test_selected_loss_values() -> None:
    assert selected_loss(SelectionLoss.LABEL, label=1.0, rationale=None, dss=1.0) == 1.0
    assert selected_loss(SelectionLoss.DSS, label=1.0, rationale=3.0, dss=2.0) == 2.0
    assert selected_loss(SelectionLoss.RATIONALE, label=1.0, rationale=3.0, dss=2.0) == 3.0
    with pytest.raises(ValueError, match="rationale"):
        selected_loss(SelectionLoss.RATIONALE, label=1.0, rationale=None, dss=1.0)


def test_non_finite_epochs_are_never_best() -> None:
    records = epochs(SelectionLoss.LABEL)
    records[1] = records[1].model_copy(update={"eval_loss": float("nan")})
    best = best_record(records)
    assert best is not None and best.epoch == 3
