"""Reads and idempotent writes of sweeps, trial attempts and epochs.

Callers own the session: every function takes a Session, works inside the caller's
transaction and never commits. `save_with_retry` is the one helper that opens (and commits)
transactions itself, for writers that must not lose a result while the database blinks.

Writes are upserts keyed by natural keys: (namespace, name) for sweeps, (sweep, trial id,
attempt) for attempts, (attempt, epoch) for epochs. They use the dialect's
`INSERT ... ON CONFLICT` (SQLite and PostgreSQL), and the rules about states live in the
statement's WHERE clause rather than in a read-then-write, so they hold under concurrency too:

- An attempt's state only moves forward: pending -> running -> a terminal state.
- The first terminal write wins. A later, different outcome for a terminal attempt is ignored
  (and logged), so a retried or duplicated write can never flip a result; writing the same
  result again changes nothing.
- Once an attempt is terminal its epochs are frozen: live epoch writes may fill gaps but not
  change what the result recorded.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, contains_eager, joinedload, selectinload, sessionmaker

from orchestrator.core.lifecycle import ACTIVE_STATES, OOMKind, TrialState
from orchestrator.core.names import IDENTITY_FIELDS
from orchestrator.core.spec import Sweep
from orchestrator.core.worker_contract import AttemptKey, AttemptResult, AttemptSpec, EpochRecord
from orchestrator.store.engine import redact_secrets
from orchestrator.store.models import (
    ERROR_EXCERPT_CHARS,
    AttemptRow,
    EpochRow,
    SweepRow,
    as_utc,
    utcnow,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

SWEEPS = cast(sa.Table, SweepRow.__table__)
TRIALS = cast(sa.Table, AttemptRow.__table__)
EPOCHS = cast(sa.Table, EpochRow.__table__)

NON_TERMINAL = tuple(sorted(ACTIVE_STATES))

# What an AttemptResult carries beyond its identity, column for column.
RESULT_FIELDS = (
    "status", "oom_kind", "error", "started_at", "finished_at", "wall_seconds",
    "time_to_first_step_seconds", "samples_per_second", "peak_gpu_memory_bytes",
    "total_gpu_memory_bytes", "gpu_memory_per_device", "peak_torch_allocated_bytes",
    "peak_torch_reserved_bytes", "peak_host_memory_bytes", "estimated_memory_bytes",
    "best_eval_loss", "best_epoch", "selection_loss", "eval_label_loss", "eval_rationale_loss",
    "exact_match", "json_valid_rate", "bleu", "chrf", "ter", "dsl_similarity",
    "end_to_end_samples_per_second", "epochs_completed", "stopped_epoch", "stop_reason",
    "trainable_parameters", "total_parameters",
    "baseline_eval_loss", "baseline_exact_match", "baseline_json_valid_rate",
)
# Known before the result (record_attempt writes them); a result without them keeps them.
KEPT_WHEN_MISSING = frozenset({"started_at", "estimated_memory_bytes"})
EPOCH_FIELDS = tuple(EpochRecord.model_fields)
# EpochRecord requires these; SQLite hands a stored NaN back as NULL, which reads back as NaN.
REQUIRED_EPOCH_FLOATS = frozenset(
    name for name, field in EpochRecord.model_fields.items() if field.annotation is float
)
# ...and these of every trained epoch (None only at the baseline, epoch 0, that trained nothing).
TRAINED_EPOCH_FLOATS = frozenset({"train_loss", "train_label_loss", "samples_per_second"})


def replaceable_states(status: TrialState) -> tuple[TrialState, ...]:
    """The stored states a write of `status` may overwrite (states only move forward)."""
    if status is TrialState.PENDING:
        return (TrialState.PENDING,)
    return NON_TERMINAL


def error_excerpt(error: str | None) -> str | None:
    """An error message fit for the `error` column: at most 4000 characters, no NUL bytes,
    no database password (`redact_secrets`: errors are shown in statuses, events, results).

    Keeps the end: a traceback's last lines name the exception. NULs are replaced because
    PostgreSQL refuses them in text, which would lose the whole result.
    """
    if error is None:
        return None
    error = redact_secrets(error.replace("\x00", "\ufffd"))
    if len(error) > ERROR_EXCERPT_CHARS:
        error = "\u2026" + error[-(ERROR_EXCERPT_CHARS - 1):]
    return error


def _insert(session: Session, table: sa.Table) -> sqlite.Insert | postgresql.Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        return sqlite.insert(table)
    if dialect == "postgresql":
        return postgresql.insert(table)
    # create_store_engine refuses other backends; an engine made elsewhere ends here.
    raise ValueError(f"the store supports SQLite and PostgreSQL, not {dialect!r}")


def _sweep_id_query(namespace: str, name: str) -> sa.ScalarSelect[int]:
    return (
        sa.select(SWEEPS.c.id)
        .where(SWEEPS.c.namespace == namespace, SWEEPS.c.name == name)
        .scalar_subquery()
    )


def _fresh(statement: sa.Select[Any]) -> sa.Select[Any]:
    # Upserts run as Core statements that bypass the identity map; reload what is cached.
    return statement.execution_options(populate_existing=True)


def _get_sweep(session: Session, namespace: str, name: str) -> SweepRow | None:
    statement = sa.select(SweepRow).where(SweepRow.namespace == namespace, SweepRow.name == name)
    return session.execute(_fresh(statement)).scalar_one_or_none()


def _get_trial(
    session: Session, sweep_id: int | sa.ScalarSelect[int], trial_id: str, attempt: int
) -> AttemptRow | None:
    statement = sa.select(AttemptRow).where(
        AttemptRow.sweep_id == sweep_id,
        AttemptRow.trial_id == trial_id,
        AttemptRow.attempt == attempt,
    )
    return session.execute(_fresh(statement)).unique().scalar_one_or_none()


def _require_trial(session: Session, key: AttemptKey) -> AttemptRow:
    row = _get_trial(session, _sweep_id_query(key.namespace, key.sweep), key.trial_id,
                     key.attempt)
    if row is None:
        where = f"{key.namespace}/{key.sweep}" if key.namespace else key.sweep
        raise LookupError(f"no attempt {key.attempt} of trial {key.trial_id} in sweep {where}; "
                          "record_attempt first")
    return row


# --- sweeps -------------------------------------------------------------------------------


def upsert_sweep(session: Session, sweep: Sweep) -> SweepRow:
    """Create the sweep or replace its spec (camelCase JSON, as users write it)."""
    spec = sweep.spec.model_dump(mode="json", by_alias=True)
    now = utcnow()
    insert = _insert(session, SWEEPS).values(
        namespace=sweep.namespace, name=sweep.name, spec=spec, created_at=now, updated_at=now
    )
    session.execute(
        insert.on_conflict_do_update(
            index_elements=[SWEEPS.c.namespace, SWEEPS.c.name],
            set_={"spec": insert.excluded.spec, "updated_at": now},
            # An unchanged spec leaves the row (and its updated_at) as it was.
            where=SWEEPS.c.spec != insert.excluded.spec,
        )
    )
    row = _get_sweep(session, sweep.namespace, sweep.name)
    assert row is not None  # just written, in this transaction
    return row


def ensure_sweep(session: Session, namespace: str, name: str) -> SweepRow:
    """The sweep's row, created with an empty spec when missing (a worker run standalone)."""
    row = _get_sweep(session, namespace, name)
    if row is not None:
        return row
    now = utcnow()
    insert = _insert(session, SWEEPS).values(
        namespace=namespace, name=name, spec={}, created_at=now, updated_at=now
    )
    # DO NOTHING: a concurrent creator may have won; its row is as good as ours.
    session.execute(insert.on_conflict_do_nothing(index_elements=["namespace", "name"]))
    row = _get_sweep(session, namespace, name)
    assert row is not None
    return row


