"""The local sweep runner: observe (store + Ray jobs), ask `plan`, act, until every lane ends.

The Kubernetes controller runs the same `plan`; it differs only in how it observes (RayJobs)
and acts (creating them). The store is the source of truth, so a runner killed at any moment
and started again on the same spec continues where it stopped: finished trials are never
run again, and an attempt the dead runner left unfinished is recorded as cancelled
(interrupted) and run again as the next attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.orm import Session, sessionmaker

from orchestrator import store
from orchestrator.core.escalation import AttemptObservation
from orchestrator.core.estimate import estimated_bytes
from orchestrator.core.grid import Grid, Trial, expand, trial_spec
from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.core.plan import (
    CancelTrial,
    LaunchTrial,
    Observed,
    Plan,
    RecordOutcome,
    SweepPhase,
    SweepStatus,
    plan,
)
from orchestrator.core.scheduler import Capacity
from orchestrator.core.spec import Sweep
from orchestrator.core.trial import TrialSpec

if TYPE_CHECKING:
    from orchestrator.metrics import LadderMetrics

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the runner stopped before this attempt finished"
FINAL_PHASES = (SweepPhase.SUCCEEDED, SweepPhase.FAILED)


def attempt_observations(rows: Sequence[store.TrialRow]) -> dict[str, list[AttemptObservation]]:
    """Store rows as the core's observations, grouped by trial id."""
    by_trial: dict[str, list[AttemptObservation]] = {}
    for row in rows:
        by_trial.setdefault(row.trial_id, []).append(
            AttemptObservation(
                trial_id=row.trial_id,
                attempt=row.attempt,
                state=TrialState(row.status),
                oom_kind=OOMKind(row.oom_kind) if row.oom_kind else None,
                best_eval_loss=row.best_eval_loss,
                error=row.error,
            )
        )
    return by_trial


def sweep_status(sweep: Sweep, rows: Sequence[store.TrialRow]) -> SweepStatus:
    """A sweep's status from its store rows alone (for `ladder status`, reports, metrics)."""
    observed = Observed(attempts=attempt_observations(rows), capacity=Capacity(gpus=0, cpus=0))
    return plan(expand(sweep), sweep.spec, observed).status


class TrialBackend(Protocol):
    """What the runner needs from a backend (LocalRayBackend implements it)."""

    def capacity(self) -> Capacity: ...
    def launch(self, spec: TrialSpec) -> str: ...
    def cancel(self, trial_id: str, attempt: int) -> None: ...
    def adopt(self, spec: TrialSpec) -> bool: ...
    def active(self) -> set[tuple[str, int]]: ...
    def poll(self) -> list: ...


@dataclass(frozen=True, slots=True)
class RunnerEvent:
    """Something the runner did, for the live display and the log."""

    kind: str  # launched | finished | recorded | cancelled
    trial: Trial
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
    predicted_oom: Callable[[Trial], bool] | None = None
    metrics: LadderMetrics | None = None
    grid: Grid = field(init=False)

    def __post_init__(self) -> None:
        self.grid = expand(self.sweep)
        self._trials = {t.trial_id: t for t in self.grid.all_trials()}
        self._cancelling = False

    # -- observe ---------------------------------------------------------------------------
    def _observe(self, capacity: Capacity) -> Observed:
        with self.sessions() as session:
            rows = store.attempts(session, self.sweep.namespace, self.sweep.name)
        by_trial = attempt_observations(rows)
        predicted = frozenset(
            t.trial_id for t in self._trials.values()
            if self.predicted_oom is not None and self.predicted_oom(t)
        )
        return Observed(
            attempts=by_trial, capacity=capacity, predicted_oom=predicted,
            deleting=self._cancelling,
        )

    def _spec(self, trial: Trial, attempt: int) -> TrialSpec:
        output = self.runs_dir / self.sweep.name / trial.trial_id / str(attempt)
        return trial_spec(self.sweep, trial, attempt=attempt, output_dir=str(output.resolve()))

    def recover(self) -> int:
        """Adopt jobs an earlier runner left running; record the lost ones as interrupted."""
        lost = 0
        with self.sessions.begin() as session:
            for row in store.attempts(session, self.sweep.namespace, self.sweep.name):
                if TrialState(row.status).is_terminal or row.trial_id not in self._trials:
                    continue
                spec = self._spec(self._trials[row.trial_id], row.attempt)
                if not self.backend.adopt(spec):
                    store.mark_attempt(
                        session, self.sweep.namespace, self.sweep.name, row.trial_id,
                        row.attempt, TrialState.CANCELLED, error=INTERRUPTED,
                        finished_at=datetime.now(UTC),
                    )
                    lost += 1
        return lost

    # -- act -------------------------------------------------------------------------------
    def _act(self, decided: Plan) -> list[RunnerEvent]:
        events: list[RunnerEvent] = []
        for action in decided.actions:
            if isinstance(action, LaunchTrial):
                spec = self._spec(action.trial, action.attempt)
                with self.sessions.begin() as session:
                    store.record_attempt(
                        session, spec, status=TrialState.RUNNING,
                        started_at=datetime.now(UTC),
                        estimated_memory_bytes=estimated_bytes(self.sweep.spec, action.trial),
                    )
                try:
                    name = self.backend.launch(spec)
                except Exception as error:
                    self._mark(action.trial, action.attempt, TrialState.FAILED, None,
                               f"launch failed: {error}")
                    events.append(RunnerEvent("finished", action.trial, action.attempt,
                                              TrialState.FAILED, detail=str(error)))
                    continue
                with self.sessions.begin() as session:
                    store.record_attempt(session, spec, status=TrialState.RUNNING,
                                         rayjob_name=name)
                events.append(RunnerEvent("launched", action.trial, action.attempt))
            elif isinstance(action, RecordOutcome):
                spec = self._spec(action.trial, action.attempt)
                with self.sessions.begin() as session:
                    store.record_attempt(
                        session, spec, status=TrialState.PENDING,
                        estimated_memory_bytes=estimated_bytes(self.sweep.spec, action.trial))
                self._mark(action.trial, action.attempt, action.state, action.oom_kind,
                           action.reason)
                events.append(RunnerEvent("recorded", action.trial, action.attempt,
                                          action.state, action.oom_kind, action.reason))
            elif isinstance(action, CancelTrial):
                self.backend.cancel(action.trial.trial_id, action.attempt)
                events.append(RunnerEvent("cancelled", action.trial, action.attempt,
                                          TrialState.CANCELLED, detail=action.reason))
        return events

    def _mark(
        self, trial: Trial, attempt: int, state: TrialState, oom_kind: OOMKind | None,
        error: str | None,
    ) -> None:
        def write(session: Session) -> None:
            store.mark_attempt(
                session, self.sweep.namespace, self.sweep.name, trial.trial_id, attempt,
                state, oom_kind=oom_kind, error=error, finished_at=datetime.now(UTC),
            )

        store.save_with_retry(self.sessions, write)

    def _collect(self) -> list[RunnerEvent]:
        events = []
        for outcome in self.backend.poll():
            trial = self._trials[outcome.trial_id]
            if outcome.result is not None:
                result = outcome.result

                def write(session: Session, result=result) -> None:
                    store.record_result(session, result)

                store.save_with_retry(self.sessions, write)
            else:
                self._mark(trial, outcome.attempt, outcome.state, outcome.oom_kind,
                           outcome.error)
            events.append(RunnerEvent("finished", trial, outcome.attempt, outcome.state,
                                      outcome.oom_kind, outcome.error or ""))
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
                if event.kind == "launched":
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
                if status.phase in FINAL_PHASES and not self.backend.active():
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
