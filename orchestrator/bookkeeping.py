"""The attempt bookkeeping both backends share: what they read from and write to the store.

The local runner (`backends/runner.py`) and the Kubernetes reconciler
(`operator/reconcile.py`) differ only in how they observe jobs (Ray job status, RayJobs)
and how they act (submitting a Ray job, creating a RayJob). Everything they record about
an attempt goes through this module, so both write the same rows in the same order:

- `observe`: the store's attempts as the core's `Observed` (with the predicted-OOM set);
- `record_launch`: an attempt about to be launched, recorded **pending** before the job
  exists (see below);
- `record_planned`: an attempt the plan decided without launching it (predicted OOM,
  unschedulable, skipped): recorded pending, then marked with its outcome;
- `mark`: an outcome a backend learned without a worker result (cancelled, lost job, host
  OOM, stalled, launch refused);
- `record_result`: a worker's result as the backend read it from the job's output;
- `record_seen_running`, `record_adopted`: what only the reconciler observes (a RayJob
  running before its worker wrote, a RayJob without a store row).

`sweep_status` (for `ladder status`, reports and metrics) reads the same rows through the
same `plan`, so every view of a sweep agrees with what the backends decide.

Launch state: an attempt is recorded **pending** when its launch is requested, by both
backends. Pending means "asked for, not yet known to run": a RayJob may sit in
`Initializing` while KubeRay brings its RayCluster up, and a local Ray job waits for
resources before its entrypoint starts. The attempt becomes **running** when something has
seen it run: the worker itself, when it starts (`worker.result.StoreWriter`), or the
reconciler, when the RayJob reports `RUNNING` (`manifests.running_state`). Recording it
before the job is created means a backend that dies in between finds an attempt without a
job, records it cancelled, and launches the next attempt: never two jobs for one attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from orchestrator import store
from orchestrator.core.escalation import AttemptObservation
from orchestrator.core.estimate import estimated_bytes
from orchestrator.core.grid import GridPoint, expand
from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.core.plan import Observed, SweepStatus, plan
from orchestrator.core.scheduler import NO_CAPACITY, Capacity
from orchestrator.core.spec import Sweep, SweepSpec
from orchestrator.core.worker_contract import AttemptKey, AttemptResult, AttemptSpec

# The state a launch is recorded in, by every backend (see the module docstring).
LAUNCH_STATE = TrialState.PENDING

__all__ = [
    "LAUNCH_STATE",
    "attempt_observations",
    "mark",
    "observe",
    "predicted_oom_ids",
    "record_adopted",
    "record_launch",
    "record_planned",
    "record_result",
    "record_seen_running",
    "sweep_status",
]


# --- reading ------------------------------------------------------------------------------


def attempt_observations(rows: Sequence[store.AttemptRow]) -> dict[str, list[AttemptObservation]]:
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


def predicted_oom_ids(
    predicted: Callable[[GridPoint], bool] | None, trials: Iterable[GridPoint]
) -> frozenset[str]:
    """The ids of the trials `predicted` (`estimate.predicted_oom_fn`) says run out of memory."""
    if predicted is None:
        return frozenset()
    return frozenset(trial.trial_id for trial in trials if predicted(trial))


def observe(
    sessions: sessionmaker[Session],
    sweep: Sweep,
    trials: Iterable[GridPoint],
    capacity: Capacity,
    *,
    predicted: Callable[[GridPoint], bool] | None,
    deleting: bool,
) -> tuple[list[store.AttemptRow], Observed]:
    """The sweep's attempts in the store, and the core's `Observed` built from them."""
    with sessions() as session:
        rows = store.attempts(session, sweep.namespace, sweep.name)
    observed = Observed(
        attempts=attempt_observations(rows),
        capacity=capacity,
        predicted_oom=predicted_oom_ids(predicted, trials),
        deleting=deleting,
    )
    return rows, observed


def sweep_status(sweep: Sweep, rows: Sequence[store.AttemptRow]) -> SweepStatus:
    """A sweep's status from its store rows alone (for `ladder status`, reports, metrics)."""
    observed = Observed(attempts=attempt_observations(rows), capacity=NO_CAPACITY)
    return plan(expand(sweep), sweep.spec, observed).status


# --- writing ------------------------------------------------------------------------------


def record_launch(
    sessions: sessionmaker[Session],
    spec: AttemptSpec,
    sweep_spec: SweepSpec,
    trial: GridPoint,
    *,
    now: datetime,
    job_name: str | None = None,
) -> store.AttemptRow:
    """Record an attempt whose launch is requested: pending, started now, with its estimate.

    Call it before creating the job (with the job's name when known in advance) and again
    with the name once the backend has it; a second call never moves the row back.
    """
    with sessions.begin() as session:
        return store.record_attempt(
            session, spec, status=LAUNCH_STATE, started_at=now, rayjob_name=job_name,
            estimated_memory_bytes=estimated_bytes(sweep_spec, trial),
        )


def record_planned(
    sessions: sessionmaker[Session],
    spec: AttemptSpec,
    sweep_spec: SweepSpec,
    trial: GridPoint,
    state: TrialState,
    oom_kind: OOMKind | None,
    reason: str,
    *,
    now: datetime,
) -> store.AttemptRow:
    """Record an attempt the plan settled without launching it (`RecordUnlaunched`)."""
    with sessions.begin() as session:
        store.record_attempt(session, spec, status=TrialState.PENDING,
                             estimated_memory_bytes=estimated_bytes(sweep_spec, trial))
    return mark(sessions, spec.key, state, oom_kind=oom_kind, error=reason, finished_at=now)


def mark(
    sessions: sessionmaker[Session],
    key: AttemptKey,
    state: TrialState,
    *,
    oom_kind: OOMKind | None = None,
    error: str | None = None,
    finished_at: datetime | None = None,
) -> store.AttemptRow:
    """Record an outcome a backend learned without a worker result; returns the stored row.

    Retries transient store failures (an outcome must not be lost). The store's rules
    hold: states only move forward and the first terminal write wins, so a worker's result
    that got there first stands (compare the returned row's status with `state`).
    """
    def write(session: Session) -> store.AttemptRow:
        return store.mark_attempt(
            session, key, state,
            oom_kind=oom_kind if state is TrialState.OOM else None, error=error,
            finished_at=finished_at,
        )

    return store.save_with_retry(sessions, write)


def record_result(sessions: sessionmaker[Session], result: AttemptResult) -> store.AttemptRow:
    """Store a worker's result read from its job's output, retrying transient failures."""
    return store.save_with_retry(sessions, lambda session: store.record_result(session, result))


def record_seen_running(sessions: sessionmaker[Session], key: AttemptKey) -> store.AttemptRow:
    """Record that a backend saw a pending attempt's job running (before its worker did)."""
    with sessions.begin() as session:
        return store.mark_attempt(session, key, TrialState.RUNNING)


def record_adopted(
    sessions: sessionmaker[Session], spec: AttemptSpec, state: TrialState, job_name: str, *,
    now: datetime,
) -> store.AttemptRow:
    """Record a job the store did not know (a store wiped or replaced): `state` is the
    job's own (pending or running)."""
    with sessions.begin() as session:
        return store.record_attempt(session, spec, status=state, rayjob_name=job_name,
                                    started_at=now)
