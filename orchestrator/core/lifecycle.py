"""The states a trial and a lane go through, and the vocabulary both backends share.

Enums rather than strings, so a typo is an AttributeError and not a silent new state.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Method(StrEnum):
    """How a trial fine-tunes its model."""

    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"

    @property
    def uses_adapters(self) -> bool:
        return self is not Method.FULL


class TrialState(StrEnum):
    """One trial attempt's state (DESIGN.md, "Trial lifecycle")."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    OOM = "oom"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self not in (TrialState.PENDING, TrialState.RUNNING)


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
    """The worker's exit codes (DESIGN.md, "The worker contract")."""

    SUCCEEDED = 0
    FAILED = 1
    OOM = 3