def list_sweeps(session: Session) -> list[SweepRow]:
    statement = sa.select(SweepRow).order_by(SweepRow.namespace, SweepRow.name)
    return list(session.execute(_fresh(statement)).scalars())


# --- attempts -----------------------------------------------------------------------------


def record_attempt(
    session: Session,
    spec: AttemptSpec,
    *,
    status: TrialState,
    started_at: datetime | None = None,
    rayjob_name: str | None = None,
    estimated_memory_bytes: int | None = None,
) -> AttemptRow:
    """Create (or advance) the attempt's row as pending or running.

    Never moves the row back: pending after running stays running, and a terminal row is
    left alone entirely. The first known `started_at` is kept; `rayjob_name` and
    `estimated_memory_bytes` take the latest value given.
    """
    status = TrialState(status)
    if status.is_terminal:
        raise ValueError(
            f"record_attempt records pending or running attempts, not {status.value!r}; "
            "use record_result or mark_attempt for outcomes"
        )
    sweep_id = ensure_sweep(session, spec.namespace, spec.sweep).id
    now = utcnow()
    insert = _insert(session, TRIALS).values(
        sweep_id=sweep_id,
        **{name: getattr(spec, name) for name in IDENTITY_FIELDS},
        status=status,
        started_at=started_at,
        rayjob_name=rayjob_name,
        estimated_memory_bytes=estimated_memory_bytes,
        gpu_memory_per_device=[],
        epochs_completed=0,
        updated_at=now,
    )
    t, new = TRIALS.c, insert.excluded
    session.execute(
        insert.on_conflict_do_update(
            index_elements=[t.sweep_id, t.trial_id, t.attempt],
            set_={
                "status": sa.case(
                    (t.status.in_(replaceable_states(status)), new.status), else_=t.status
                ),
                "started_at": sa.func.coalesce(t.started_at, new.started_at),
                "rayjob_name": sa.func.coalesce(new.rayjob_name, t.rayjob_name),
                "estimated_memory_bytes": sa.func.coalesce(
                    new.estimated_memory_bytes, t.estimated_memory_bytes
                ),
                "updated_at": now,
            },
            where=t.status.in_(NON_TERMINAL),
        )
    )
    row = _get_trial(session, sweep_id, spec.trial_id, spec.attempt)
    assert row is not None
    return row


