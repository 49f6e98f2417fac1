"""Why a trial stopped training, and the early-stopping rule (training.earlyStopping).

Pure: the worker asks `should_stop` after every epoch's evaluation; the simulator
(tests/bench/simulate.py) replays recorded loss curves through the same function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum

from orchestrator.core.spec import EarlyStopping


class StopReason(StrEnum):
    """Why a trial's training ended (a trial that failed has none)."""

    EPOCHS = "epochs"  # every configured epoch ran
    EARLY_STOPPING = "early-stopping"  # no improvement for `patience` epochs


def epochs_without_improvement(losses: Sequence[float], min_delta: float) -> int:
    """Epochs since the last one that beat the best before it by more than `min_delta`
    (a NaN or infinite loss never improves)."""
    best, since = math.inf, 0
    for loss in losses:
        if math.isfinite(loss) and loss < best - min_delta:
            best, since = loss, 0
        else:
            since += 1
    return since


def should_stop(losses: Sequence[float], rule: EarlyStopping | None) -> bool:
    """After the epochs whose selected eval losses are `losses`: stop now?"""
    if rule is None or not losses:
        return False
    return epochs_without_improvement(losses, rule.min_delta) >= rule.patience


def stopping_epoch(losses: Sequence[float], rule: EarlyStopping | None) -> int:
    """The epoch (1-based) a run with these losses would stop at under `rule`: the first
    epoch after which `should_stop` holds, else the last one."""
    for epoch in range(1, len(losses) + 1):
        if should_stop(losses[:epoch], rule):
            return epoch
    return len(losses)
