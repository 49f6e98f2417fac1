"""Idempotent writes: sweeps, attempts, results, epochs and marks, on SQLite and PostgreSQL.

The rules under test (orchestrator/store/repository.py): writes keyed by natural keys never
duplicate rows; states only move forward; the first terminal outcome wins; a finished
attempt's epochs are frozen.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.core.spec import Sweep
from orchestrator.core.worker_contract import AttemptResult, AttemptSpec
from orchestrator.store import (
    AttemptRow,
    EpochRow,
    SweepRow,
    ensure_sweep,
    epochs_of,
    list_sweeps,
    mark_attempt,
    record_attempt,
    record_epoch,
    record_result,
    to_result,
    upsert_sweep,
)
from tests.integration.store.store_helpers import (
    T0,
    epoch,
    failed,
    make_sweep,
    snapshot,
    succeeded,
    trial_specs,
)

pytestmark = pytest.mark.integration

TERMINAL = [s for s in TrialState if s.is_terminal]
NON_TERMINAL = [s for s in TrialState if not s.is_terminal]


def outcome(spec: AttemptSpec, status: TrialState) -> AttemptResult:
    return succeeded(spec) if status is TrialState.SUCCEEDED else failed(spec, status)


def count(session: Session, model: type[object]) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(model)) or 0


def write(factory: sessionmaker[Session], result: AttemptResult) -> AttemptRow:
    """Record a result in a transaction of its own, as a worker does."""
    with factory.begin() as session:
        return record_result(session, result)


class TestSweeps:
    def test_upsert_stores_the_spec_as_users_write_it(
        self, session: Session, sweep: Sweep
    ) -> None:
        row = upsert_sweep(session, sweep)
        assert (row.namespace, row.name) == ("", "paper-grid")
        assert row.spec == sweep.spec.model_dump(mode="json", by_alias=True)
        assert "learningRate" in row.spec["training"]

    def test_upsert_twice_leaves_the_same_row(
        self, factory: sessionmaker[Session], sweep: Sweep
    ) -> None:
        with factory.begin() as session:
            upsert_sweep(session, sweep)
        with factory() as session:
            before = snapshot(session)
        with factory.begin() as session:
            upsert_sweep(session, sweep)
        with factory() as session:
            assert snapshot(session) == before

    def test_upsert_replaces_a_changed_spec(self, session: Session, sweep: Sweep) -> None:
        first = upsert_sweep(session, sweep)
        changed = make_sweep(parallelism=4)
        second = upsert_sweep(session, changed)
        assert second.id == first.id
        assert second.spec["parallelism"] == 4
        assert count(session, SweepRow) == 1

    def test_namespaces_keep_sweeps_apart(self, session: Session) -> None:
        upsert_sweep(session, make_sweep(namespace=""))
        upsert_sweep(session, make_sweep(namespace="team-a"))
        assert [(s.namespace, s.name) for s in list_sweeps(session)] == [
            ("", "paper-grid"),
            ("team-a", "paper-grid"),
        ]

    def test_ensure_creates_an_empty_sweep_once(self, session: Session, sweep: Sweep) -> None:
        created = ensure_sweep(session, "", "standalone")
        assert created.spec == {}
        assert ensure_sweep(session, "", "standalone").id == created.id
        assert count(session, SweepRow) == 1

    def test_ensure_keeps_an_existing_spec(self, session: Session, sweep: Sweep) -> None:
        upsert_sweep(session, sweep)
        assert ensure_sweep(session, "", sweep.name).spec != {}


class TestRecordAttempt:
    def test_creates_the_attempt_from_its_spec(self, session: Session, spec: AttemptSpec) -> None:
        row = record_attempt(session, spec, status=TrialState.PENDING, estimated_memory_bytes=2**36)
        assert row.status is TrialState.PENDING
        assert (row.trial_id, row.attempt, row.lane, row.model) == (
            spec.trial_id, spec.attempt, spec.lane, spec.model
        )
        assert (row.method, row.rank, row.alpha, row.dss_alpha, row.seed) == (
            spec.method, spec.rank, spec.alpha, spec.dss_alpha, spec.seed
        )
        assert row.estimated_memory_bytes == 2**36
        assert row.sweep.name == spec.sweep
        assert row.gpu_memory_per_device == []

    def test_twice_leaves_one_row(self, factory: sessionmaker[Session], spec: AttemptSpec) -> None:
        for _ in range(2):
            with factory.begin() as session:
                record_attempt(session, spec, status=TrialState.RUNNING, started_at=T0)
        with factory() as session:
            assert count(session, AttemptRow) == 1

    @pytest.mark.parametrize(
        ("first", "then", "expected"),
        [
            pytest.param("pending", "running", "running", id="pending-then-running"),
            pytest.param("running", "pending", "running", id="running-stays-running"),
            pytest.param("pending", "pending", "pending", id="pending-again"),
            pytest.param("running", "running", "running", id="running-again"),
        ],
    )
    def test_states_only_move_forward(
        self, session: Session, spec: AttemptSpec, first: str, then: str, expected: str
    ) -> None:
        record_attempt(session, spec, status=TrialState(first))
        row = record_attempt(session, spec, status=TrialState(then))
        assert row.status is TrialState(expected)

    @pytest.mark.parametrize("terminal", TERMINAL, ids=str)
    def test_terminal_never_back_to_running(
        self, factory: sessionmaker[Session], spec: AttemptSpec, terminal: TrialState
    ) -> None:
        write(factory, outcome(spec, terminal))
        with factory() as session:
            before = snapshot(session)
        with factory.begin() as session:
            row = record_attempt(
                session, spec, status=TrialState.RUNNING, rayjob_name="late", started_at=T0
            )
            assert row.status is terminal
        with factory() as session:
            assert snapshot(session) == before

    @pytest.mark.parametrize("terminal", TERMINAL, ids=str)
    def test_refuses_terminal_states(
        self, session: Session, spec: AttemptSpec, terminal: TrialState
    ) -> None:
        with pytest.raises(ValueError, match="record_result or mark_attempt"):
            record_attempt(session, spec, status=terminal)

    def test_keeps_the_first_start_and_the_latest_names(
        self, session: Session, spec: AttemptSpec
    ) -> None:
        record_attempt(session, spec, status=TrialState.PENDING, rayjob_name="job-a")
        record_attempt(session, spec, status=TrialState.RUNNING, started_at=T0)
        row = record_attempt(
            session, spec, status=TrialState.RUNNING, started_at=T0 + timedelta(hours=1),
            rayjob_name="job-b", estimated_memory_bytes=123,
        )
        assert row.started_at == T0
        assert (row.rayjob_name, row.estimated_memory_bytes) == ("job-b", 123)
        row = record_attempt(session, spec, status=TrialState.RUNNING)
        assert (row.rayjob_name, row.estimated_memory_bytes) == ("job-b", 123)

    def test_attempts_are_separate_rows(self, session: Session, sweep: Sweep) -> None:
        first, second = trial_specs(sweep, attempt=1)[0], trial_specs(sweep, attempt=2)[0]
        record_attempt(session, first, status=TrialState.RUNNING)
        record_attempt(session, second, status=TrialState.PENDING)
        assert count(session, AttemptRow) == 2


class TestRecordResult:
    @pytest.mark.parametrize("status", TERMINAL, ids=str)
    def test_round_trips_every_field(
        self, factory: sessionmaker[Session], spec: AttemptSpec, status: TrialState
    ) -> None:
        result = outcome(spec, status)
        write(factory, result)
        with factory() as session:
            row = session.execute(sa.select(AttemptRow)).unique().scalar_one()
            assert to_result(row, epochs_of(session, row.id)) == result

    @pytest.mark.parametrize("status", TERMINAL, ids=str)
    def test_same_result_twice_leaves_the_same_rows(
        self, factory: sessionmaker[Session], spec: AttemptSpec, status: TrialState,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        result = outcome(spec, status)
        write(factory, result)
        with factory() as session:
            before = snapshot(session)
        with caplog.at_level(logging.WARNING, logger="orchestrator.store"):
            row = write(factory, result)
        assert row.status is status
        assert not caplog.records, "an identical result is not a conflict"
        with factory() as session:
            assert snapshot(session) == before

    @pytest.mark.parametrize(
        ("first", "second"),
        [
            pytest.param(TrialState.SUCCEEDED, TrialState.FAILED, id="succeeded-then-failed"),
            pytest.param(TrialState.OOM, TrialState.SUCCEEDED, id="oom-then-succeeded"),
            pytest.param(TrialState.FAILED, TrialState.OOM, id="failed-then-oom"),
            pytest.param(TrialState.CANCELLED, TrialState.SUCCEEDED, id="cancelled-then-succeeded"),
            pytest.param(TrialState.SKIPPED, TrialState.FAILED, id="skipped-then-failed"),
        ],
    )
    def test_first_terminal_result_wins(
        self, factory: sessionmaker[Session], spec: AttemptSpec, first: TrialState,
        second: TrialState, caplog: pytest.LogCaptureFixture,
    ) -> None:
        write(factory, outcome(spec, first))
        with factory() as session:
            before = snapshot(session)
        with caplog.at_level(logging.WARNING, logger="orchestrator.store"):
            row = write(factory, outcome(spec, second))
        assert row.status is first
        assert "ignored result" in caplog.text
        with factory() as session:
            assert snapshot(session) == before

    def test_a_different_result_with_the_same_status_is_ignored(
        self, factory: sessionmaker[Session], spec: AttemptSpec
    ) -> None:
        write(factory, succeeded(spec, epoch_count=3))
        row = write(factory, succeeded(spec, epoch_count=2, exact_match=0.0))
        assert (row.exact_match, row.epochs_completed) == (0.625, 3)
        with factory() as session:
            assert [e.epoch for e in epochs_of(session, row.id)] == [1, 2, 3]

    def test_a_running_result_never_reopens_a_terminal_row(
        self, factory: sessionmaker[Session], spec: AttemptSpec
    ) -> None:
        write(factory, failed(spec, TrialState.FAILED))
        row = write(factory, AttemptResult.for_trial(spec, status=TrialState.RUNNING))
        assert row.status is TrialState.FAILED

    def test_terminal_result_replaces_a_running_attempt(
        self, factory: sessionmaker[Session], spec: AttemptSpec
    ) -> None:
        with factory.begin() as session:
            record_attempt(
                session, spec, status=TrialState.RUNNING, started_at=T0 - timedelta(minutes=1),
                rayjob_name="paper-grid-abc-1", estimated_memory_bytes=2**30,
            )
        # A result from a backend (no worker output): no start time, no estimate.
        result = failed(spec, TrialState.OOM, oom_kind=OOMKind.HOST, started_at=None)
        row = write(factory, result)
        assert (row.status, row.oom_kind) == (TrialState.OOM, OOMKind.HOST)
        # Known before the result, so kept; the result's own fields are all written.
        assert row.started_at == T0 - timedelta(minutes=1)
        assert row.estimated_memory_bytes == 2**30
        assert row.rayjob_name == "paper-grid-abc-1"
        assert row.finished_at == result.finished_at
        # And a retried write of the same result is still a no-op, not a conflict.
        with factory() as session:
            before = snapshot(session)
        write(factory, result)
        with factory() as session:
            assert snapshot(session) == before

    def test_creates_a_missing_sweep(
        self, factory: sessionmaker[Session], spec: AttemptSpec
    ) -> None:
        write(factory, succeeded(spec))
        with factory() as session:
            (row,) = list_sweeps(session)
            assert (row.name, row.spec) == (spec.sweep, {})

    def test_error_excerpt_is_bounded_and_storable(
        self, factory: sessionmaker[Session], spec: AttemptSpec
    ) -> None:
        error = "Traceback\x00 (most recent call last):\n" + "x" * 10_000 + "\nMemoryError"
        row = write(factory, failed(spec, TrialState.FAILED, error=error))
        assert row.error is not None
        assert len(row.error) == 4000
        assert row.error.endswith("\nMemoryError")
        assert "\x00" not in row.error

    def test_naive_timestamps_are_utc(
        self, factory: sessionmaker[Session], spec: AttemptSpec
    ) -> None:
        naive = datetime(2025, 6, 1, 12, 0, 0, 123456)
        row = write(factory, succeeded(spec, started_at=naive))
        assert row.started_at == naive.replace(tzinfo=UTC)
        assert row.started_at.tzinfo is not None

    def test_not_a_number_survives(self, factory: sessionmaker[Session], spec: AttemptSpec) -> None:
        # A diverged run: NaN losses must not cost the result (SQLite stores NaN as NULL).
        nan = math.nan
        result = succeeded(
            spec, epoch_count=1, best_eval_loss=nan,
            epochs=[epoch(1, train_loss=nan, eval_loss=nan)],
        )
        write(factory, result)
        with factory() as session:
            row = session.execute(sa.select(AttemptRow)).unique().scalar_one()
            stored = to_result(row, epochs_of(session, row.id))
        assert stored.best_eval_loss is None or math.isnan(stored.best_eval_loss)
        assert math.isnan(stored.epochs[0].train_loss)
        assert math.isnan(stored.epochs[0].eval_loss)
        assert stored.epochs[0].train_label_loss == result.epochs[0].train_label_loss


class TestRecordEpoch:
    @pytest.fixture
    def running(self, factory: sessionmaker[Session], spec: AttemptSpec) -> AttemptSpec:
        with factory.begin() as session:
            record_attempt(session, spec, status=TrialState.RUNNING, started_at=T0)
        return spec

    def live(self, factory: sessionmaker[Session], spec: AttemptSpec, number: int,
             **fields: object) -> EpochRow:
        with factory.begin() as session:
            return record_epoch(session, spec.key, epoch(number, **fields))

    def test_same_epoch_twice_is_one_row(
        self, factory: sessionmaker[Session], running: AttemptSpec
    ) -> None:
        self.live(factory, running, 1)
        with factory() as session:
            before = snapshot(session)
        self.live(factory, running, 1)
        with factory() as session:
            assert snapshot(session) == before
            assert count(session, EpochRow) == 1

    def test_updates_while_running_and_advances_progress(
        self, factory: sessionmaker[Session], running: AttemptSpec
    ) -> None:
        self.live(factory, running, 1, eval_loss=9.0)
        self.live(factory, running, 2)
        row = self.live(factory, running, 1, eval_loss=8.0)
        assert row.eval_loss == 8.0
        with factory() as session:
            trial = session.execute(sa.select(AttemptRow)).unique().scalar_one()
            assert trial.epochs_completed == 2  # epoch 1 again never lowers it
            assert [e.epoch for e in epochs_of(session, trial.id)] == [1, 2]

    def test_result_epochs_replace_live_ones(
        self, factory: sessionmaker[Session], running: AttemptSpec
    ) -> None:
        self.live(factory, running, 1, eval_loss=9.0)
        result = succeeded(running, epoch_count=2)
        row = write(factory, result)
        with factory() as session:
            assert [(e.epoch, e.eval_loss) for e in epochs_of(session, row.id)] == [
                (e.epoch, e.eval_loss) for e in result.epochs
            ]

    def test_frozen_once_terminal(
        self, factory: sessionmaker[Session], running: AttemptSpec
    ) -> None:
        result = succeeded(running, epoch_count=2)
        write(factory, result)
        row = self.live(factory, running, 1, eval_loss=123.0)
        assert row.eval_loss == result.epochs[0].eval_loss
        # A gap may still be filled (a live write that arrives after the result).
        assert self.live(factory, running, 3).epoch == 3
        with factory() as session:
            trial = session.execute(sa.select(AttemptRow)).unique().scalar_one()
            assert trial.epochs_completed == 2  # the result's count stands

    def test_unknown_attempt(self, factory: sessionmaker[Session], spec: AttemptSpec) -> None:
        with pytest.raises(LookupError, match="record_attempt first"):
            self.live(factory, spec, 1)


class TestMarkAttempt:
    @pytest.fixture
    def running(self, factory: sessionmaker[Session], spec: AttemptSpec) -> AttemptSpec:
        with factory.begin() as session:
            record_attempt(session, spec, status=TrialState.RUNNING, started_at=T0)
        return spec

    def mark(self, factory: sessionmaker[Session], spec: AttemptSpec, status: TrialState,
             **fields: object) -> AttemptRow:
        with factory.begin() as session:
            return mark_attempt(
                session, spec.key, status,
                **fields,  # type: ignore[arg-type]
            )

    def test_cancel_stamps_the_finish(
        self, factory: sessionmaker[Session], running: AttemptSpec
    ) -> None:
        before = datetime.now(UTC)
        row = self.mark(factory, running, TrialState.CANCELLED, error="cancelled by user")
        assert row.status is TrialState.CANCELLED
        assert row.error == "cancelled by user"
        assert row.finished_at is not None and row.finished_at >= before - timedelta(seconds=1)

    def test_host_oom(self, factory: sessionmaker[Session], running: AttemptSpec) -> None:
        finished = T0 + timedelta(minutes=2)
        row = self.mark(
            factory, running, TrialState.OOM, oom_kind=OOMKind.HOST, finished_at=finished
        )
        assert (row.status, row.oom_kind, row.finished_at) == (
            TrialState.OOM, OOMKind.HOST, finished
        )

    @pytest.mark.parametrize("terminal", TERMINAL, ids=str)
    def test_first_terminal_wins_over_a_mark(
        self, factory: sessionmaker[Session], running: AttemptSpec, terminal: TrialState
    ) -> None:
        write(factory, outcome(running, terminal))
        with factory() as session:
            before = snapshot(session)
        mark = TrialState.FAILED if terminal is TrialState.CANCELLED else TrialState.CANCELLED
        assert self.mark(factory, running, mark).status is terminal
        assert self.mark(factory, running, TrialState.RUNNING).status is terminal
        with factory() as session:
            assert snapshot(session) == before

    def test_a_mark_wins_over_a_later_result(
        self, factory: sessionmaker[Session], running: AttemptSpec
    ) -> None:
        self.mark(factory, running, TrialState.CANCELLED)
        assert write(factory, succeeded(running)).status is TrialState.CANCELLED

    def test_marking_twice_is_a_no_op(
        self, factory: sessionmaker[Session], running: AttemptSpec
    ) -> None:
        self.mark(factory, running, TrialState.OOM, oom_kind=OOMKind.HOST, finished_at=T0)
        with factory() as session:
            before = snapshot(session)
        self.mark(factory, running, TrialState.OOM, oom_kind=OOMKind.HOST, finished_at=T0)
        with factory() as session:
            assert snapshot(session) == before

    def test_pending_to_running(self, factory: sessionmaker[Session], spec: AttemptSpec) -> None:
        with factory.begin() as session:
            record_attempt(session, spec, status=TrialState.PENDING)
        assert self.mark(factory, spec, TrialState.RUNNING).status is TrialState.RUNNING
        assert self.mark(factory, spec, TrialState.PENDING).status is TrialState.RUNNING

    def test_unknown_attempt(self, factory: sessionmaker[Session], spec: AttemptSpec) -> None:
        with pytest.raises(LookupError):
            self.mark(factory, spec, TrialState.CANCELLED)

    def test_oom_kind_only_with_oom(
        self, factory: sessionmaker[Session], running: AttemptSpec
    ) -> None:
        with pytest.raises(ValueError, match="oom_kind"):
            self.mark(factory, running, TrialState.FAILED, oom_kind=OOMKind.GPU)


class TestEnumColumns:
    @pytest.mark.parametrize("status", list(TrialState), ids=str)
    def test_every_state_is_storable(
        self, session: Session, spec: AttemptSpec, status: TrialState
    ) -> None:
        # Guards the CHECK constraint in the migration against a state added to the enum.
        row = record_result(session, AttemptResult.for_trial(spec, status=status))
        assert row.status is status

    @pytest.mark.parametrize("kind", list(OOMKind), ids=str)
    def test_every_oom_kind_is_storable(
        self, session: Session, spec: AttemptSpec, kind: OOMKind
    ) -> None:
        row = record_result(session, failed(spec, TrialState.OOM, oom_kind=kind))
        assert row.oom_kind is kind

    def test_every_method_is_storable(self, session: Session) -> None:
        sweep = make_sweep(methods=["full", "lora", "qlora"])
        methods = set()
        for spec in trial_specs(sweep):
            methods.add(record_attempt(session, spec, status=TrialState.PENDING).method)
        assert methods == {"full", "lora", "qlora"}

    def test_unknown_values_are_refused(self, session: Session, spec: AttemptSpec) -> None:
        row = record_attempt(session, spec, status=TrialState.PENDING)
        session.commit()
        # By the column type, before SQL is sent...
        with pytest.raises(StatementError):
            session.execute(sa.update(AttemptRow).values(status="paused"))
        session.rollback()
        # ...and by the database's CHECK constraint for writers that bypass the models.
        with pytest.raises(IntegrityError):
            session.execute(
                sa.text("UPDATE trials SET status = 'paused' WHERE id = :id"), {"id": row.id}
            )
        session.rollback()

    def test_deleting_a_sweep_deletes_its_attempts_and_epochs(
        self, factory: sessionmaker[Session], spec: AttemptSpec
    ) -> None:
        write(factory, succeeded(spec))
        with factory.begin() as session:
            session.execute(sa.delete(SweepRow))
        with factory() as session:
            assert (count(session, AttemptRow), count(session, EpochRow)) == (0, 0)