def _result_values(result: AttemptResult) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(result, name) for name in IDENTITY_FIELDS}
    values.update({name: getattr(result, name) for name in RESULT_FIELDS})
    values["error"] = error_excerpt(result.error)
    values["started_at"] = as_utc(result.started_at)
    values["finished_at"] = as_utc(result.finished_at)
    values["gpu_memory_per_device"] = list(result.gpu_memory_per_device)
    return values


def _same(stored: Any, wanted: Any) -> bool:
    if isinstance(wanted, float) and math.isnan(wanted):
        # SQLite stores NaN as NULL; PostgreSQL keeps it (and NaN != NaN).
        return stored is None or (isinstance(stored, float) and math.isnan(stored))
    return bool(stored == wanted)


def _differences(row: AttemptRow, values: Mapping[str, Any]) -> list[str]:
    """The fields whose stored value differs from what writing `values` would leave."""
    return [
        name
        for name, wanted in values.items()
        if not (wanted is None and name in KEPT_WHEN_MISSING)
        and not _same(getattr(row, name), wanted)
    ]


def record_result(session: Session, result: AttemptResult) -> AttemptRow:
    """Store an attempt's result (every field, and its epochs); returns the row as stored.

    A terminal result replaces a pending or running row. For a row that is already terminal,
    the first outcome stands: the same result again is a no-op, a different one is ignored.
    Compare the returned row's status with the result's to learn which happened.
    """
    sweep_id = ensure_sweep(session, result.namespace, result.sweep).id
    values = _result_values(result)
    insert = _insert(session, TRIALS).values(sweep_id=sweep_id, updated_at=utcnow(), **values)
    t, new = TRIALS.c, insert.excluded
    updates: dict[str, Any] = {
        name: sa.func.coalesce(new[name], t[name]) if name in KEPT_WHEN_MISSING else new[name]
        for name in values
        if name not in ("trial_id", "attempt")
    }
    updates["updated_at"] = new.updated_at
    session.execute(
        insert.on_conflict_do_update(
            index_elements=[t.sweep_id, t.trial_id, t.attempt],
            set_=updates,
            where=t.status.in_(replaceable_states(result.status)),
        )
    )
    row = _get_trial(session, sweep_id, result.trial_id, result.attempt)
    assert row is not None
    differences = _differences(row, values)
    if differences:
        log.warning(
            "ignored result %s of %s/%s trial %s attempt %d: the attempt is already %s "
            "(differs in %s)",
            result.status.value, result.namespace, result.sweep, result.trial_id,
            result.attempt, TrialState(row.status).value, ", ".join(differences),
        )
        return row
    # The row holds this result (written now, or identical before): its epochs belong to it.
    _upsert_epochs(session, row.id, result.epochs, overwrite_terminal=True)
    return row


