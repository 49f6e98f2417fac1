"""Classify how a trial ended from what a backend can see: text and exit codes.

One place for the rules, used by the worker (on its own exceptions' text), the local backend
(a Ray job's logs and exit code) and the operator (a RayJob's `status.message`, a pod's
`OOMKilled`). Order matters: a budget OOM is also a CUDA OOM in text, and a host OOM kill
must never be mistaken for an ordinary failure.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from orchestrator.core.lifecycle import ExitCode, OOMKind, TrialState

# Messages of the CUDA caching allocator and torch's OutOfMemoryError type name.
_GPU_OOM = re.compile(
    r"CUDA out of memory|torch\.OutOfMemoryError|torch\.cuda\.OutOfMemoryError|"
    r"CUBLAS_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation|out of memory on device",
    re.IGNORECASE,
)
# Our own budget exception (worker/memory.py raises it; its name is the contract).
_BUDGET_OOM = re.compile(r"MemoryBudgetExceeded")
# Ray's memory monitor, the kernel's OOM killer as Kubernetes reports it, a SIGKILLed worker.
_HOST_OOM = re.compile(
    r"ray\.exceptions\.OutOfMemoryError|running low on memory|OOMKilled|"
    r"killed due to (the )?(node|memory)|Out of memory: Killed process|exit code -9\b|"
    r"exited with (signal|code) (9|-9|137)\b|SIGKILL",
    re.IGNORECASE,
)


def classify_text(text: str, *, budget_set: bool = False) -> tuple[TrialState, OOMKind | None]:
    """(state, oom kind) for a failure described by `text` (an error, a log tail, a message)."""
    if _BUDGET_OOM.search(text):
        return TrialState.OOM, OOMKind.BUDGET
    if _GPU_OOM.search(text):
        return TrialState.OOM, OOMKind.BUDGET if budget_set else OOMKind.GPU
    if _HOST_OOM.search(text):
        return TrialState.OOM, OOMKind.HOST
    return TrialState.FAILED, None


def state_for_exit_code(code: int | None) -> TrialState:
    """The worker's exit code (docs/architecture.md, "The worker contract") as a state;
    unknown codes are failures."""
    if code == ExitCode.SUCCEEDED:
        return TrialState.SUCCEEDED
    if code == ExitCode.OOM:
        return TrialState.OOM
    return TrialState.FAILED


def excerpt(text: str, limit: int = 2000) -> str:
    """The end of a long log or traceback: where the error is."""
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


STALLED = "stalled: no progress for {seconds} s"


def stall_reason(
    last_progress: datetime | None, now: datetime, timeout_seconds: float | None
) -> str | None:
    """Why a running attempt is to be stopped as hung, or None while it may go on.

    `last_progress` is the last sign of life the worker left (the attempt became running,
    an epoch was written); an attempt silent for more than `timeout_seconds` has stalled.
    No timeout (None) or nothing known about its progress: never stalled.
    """
    if timeout_seconds is None or last_progress is None:
        return None
    if last_progress.tzinfo is None:
        last_progress = last_progress.replace(tzinfo=UTC)
    silent = (now - last_progress).total_seconds()
    if silent <= timeout_seconds:
        return None
    return STALLED.format(seconds=f"{timeout_seconds:g}")
