"""`training.saveModel`: which epochs' weights a trial writes."""

from __future__ import annotations

import pytest

from orchestrator.core.spec import SaveModel, Training


@pytest.mark.parametrize(
    ("policy", "epoch", "epochs", "best_epoch", "saves"),
    [
        pytest.param(SaveModel.NONE, 3, 3, 3, False, id="none-never"),
        pytest.param(SaveModel.FINAL, 2, 3, 2, False, id="final-not-before-the-last"),
        pytest.param(SaveModel.FINAL, 3, 3, 1, True, id="final-at-the-last-even-if-worse"),
        pytest.param(SaveModel.BEST, 2, 3, 2, True, id="best-when-this-epoch-is-best"),
        pytest.param(SaveModel.BEST, 3, 3, 2, False, id="best-not-when-an-earlier-was"),
        pytest.param(SaveModel.BEST, 1, 3, None, False, id="best-not-without-a-finite-loss"),
    ],
)
def test_saves_after(
    policy: SaveModel, epoch: int, epochs: int, best_epoch: int | None, saves: bool
) -> None:
    assert policy.saves_after(epoch, epochs, best_epoch) is saves


def test_default_keeps_no_weights() -> None:
    """The paper wrote a full checkpoint every epoch; Ladder writes none unless asked."""
    assert Training().save_model is SaveModel.NONE
    assert Training.model_validate({"saveModel": "best"}).save_model is SaveModel.BEST