def mark_attempt(
    session: Session,
    key: AttemptKey,
    status: TrialState,
    *,
    oom_kind: OOMKind | None = None,
    error: str | None = None,
    finished_at: datetime | None = None,
) -> AttemptRow:
    """Set an outcome a backend learned without a worker result (cancelled, host OOM, ...).

    Same rules as results: states only move forward and the first terminal write wins. A
    terminal mark without `finished_at` is stamped now. Raises LookupError for an attempt
    that was never recorded.
    """
    namespace, sweep, trial_id, attempt = key.namespace, key.sweep, key.trial_id, key.attempt
    status = TrialState(status)
    if oom_kind is not None and status is not TrialState.OOM:
        raise ValueError(f"oom_kind {oom_kind!r} given for status {status.value!r}")
    if finished_at is None and status.is_terminal:
        finished_at = utcnow()
    values: dict[str, Any] = {"status": status, "updated_at": utcnow()}
    if status.is_terminal:
        values.update(
            oom_kind=None if oom_kind is None else OOMKind(oom_kind),
            error=error_excerpt(error),
            finished_at=as_utc(finished_at),
        )
    elif error is not None:
        values["error"] = error_excerpt(error)
    session.execute(
        sa.update(TRIALS)
        .where(
            TRIALS.c.sweep_id == _sweep_id_query(namespace, sweep),
            TRIALS.c.trial_id == trial_id,
            TRIALS.c.attempt == attempt,
            TRIALS.c.status.in_(replaceable_states(status)),
        )
        .values(**values)
    )
    row = _require_trial(session, key)
    if row.status != status:
        log.info(
            "ignored %s for %s/%s trial %s attempt %d: the attempt is already %s",
            status.value, namespace, sweep, trial_id, attempt, TrialState(row.status).value,
        )
    return row


# --- epochs -------------------------------------------------------------------------------


def _epoch_values(trial_pk: int, epoch: EpochRecord) -> dict[str, Any]:
    return {"trial_pk": trial_pk, **{name: getattr(epoch, name) for name in EPOCH_FIELDS}}


def _upsert_epochs(
    session: Session, trial_pk: int, epochs: Sequence[EpochRecord], *, overwrite_terminal: bool
) -> None:
    if not epochs:
        return
    insert = _insert(session, EPOCHS).values([_epoch_values(trial_pk, e) for e in epochs])
    e = EPOCHS.c
    where = None
    if not overwrite_terminal:
        # Live epochs may fill gaps of a finished attempt but never rewrite its result's.
        where = sa.exists().where(TRIALS.c.id == e.trial_pk, TRIALS.c.status.in_(NON_TERMINAL))
    session.execute(
        insert.on_conflict_do_update(
            index_elements=[e.trial_pk, e.epoch],
            set_={name: insert.excluded[name] for name in EPOCH_FIELDS if name != "epoch"},
            where=where,
        )
    )


def record_epoch(session: Session, key: AttemptKey, epoch: EpochRecord) -> EpochRow:
    """Store one live epoch of a running attempt (idempotent); returns the stored row.

    Also advances the attempt's `epochs_completed`, so progress shows before the result.
    Raises LookupError for an attempt that was never recorded.
    """
    trial = _require_trial(session, key)
    _upsert_epochs(session, trial.id, [epoch], overwrite_terminal=False)
    session.execute(
        sa.update(TRIALS)
        .where(
            TRIALS.c.id == trial.id,
            TRIALS.c.status.in_(NON_TERMINAL),
            TRIALS.c.epochs_completed < epoch.epoch,
        )
        .values(epochs_completed=epoch.epoch, updated_at=utcnow())
    )
    statement = sa.select(EpochRow).where(
        EpochRow.trial_pk == trial.id, EpochRow.epoch == epoch.epoch
    )
    return session.execute(_fresh(statement)).scalar_one()


def epochs_of(session: Session, trial_pk: int) -> list[EpochRow]:
    statement = sa.select(EpochRow).where(EpochRow.trial_pk == trial_pk).order_by(EpochRow.epoch)
    return list(session.execute(_fresh(statement)).scalars())


# --- reading results ----------------------------------------------------------------------


