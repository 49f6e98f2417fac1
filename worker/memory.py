"""The memory budget (`escalation.memoryBudget`) and the classification of how a trial failed.

A budget caps the memory one worker may use on its device, so a ladder can be planned for a
smaller card than the one at hand, and so tests hit real OOMs without a GPU:

- CUDA: the caching allocator enforces it (`set_per_process_memory_fraction`), and the
  resulting `torch.OutOfMemoryError` is classified as a budget OOM. Only when it binds: a
  budget at or above the card's memory sets no fraction at all, so an OOM there is the card's
  (`gpu`), and torch's message (`... allowed; ...`) tells the two apart in every process that
  reads it (`orchestrator.core.classify.budget_bound`).
- CPU: nothing enforces it, so it is measured: the growth of the process's peak RSS over a
  baseline taken after imports and a tiny warm-up step (library pages that load lazily on the
  first matmul or backward are overhead, not the trial's memory). `HostMemoryBudget.check`
  raises `MemoryBudgetExceeded` at the points where memory jumps: model built, optimizer
  created, the probe step's forward pass (a peak only grows: no backward is needed to fail),
  probe step done, and after every epoch.

`classify_failure` turns any exception (through Ray's wrappers) or text into a state and OOM
kind; the text rules are shared with the backends (`orchestrator.core.classify.classify_text`).
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from typing import Any

import psutil
import torch

from orchestrator.core.classify import budget_bound, classify_text
from orchestrator.core.lifecycle import OOMKind, TrialState

__all__ = [
    "HostMemoryBudget",
    "MemoryBudgetExceeded",
    "apply_cuda_budget",
    "classify_failure",
    "exception_chain",
    "format_bytes",
    "peak_rss_bytes",
    "rss_bytes",
]


def format_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB': figures people read in error messages."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class MemoryBudgetExceeded(Exception):  # its name is matched in logs (core/classify.py)
    """The trial needs more memory than `escalation.memoryBudget` allows on this device."""

    def __init__(self, stage: str, used_bytes: int, budget_bytes: int, device: str = "cpu"):
        self.stage = stage
        self.used_bytes = used_bytes
        self.budget_bytes = budget_bytes
        self.device = device
        super().__init__(
            f"{format_bytes(used_bytes)} used on {device} "
            f"(measured after {stage}) exceeds the memory budget of {format_bytes(budget_bytes)}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses Ray process boundaries by pickle; the default would pass only the message.
        return (type(self), (self.stage, self.used_bytes, self.budget_bytes, self.device))


def rss_bytes() -> int:
    """This process's resident set size now."""
    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """This process's peak resident set size since it started (the kernel's high-water mark)."""
    # ru_maxrss is in KiB on Linux (bytes on macOS, which Ladder does not run trials on).
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _warm_up() -> None:
    """One tiny matmul, backward and AdamW step: the lazily loaded kernels and allocator
    arenas that every trial pays for are mapped before the baseline, not charged to it."""
    layer = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(layer.parameters())
    layer(torch.randn(8, 64)).square().mean().backward()
    optimizer.step()


class HostMemoryBudget:
    """Measured CPU memory growth of this process against a budget (None: measure only).

    The peak since the baseline is the larger of what the sampler saw (`observe`) and the
    kernel's high-water mark, the latter only once it has risen past its value at the baseline
    (before that, it may be a transient peak from imports, not from the trial).
    """

    def __init__(self, budget_bytes: int | None, *, warm_up: bool = True) -> None:
        if warm_up:
            _warm_up()
        self.budget_bytes = budget_bytes
        self.baseline_bytes = rss_bytes()
        self._baseline_peak = peak_rss_bytes()
        self._observed_peak = self.baseline_bytes

    def observe(self, rss: int) -> None:
        """Record an RSS sample (the telemetry sampler calls this every half second)."""
        self._observed_peak = max(self._observed_peak, rss)

    def peak_since_baseline(self) -> int:
        peak = max(self._observed_peak, rss_bytes())
        kernel_peak = peak_rss_bytes()
        if kernel_peak > self._baseline_peak:
            peak = max(peak, kernel_peak)
        return peak

    def growth_bytes(self) -> int:
        """How much more memory the process has needed at its peak than at the baseline."""
        return max(0, self.peak_since_baseline() - self.baseline_bytes)

    def check(self, stage: str) -> int:
        """The growth so far; raises MemoryBudgetExceeded when it is over the budget."""
        growth = self.growth_bytes()
        if self.budget_bytes is not None and growth > self.budget_bytes:
            raise MemoryBudgetExceeded(stage, growth, self.budget_bytes, "cpu")
        return growth


