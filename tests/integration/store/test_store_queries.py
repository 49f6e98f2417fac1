"""Reading back: attempts in ladder order, results across sweeps, epochs, round trips."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.core.spec import Sweep
from orchestrator.core.worker_contract import AttemptResult, AttemptSpec, EpochRecord
from orchestrator.store import (
    all_attempts,
    attempts,
    epochs_of,
    list_sweeps,
    record_attempt,
    record_result,
    to_result,
    upsert_sweep,
)
from tests.integration.store.store_helpers import (
    T0,
    epoch,
    failed,
    make_sweep,
    succeeded,
    trial_specs,
)

pytestmark = pytest.mark.integration


class TestAttempts:
    def test_ordered_by_lane_model_and_attempt(self, session: Session, sweep: Sweep) -> None:
        upsert_sweep(session, sweep)
        specs = trial_specs(sweep) + trial_specs(sweep, attempt=2)[:1]
        for spec in reversed(specs):  # insertion order must not matter
            record_attempt(session, spec, status=TrialState.PENDING)
        rows = attempts(session, "", sweep.name)
        keys = [(r.lane, r.model_index, r.attempt) for r in rows]
        assert keys == sorted(keys)
        assert len(rows) == len(specs)

    def test_only_the_named_sweep(self, session: Session) -> None:
        for name in ("alpha", "beta"):
            record_attempt(session, trial_specs(make_sweep(name))[0], status=TrialState.PENDING)
        assert {r.sweep.name for r in attempts(session, "", "alpha")} == {"alpha"}
        assert attempts(session, "", "missing") == []

    def test_epochs_on_request(self, session: Session, spec: AttemptSpec) -> None:
        record_result(session, succeeded(spec))
        session.commit()
        session.expunge_all()
        (bare,) = attempts(session, "", spec.sweep)
        assert to_result(bare).epochs == []  # not loaded, so not guessed
        session.expunge_all()
        (loaded,) = attempts(session, "", spec.sweep, with_epochs=True)
        assert [e.epoch for e in to_result(loaded).epochs] == [1, 2, 3]


class TestResults:
    @pytest.fixture
    def stored(self, session: Session) -> Session:
        for namespace, name in (("", "alpha"), ("team-a", "alpha"), ("team-a", "beta")):
            sweep = make_sweep(name, namespace)
            upsert_sweep(session, sweep)
            for spec in trial_specs(sweep)[:2]:
                record_result(session, succeeded(spec))
        return session

    @pytest.mark.parametrize(
        ("namespace", "sweep", "expected"),
        [
            pytest.param(None, None, {("", "alpha"), ("team-a", "alpha"), ("team-a", "beta")},
                         id="all"),
            pytest.param("team-a", None, {("team-a", "alpha"), ("team-a", "beta")},
                         id="namespace"),
            pytest.param(None, "alpha", {("", "alpha"), ("team-a", "alpha")}, id="name"),
            pytest.param("", "alpha", {("", "alpha")}, id="both"),
            pytest.param("nowhere", None, set(), id="none"),
        ],
    )
    def test_filters(
        self, stored: Session, namespace: str | None, sweep: str | None,
        expected: set[tuple[str, str]],
    ) -> None:
        rows = all_attempts(stored, namespace, sweep)
        assert {(r.sweep.namespace, r.sweep.name) for r in rows} == expected
        assert len(rows) == 2 * len(expected)

    def test_stable_order(self, stored: Session) -> None:
        rows = all_attempts(stored)
        keys = [(r.sweep.namespace, r.sweep.name, r.lane, r.model_index, r.attempt) for r in rows]
        assert keys == sorted(keys)

    def test_list_sweeps(self, stored: Session) -> None:
        assert [(s.namespace, s.name) for s in list_sweeps(stored)] == [
            ("", "alpha"), ("team-a", "alpha"), ("team-a", "beta"),
        ]


class TestEpochsOf:
    def test_in_epoch_order(self, session: Session, spec: AttemptSpec) -> None:
        result = succeeded(spec, epoch_count=4)
        row = record_result(session, result)
        assert [e.epoch for e in epochs_of(session, row.id)] == [1, 2, 3, 4]
        assert epochs_of(session, row.id + 1000) == []


# Values within what the columns hold: BIGINT for bytes and parameters, INTEGER for counts.
BIG = st.none() | st.integers(min_value=0, max_value=2**63 - 1)
SMALL = st.integers(min_value=0, max_value=2**31 - 1)
REAL = st.floats(allow_nan=False)  # NaN has its own test; SQLite stores it as NULL
WHEN = st.none() | st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
# fixed_dictionaries, not st.builds: pydantic's signature names the camelCase aliases, so
# builds would fill those itself (NaN included) and ignore these strategies.
EPOCHS = st.lists(
    st.fixed_dictionaries(
        {
            "train_loss": REAL, "train_label_loss": REAL,
            "train_rationale_loss": st.none() | REAL, "eval_loss": REAL, "learning_rate": REAL,
            "samples_per_second": REAL, "wall_seconds": REAL,
            "peak_gpu_memory_bytes": BIG, "peak_host_memory_bytes": BIG,
        }
    ),
    max_size=3,
).map(lambda records: [EpochRecord(epoch=n, **r) for n, r in enumerate(records, 1)])
TRIAL_NUMBERS = itertools.count()
OUTCOMES = st.fixed_dictionaries(
    {
        "status": st.sampled_from(TrialState),
        "oom_kind": st.none() | st.sampled_from(OOMKind),
        "error": st.none() | st.text(max_size=300),
        "started_at": WHEN,
        "finished_at": WHEN,
        "wall_seconds": st.none() | REAL,
        "samples_per_second": st.none() | REAL,
        "peak_gpu_memory_bytes": BIG,
        "total_gpu_memory_bytes": BIG,
        "gpu_memory_per_device": st.lists(st.integers(0, 2**63 - 1), max_size=8),
        "peak_torch_reserved_bytes": BIG,
        "estimated_memory_bytes": BIG,
        "best_eval_loss": st.none() | REAL,
        "best_epoch": st.none() | SMALL,
        "exact_match": st.none() | REAL,
        "epochs_completed": SMALL,
        "total_parameters": BIG,
        "epochs": EPOCHS,
    }
)


class TestRoundTrip:
    @settings(
        max_examples=40, deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(outcome=OUTCOMES)
    def test_any_result_reads_back_as_written(
        self, factory: sessionmaker[Session], sweep: Sweep, outcome: dict[str, object]
    ) -> None:
        # A fresh trial id per example (they share one database): an attempt keeps its first
        # outcome, so reusing one would compare against an earlier example's result.
        spec = trial_specs(sweep)[0].model_copy(update={"trial_id": f"h{next(TRIAL_NUMBERS)}"})
        result = AttemptResult.for_trial(spec, **outcome)
        with factory.begin() as session:
            record_result(session, result)
        with factory() as session:
            (row,) = [r for r in attempts(session, "", sweep.name, with_epochs=True)
                      if r.trial_id == spec.trial_id]
            stored = to_result(row)
        expected = result.model_copy(update={"error": None if result.error is None else
                                             result.error.replace("\x00", "\ufffd")})
        assert stored == expected

    def test_a_complete_failure_round_trips(
        self, factory: sessionmaker[Session], spec: AttemptSpec
    ) -> None:
        result = failed(spec, TrialState.OOM, oom_kind=OOMKind.BUDGET, started_at=T0,
                        epochs=[epoch(1)], epochs_completed=1)
        with factory.begin() as session:
            record_result(session, result)
        with factory() as session:
            (row,) = attempts(session, "", spec.sweep, with_epochs=True)
            assert to_result(row) == result
