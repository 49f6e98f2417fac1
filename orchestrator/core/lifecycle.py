"""The states a trial and a lane go through, and the vocabulary both backends share.

Enums rather than strings, so a typo is an AttributeError and not a silent new state.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from enum import IntEnum, StrEnum
from typing import Protocol, TypeVar


class Method(StrEnum):
    """How a trial fine-tunes its model."""

    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"

    @property
    def uses_adapters(self) -> bool:
        return self is not Method.FULL


class TrialState(StrEnum):
    """One trial attempt's state (docs/architecture.md, "Trial lifecycle")."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    OOM = "oom"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self not in ACTIVE_STATES


# The states of an attempt that may still change: launched (or about to be), not finished.
ACTIVE_STATES = frozenset({TrialState.PENDING, TrialState.RUNNING})


class OOMKind(StrEnum):
    """Why a trial ran out of memory."""

    GPU = "gpu"  # the CUDA caching allocator raised
    HOST = "host"  # the container was OOMKilled or Ray's memory monitor killed the worker
    BUDGET = "budget"  # escalation.memoryBudget was exceeded
    PREDICTED = "predicted"  # not launched: the memory estimate exceeds the device


class LaneState(StrEnum):
    """Where a lane's climb up the model ladder stands."""

    PENDING = "pending"  # nothing launched yet
    RUNNING = "running"  # a trial of the lane is pending or running
    CAPPED = "capped"  # stopped at an OOM; `ceiling` is the largest model that fitted
    COMPLETED = "completed"  # every model of the ladder succeeded
    FAILED = "failed"  # a non-OOM failure exhausted its retries
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self not in (LaneState.PENDING, LaneState.RUNNING)


class ExitCode(IntEnum):
    """The worker's exit codes (docs/architecture.md, "The worker contract")."""

    SUCCEEDED = 0
    FAILED = 1
    OOM = 3


class _Attempt(Protocol):
    @property
    def attempt(self) -> int: ...


A = TypeVar("A", bound=_Attempt)
K = TypeVar("K", bound=Hashable)


def latest_attempts(items: Iterable[A], key: Callable[[A], K]) -> dict[K, A]:
    """Each trial's latest attempt: per `key(item)`, the item with the highest `attempt`
    (the last one given, on a tie), in the order keys first appear.

    The one rule for "latest attempt": a trial's outcome is its latest attempt's.
    """
    latest: dict[K, A] = {}
    for item in items:
        k = key(item)
        current = latest.get(k)
        if current is None or item.attempt >= current.attempt:
            latest[k] = item
    return latest