def attempts(
    session: Session, namespace: str, sweep: str, *, with_epochs: bool = False
) -> list[AttemptRow]:
    """Every attempt of a sweep, ordered by (lane, model_index, attempt).

    Each row's joined sweep comes without its spec (loaded on first use): the reconciler
    reads this on every pass, and decoding the spec JSON once per attempt row was a fifth of a
    pass with 1,000 trials in flight (docs/benchmarks.md, "Controller memory and pass time").
    """
    statement = (
        sa.select(AttemptRow)
        .where(AttemptRow.sweep_id == _sweep_id_query(namespace, sweep))
        .order_by(AttemptRow.lane, AttemptRow.model_index, AttemptRow.attempt)
        .options(joinedload(AttemptRow.sweep, innerjoin=True).defer(SweepRow.spec))
    )
    if with_epochs:
        statement = statement.options(selectinload(AttemptRow.epochs))
    return list(session.execute(_fresh(statement)).unique().scalars())


def all_attempts(
    session: Session,
    namespace: str | None = None,
    sweep: str | None = None,
    *,
    with_epochs: bool = False,
) -> list[AttemptRow]:
    """Attempts of all sweeps, or of one namespace and/or sweep name, in a stable order (`ladder
    results`; `attempts` is the one-sweep query the backends use)."""
    statement = (
        sa.select(AttemptRow)
        .join(AttemptRow.sweep)
        .options(contains_eager(AttemptRow.sweep))
        .order_by(
            SweepRow.namespace, SweepRow.name, AttemptRow.lane, AttemptRow.model_index,
            AttemptRow.attempt,
        )
    )
    if namespace is not None:
        statement = statement.where(SweepRow.namespace == namespace)
    if sweep is not None:
        statement = statement.where(SweepRow.name == sweep)
    if with_epochs:
        statement = statement.options(selectinload(AttemptRow.epochs))
    return list(session.execute(_fresh(statement)).unique().scalars())


def _to_epoch(row: EpochRow) -> EpochRecord:
    values = {name: getattr(row, name) for name in EPOCH_FIELDS}
    required = REQUIRED_EPOCH_FLOATS | (TRAINED_EPOCH_FLOATS if row.epoch else frozenset())
    for name in required:
        if values[name] is None:
            values[name] = math.nan
    return EpochRecord(**values)


def to_result(row: AttemptRow, epochs: Iterable[EpochRow] | None = None) -> AttemptResult:
    """The AttemptResult a row stores; with its epochs when given or already loaded."""
    if epochs is None and "epochs" not in sa.inspect(row).unloaded:
        epochs = row.epochs
    fields = {name: getattr(row, name) for name in (*IDENTITY_FIELDS, *RESULT_FIELDS)}
    return AttemptResult(
        sweep=row.sweep.name,
        namespace=row.sweep.namespace,
        **fields,
        epochs=[_to_epoch(epoch) for epoch in sorted(epochs or (), key=lambda e: e.epoch)],
    )


# --- retrying writes ----------------------------------------------------------------------


def is_transient(error: BaseException) -> bool:
    """Whether retrying may help: a lost connection, a locked or briefly unavailable database.

    OperationalError covers refused connections, SQLite's "database is locked" and
    PostgreSQL's serialization failures and deadlocks; a DBAPIError flagged as a disconnect
    covers connections dropped mid-statement. Integrity and programming errors are final.
    """
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, OperationalError)


def save_with_retry(
    factory: sessionmaker[Session],
    fn: Callable[[Session], T],
    *,
    attempts: int = 6,
    backoff: float = 0.5,
    max_backoff: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `fn(session)` in a transaction of its own and commit, retrying transient failures.

    Waits `backoff`, then twice as long each time (capped at `max_backoff`), for at most
    `attempts` tries; the last failure propagates. Safe because every write here is an
    idempotent upsert: a commit whose acknowledgement was lost is simply written again.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts + 1):
        try:
            with factory.begin() as session:
                return fn(session)
        except DBAPIError as error:
            if attempt == attempts or not is_transient(error):
                raise
            delay = min(backoff * 2 ** (attempt - 1), max_backoff)
            log.warning(
                "store write failed (try %d of %d), retrying in %.1fs: %s",
                attempt, attempts, delay, str(error.orig).strip() or type(error).__name__,
            )
            sleep(delay)
    raise AssertionError("unreachable")