def apply_cuda_budget(budget_bytes: int, device: torch.device) -> float:
    """Make the caching allocator refuse allocations past `budget_bytes` on `device`.

    Returns the fraction set. A budget at or above the card's memory sets nothing and returns
    1.0: the budget does not bind, and torch's OOM message then carries no "allowed" figure,
    which is how an OOM there is told from a budget OOM (`classify.budget_bound`).
    """
    total = torch.cuda.get_device_properties(device).total_memory
    if budget_bytes >= total:
        return 1.0
    fraction = budget_bytes / total
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


# --- classification --------------------------------------------------------------------------

# Attributes through which Ray and our own code carry the exception that really happened:
# WorkerGroupError.worker_failures (rank -> exception), ControllerError.controller_failure,
# UserExceptionWithTraceback._base_exc, WorkerHealthCheckFailedError.failure, RayTaskError.cause.
_WRAPPED_ATTRIBUTES = ("controller_failure", "_base_exc", "failure", "cause")
# torch's CPU allocator raises a plain RuntimeError when malloc fails.
_CPU_ALLOCATOR_OOM = "DefaultCPUAllocator: can't allocate memory"


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """Every exception reachable from `error`: causes, contexts and Ray's wrapped errors."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked: list[object] = [current.__cause__, current.__context__]
        linked += [getattr(current, name, None) for name in _WRAPPED_ATTRIBUTES]
        failures = getattr(current, "worker_failures", None)
        if isinstance(failures, dict):
            linked += [failures[rank] for rank in sorted(failures)]
        stack += [e for e in reversed(linked) if isinstance(e, BaseException)]


def _ray_host_oom_types() -> tuple[type[BaseException], ...]:
    try:
        from ray.exceptions import OutOfMemoryError as RayOutOfMemoryError
    except ImportError:  # The classifier also runs where Ray is not installed.
        return ()
    return (RayOutOfMemoryError,)


def classify_failure(
    error: BaseException | str, *, budget_set: bool = False
) -> tuple[TrialState, OOMKind | None]:
    """(state, oom kind) of a failed trial: FAILED unless some part of the error is an OOM.

    Types decide first, anywhere in the chain: our MemoryBudgetExceeded (budget), torch's
    OutOfMemoryError (gpu, or budget when a budget is set and its message shows that the
    budget's memory fraction capped the allocator), Python's MemoryError
    and Ray's memory-monitor OutOfMemoryError (host). Then the text of every exception in the
    chain: torch's CPU allocator failing is a host OOM, the rest follows the rules the backends
    apply to logs (`orchestrator.core.classify.classify_text`).
    """
    if isinstance(error, str):
        return _classify_text(error, budget_set)
    chain = list(exception_chain(error))
    if any(isinstance(e, MemoryBudgetExceeded) for e in chain):
        return TrialState.OOM, OOMKind.BUDGET
    torch_ooms = [e for e in chain if isinstance(e, torch.OutOfMemoryError)]
    if torch_ooms:
        bound = budget_set and any(budget_bound(str(e)) for e in torch_ooms)
        return TrialState.OOM, OOMKind.BUDGET if bound else OOMKind.GPU
    host_types = (MemoryError, *_ray_host_oom_types())
    if any(isinstance(e, host_types) for e in chain):
        return TrialState.OOM, OOMKind.HOST
    text = "\n".join(f"{type(e).__module__}.{type(e).__qualname__}: {e}" for e in chain)
    return _classify_text(text, budget_set)


def _classify_text(text: str, budget_set: bool) -> tuple[TrialState, OOMKind | None]:
    state, kind = classify_text(text, budget_set=budget_set)
    if state is TrialState.FAILED and _CPU_ALLOCATOR_OOM in text:
        return TrialState.OOM, OOMKind.HOST
    return state, kind
