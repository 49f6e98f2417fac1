"""The local sweep runner: observe (store + Ray jobs), ask `plan`, act, until every lane ends.

The Kubernetes controller runs the same `plan`; it differs only in how it observes (RayJobs)
and acts (creating them). The store is the source of truth, so a runner killed at any moment
and started again on the same spec continues where it stopped: finished trials are never
run again, and an attempt the dead runner left unfinished is recorded as cancelled
(interrupted) and run again as the next attempt.

What it records goes through `orchestrator.bookkeeping`, the module the reconciler uses too:
a launch is recorded pending and turns running when the worker starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.orm import Session, sessionmaker

from orchestrator import bookkeeping, store
from orchestrator.core.grid import Grid, GridPoint, attempt_spec, expand
from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.core.plan import (
    CancelTrial,
    LaunchTrial,
    Observed,
    Plan,
    RecordUnlaunched,
    SweepStatus,
    plan,
)
from orchestrator.core.scheduler import Capacity
from orchestrator.core.spec import Sweep
from orchestrator.core.worker_contract import AttemptKey, AttemptResult, AttemptSpec

if TYPE_CHECKING:
    from orchestrator.metrics import LadderMetrics

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the runner stopped before this attempt finished"


@dataclass(frozen=True, slots=True)
class FinishedJob:
    """A finished job as a backend saw it; `result` when the worker printed one."""

    trial_id: str
    attempt: int
    state: TrialState
    result: AttemptResult | None
    error: str | None
    oom_kind: OOMKind | None = None


class TrialBackend(Protocol):
    """What the runner needs from a backend (LocalRayBackend implements it)."""

    def capacity(self) -> Capacity: ...
    def launch(self, spec: AttemptSpec) -> str: ...
    def cancel(self, trial_id: str, attempt: int) -> None: ...
    def adopt(self, spec: AttemptSpec) -> bool: ...
    def active(self) -> set[tuple[str, int]]: ...
    def poll(self) -> list[FinishedJob]: ...


class RunnerEventKind(StrEnum):
    """What a `RunnerEvent` reports."""

    LAUNCHED = "launched"  # a trial attempt was launched
    FINISHED = "finished"  # its job ended (or its launch failed)
    RECORDED = "recorded"  # the plan settled it without launching (predicted OOM, skipped, ...)
    CANCELLED = "cancelled"  # the plan cancelled it


@dataclass(frozen=True, slots=True)
class RunnerEvent:
    """Something the runner did, for the live display and the log."""

    kind: RunnerEventKind
    trial: GridPoint
    attempt: int
    state: TrialState | None = None
    oom_kind: OOMKind | None = None
    detail: str = ""


@dataclass
class LocalSweepRunner:
    """Drives one sweep to the end on a backend, persisting every step to the store."""

    sweep: Sweep
    backend: TrialBackend
    sessions: sessionmaker[Session]
    runs_dir: Path
    poll_interval: float = 0.5
    on_update: Callable[[SweepStatus, Sequence[RunnerEvent]], None] | None = None
    predicted_oom: Callable[[GridPoint], bool] | None = None
    metrics: LadderMetrics | None = None
    grid: Grid = field(init=False)

    def __post_init__(self) -> None:
        self.grid = expand(self.sweep)
        self._trials = {t.trial_id: t for t in self.grid.all_trials()}
        self._cancelling = False

    # -- observe ---------------------------------------------------------------------------
    def _observe(self, capacity: Capacity) -> Observed:
        _rows, observed = bookkeeping.observe(
            self.sessions, self.sweep, self._trials.values(), capacity,
            predicted=self.predicted_oom, deleting=self._cancelling,
        )
        return observed

    def _spec(self, trial: GridPoint, attempt: int) -> AttemptSpec:
        output = self.runs_dir / self.sweep.name / trial.trial_id / str(attempt)
        return attempt_spec(self.sweep, trial, attempt=attempt, output_dir=str(output.resolve()))

    def recover(self) -> int:
        """Adopt jobs an earlier runner left running; record the lost ones as interrupted."""
        lost_attempts: list[tuple[str, int]] = []
        with self.sessions() as session:
            for row in store.attempts(session, self.sweep.namespace, self.sweep.name):
                if TrialState(row.status).is_terminal or row.trial_id not in self._trials:
                    continue
                spec = self._spec(self._trials[row.trial_id], row.attempt)
                if not self.backend.adopt(spec):
                    lost_attempts.append((row.trial_id, row.attempt))
        for trial_id, attempt in lost_attempts:
            self._mark(self._trials[trial_id], attempt, TrialState.CANCELLED, None, INTERRUPTED)
        return len(lost_attempts)

    def finished_before(self) -> SweepStatus | None:
        """The sweep's status when the store alone shows it over (every attempt ended, every
        lane settled, nothing left to launch or record): a run of it again has nothing to do
        and needs no runtime. None when there is work, or a doubt."""
        with self.sessions() as session:
            rows = store.attempts(session, self.sweep.namespace, self.sweep.name)
            if not rows or any(not TrialState(row.status).is_terminal for row in rows):
                return None
        decided = plan(self.grid, self.sweep.spec, self._observe(Capacity(gpus=0, cpus=0)))
        if decided.actions or not decided.status.phase.is_finished:
            return None
        return decided.status

    # -- act -------------------------------------------------------------------------------
    def _act(self, decided: Plan) -> list[RunnerEvent]:
        events: list[RunnerEvent] = []
        for action in decided.actions:
            if isinstance(action, LaunchTrial):
                spec = self._spec(action.trial, action.attempt)
                bookkeeping.record_launch(self.sessions, spec, self.sweep.spec, action.trial,
                                          now=datetime.now(UTC))
                try:
                    name = self.backend.launch(spec)
                except Exception as error:
                    self._mark(action.trial, action.attempt, TrialState.FAILED, None,
                               f"launch failed: {error}")
                    events.append(RunnerEvent(RunnerEventKind.FINISHED, action.trial,
                                              action.attempt, TrialState.FAILED,
                                              detail=str(error)))
                    continue
                bookkeeping.record_launch(self.sessions, spec, self.sweep.spec, action.trial,
                                          now=datetime.now(UTC), job_name=name)
                events.append(RunnerEvent(RunnerEventKind.LAUNCHED, action.trial, action.attempt))
            elif isinstance(action, RecordUnlaunched):
                bookkeeping.record_planned(
                    self.sessions, self._spec(action.trial, action.attempt), self.sweep.spec,
                    action, now=datetime.now(UTC),
                )
                events.append(RunnerEvent(RunnerEventKind.RECORDED, action.trial,
                                          action.attempt, action.state, action.oom_kind,
                                          action.reason))
            elif isinstance(action, CancelTrial):
                self.backend.cancel(action.trial.trial_id, action.attempt)
                events.append(RunnerEvent(RunnerEventKind.CANCELLED, action.trial,
                                          action.attempt, TrialState.CANCELLED,
                                          detail=action.reason))
        return events

    def _mark(
        self, trial: GridPoint, attempt: int, state: TrialState, oom_kind: OOMKind | None,
        error: str | None,
    ) -> None:
        key = AttemptKey(self.sweep.namespace, self.sweep.name, trial.trial_id, attempt)
        bookkeeping.mark(self.sessions, key, state, oom_kind=oom_kind, error=error,
                         finished_at=datetime.now(UTC))

    def _collect(self) -> list[RunnerEvent]:
        events = []
        for job in self.backend.poll():
            trial = self._trials[job.trial_id]
            if job.result is not None:
                bookkeeping.record_result(self.sessions, job.result)
            else:
                self._mark(trial, job.attempt, job.state, job.oom_kind, job.error)
            events.append(RunnerEvent(RunnerEventKind.FINISHED, trial, job.attempt,
                                      job.state, job.oom_kind, job.error or ""))
        return events

    # -- loop ------------------------------------------------------------------------------
    def step(self) -> tuple[SweepStatus, list[RunnerEvent]]:
        """One level-triggered pass: collect finished jobs, plan, act."""
        started = time.monotonic()
        events = self._collect()
        decided = plan(self.grid, self.sweep.spec, self._observe(self.backend.capacity()))
        events += self._act(decided)
        if self.metrics is not None:
            labels = (self.sweep.name, self.sweep.namespace)
            now = time.monotonic()
            self.metrics.reconcile_seconds.labels(*labels).observe(now - started)
            for event in events:
                if event.kind is RunnerEventKind.LAUNCHED:
                    # Launchable since the outcome that freed it was observed this pass.
                    self.metrics.launch_latency_seconds.labels(*labels).observe(now - started)
        return decided.status, events

    def run(self) -> SweepStatus:
        """Run until every lane has ended; Ctrl-C cancels running trials cleanly.

        Any other exception also stops the running trials and records them as cancelled
        (with the reason) before it propagates: no attempt is left marked running."""
        with self.sessions.begin() as session:
            store.upsert_sweep(session, self.sweep)
        self.recover()
        try:
            while True:
                status, events = self.step()
                self._notify(status, events)
                if status.phase.is_finished and not self.backend.active():
                    return status
                time.sleep(self.poll_interval)
        except KeyboardInterrupt:
            return self.cancel()
        except Exception as error:
            self._stop_all(f"cancelled: the runner failed: {type(error).__name__}: {error}")
            raise

    def _notify(self, status: SweepStatus, events: Sequence[RunnerEvent]) -> None:
        """Tell the display; a display that fails is dropped (the sweep and the store go on,
        the failure is logged once), since the store, not the screen, is the record."""
        if self.on_update is None:
            return
        try:
            self.on_update(status, events)
        except Exception as error:
            self.on_update = None
            log.warning("the live display failed and is switched off (the sweep goes on): "
                        "%s: %s", type(error).__name__, store.redact_secrets(str(error)))
            log.debug("display failure", exc_info=True)

    @property
    def interrupted(self) -> bool:
        """True once Ctrl-C (or `cancel()`) stopped the run before the sweep ended."""
        return self._cancelling

    def cancel(self) -> SweepStatus:
        """Stop every running trial and record it as cancelled; nothing is left half-written."""
        self._stop_all("cancelled")
        decided = plan(self.grid, self.sweep.spec, self._observe(self.backend.capacity()))
        return decided.status

    def _stop_all(self, reason: str) -> None:
        self._cancelling = True
        try:
            for trial_id, attempt in sorted(self.backend.active()):
                self.backend.cancel(trial_id, attempt)
            deadline = time.monotonic() + 30
            while self.backend.active() and time.monotonic() < deadline:
                self._collect()
                time.sleep(self.poll_interval)
        except Exception as error:  # the backend itself failed: the store is still the record
            log.warning("could not stop the running trials: %s: %s", type(error).__name__,
                        store.redact_secrets(str(error)))
        # Whatever the store still holds open (a job that would not stop, an attempt recorded
        # as running whose launch never returned) is recorded as cancelled with the reason.
        with self.sessions() as session:
            rows = store.attempts(session, self.sweep.namespace, self.sweep.name)
        for row in rows:
            if not TrialState(row.status).is_terminal and row.trial_id in self._trials:
                self._mark(self._trials[row.trial_id], row.attempt, TrialState.CANCELLED, None,
                           reason)
