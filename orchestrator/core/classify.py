"""Classify how a trial ended from what a backend can see: text and exit codes.

One place for the rules, used by the worker (on its own exceptions' text), the local backend
(a Ray job's logs and exit code) and the operator (a RayJob's `status.message`, a pod's
`OOMKilled`). Order matters: a budget OOM is also a CUDA OOM in text, and a host OOM kill
must never be mistaken for an ordinary failure.

What counts as a GPU OOM (kind `gpu`):
- the caching allocator's `CUDA out of memory` / `torch.OutOfMemoryError`;
- `CUDA error: out of memory`: a cudaMalloc outside the caching allocator (a library's own
  workspace, a CUDA context, cudaHostAlloc) reported through C10_CUDA_CHECK;
- NCCL's `Cuda failure 'out of memory'` (with or without the error number, `Cuda failure 2
  'out of memory'`), and `ncclUnhandledCudaError` when the same text carries "out of memory":
  NCCL allocates its buffers with plain cudaMalloc when a communicator is set up;
- cuDNN's `CUDNN_STATUS_ALLOC_FAILED` and cuBLAS's `CUBLAS_STATUS_ALLOC_FAILED`;
- cuBLAS's `CUBLAS_STATUS_NOT_INITIALIZED` from `cublasCreate`: decided an OOM. cublasCreate
  allocates the handle's device workspace, and on a working install that allocation failing
  is what this status means (PyTorch reports it on the first matmul of a full card). A broken
  driver/toolkit pairing gives the same status, but then torch fails earlier, at the first
  CUDA call, with its own error, so no lane gets capped by a broken node. Without
  `cublasCreate` in the text the status stays an ordinary failure.

A GPU OOM is a `budget` OOM only when the budget really bound: the worker caps the allocator
with a per-process memory fraction only when the budget is below the card's memory
(`worker.memory.apply_cuda_budget`), and torch's message then says so (`... 20.00 GiB
allowed; ...` or `... exceed per_process_memory_fraction limit`). A budget above the card
changes nothing, and an OOM there is the card's (`gpu`), not the budget's.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from orchestrator.core.lifecycle import ExitCode, OOMKind, TrialState

# Messages of the CUDA caching allocator and torch's OutOfMemoryError type name, CUDA runtime
# errors outside the allocator, NCCL's and the CUDA libraries' allocation failures (the list
# and the cuBLAS decision: the module's docstring).
_GPU_OOM = re.compile(
    r"CUDA out of memory|torch\.OutOfMemoryError|torch\.cuda\.OutOfMemoryError|"
    r"CUDA error: out of memory|Cuda failure( \d+)? 'out of memory'|"
    r"ncclUnhandledCudaError[\s\S]*out of memory|out of memory[\s\S]*ncclUnhandledCudaError|"
    r"CUDNN_STATUS_ALLOC_FAILED|CUBLAS_STATUS_ALLOC_FAILED|"
    r"CUBLAS_STATUS_NOT_INITIALIZED when calling `?cublasCreate|"
    r"cudaErrorMemoryAllocation|out of memory on device",
    re.IGNORECASE,
)
# torch's OOM message when a per-process memory fraction capped the allocator: the budget bound.
_BUDGET_BOUND = re.compile(
    r"\d+(\.\d+)? (bytes|[KMGTPE]iB) allowed;|per_process_memory_fraction limit|"
    r"set by user-supplied memory fraction",
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


def budget_bound(text: str) -> bool:
    """Whether a GPU OOM message says a per-process memory fraction (the budget) capped it."""
    return _BUDGET_BOUND.search(text) is not None


def classify_text(text: str, *, budget_set: bool = False) -> tuple[TrialState, OOMKind | None]:
    """(state, oom kind) for a failure described by `text` (an error, a log tail, a message)."""
    if _BUDGET_OOM.search(text):
        return TrialState.OOM, OOMKind.BUDGET
    if _GPU_OOM.search(text):
        bound = budget_set and budget_bound(text)
        return TrialState.OOM, OOMKind.BUDGET if bound else OOMKind.GPU
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
