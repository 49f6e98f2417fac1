"""save_with_retry: transient failures are retried with backoff, others and the last are raised."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.core.lifecycle import TrialState
from orchestrator.core.worker_contract import AttemptResult, AttemptSpec
from orchestrator.store import AttemptRow, is_transient, record_result, save_with_retry
from tests.integration.store.store_helpers import succeeded

pytestmark = pytest.mark.integration


def unavailable() -> OperationalError:
    return OperationalError("INSERT INTO trials ...", {}, Exception("server closed the connection"))


class FailingFirst:
    """Raises `failures` transient errors after doing its write, then succeeds."""

    def __init__(self, result: AttemptResult, failures: int, error: Exception | None = None):
        self.result = result
        self.failures = failures
        self.error = error or unavailable()
        self.calls = 0

    def __call__(self, session: Session) -> AttemptRow:
        self.calls += 1
        row = record_result(session, self.result)
        if self.calls <= self.failures:
            # After the write: the transaction must roll back and the retry write it again.
            raise self.error
        return row


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def stored(factory: sessionmaker[Session]) -> list[AttemptRow]:
    with factory() as session:
        return list(session.execute(sa.select(AttemptRow)).unique().scalars())


class TestRetries:
    @pytest.mark.parametrize(
        "failures", [pytest.param(0, id="no-failure"), pytest.param(1, id="one-failure"),
                     pytest.param(3, id="three-failures")]
    )
    def test_transient_failures_are_retried(
        self, factory: sessionmaker[Session], spec: AttemptSpec, failures: int
    ) -> None:
        sleeps = Sleeps()
        fn = FailingFirst(succeeded(spec), failures)
        row = save_with_retry(factory, fn, attempts=5, backoff=0.25, sleep=sleeps)
        assert row.status is TrialState.SUCCEEDED
        assert fn.calls == failures + 1
        assert sleeps == [0.25 * 2**n for n in range(failures)]
        assert len(stored(factory)) == 1  # committed once; rolled-back tries left nothing

    def test_gives_up_after_the_last_attempt(
        self, factory: sessionmaker[Session], spec: AttemptSpec
    ) -> None:
        sleeps = Sleeps()
        fn = FailingFirst(succeeded(spec), failures=10)
        with pytest.raises(OperationalError):
            save_with_retry(factory, fn, attempts=3, backoff=1.0, sleep=sleeps)
        assert fn.calls == 3
        assert sleeps == [1.0, 2.0]
        assert stored(factory) == []  # every try rolled back

    def test_backoff_is_capped(self, factory: sessionmaker[Session], spec: AttemptSpec) -> None:
        sleeps = Sleeps()
        fn = FailingFirst(succeeded(spec), failures=5)
        save_with_retry(factory, fn, attempts=6, backoff=1.0, max_backoff=5.0, sleep=sleeps)
        assert sleeps == [1.0, 2.0, 4.0, 5.0, 5.0]

    def test_disconnects_are_retried(
        self, factory: sessionmaker[Session], spec: AttemptSpec
    ) -> None:
        dropped = InterfaceError("SELECT 1", {}, Exception("connection lost"))
        dropped.connection_invalidated = True
        fn = FailingFirst(succeeded(spec), failures=1, error=dropped)
        save_with_retry(factory, fn, attempts=2, backoff=0, sleep=Sleeps())
        assert fn.calls == 2

    @pytest.mark.parametrize(
        "error",
        [
            pytest.param(IntegrityError("INSERT", {}, Exception("duplicate")), id="integrity"),
            pytest.param(InterfaceError("SELECT", {}, Exception("bad parameter")), id="interface"),
            pytest.param(ValueError("a bug"), id="not-a-database-error"),
        ],
    )
    def test_other_errors_are_not_retried(
        self, factory: sessionmaker[Session], spec: AttemptSpec, error: Exception
    ) -> None:
        fn = FailingFirst(succeeded(spec), failures=1, error=error)
        with pytest.raises(type(error)):
            save_with_retry(factory, fn, attempts=5, backoff=0, sleep=Sleeps())
        assert fn.calls == 1

    def test_refuses_zero_attempts(self, factory: sessionmaker[Session]) -> None:
        with pytest.raises(ValueError, match="attempts"):
            save_with_retry(factory, lambda session: None, attempts=0)

    def test_a_real_outage_is_retried(self) -> None:
        """The database itself fails (not an injected error): a connection that cannot open."""
        broken = sessionmaker(bind=sa.create_engine("sqlite:////nonexistent-dir/x/ladder.db"))
        calls: list[int] = []

        def fn(session: Session) -> None:
            calls.append(1)
            session.execute(sa.text("SELECT 1"))

        with pytest.raises(OperationalError):
            save_with_retry(broken, fn, attempts=3, backoff=0, sleep=Sleeps())
        assert len(calls) == 3


    def test_killed_connections_are_replaced(
        self, factory: sessionmaker[Session], spec: AttemptSpec, store_url: str
    ) -> None:
        """A database restart kills pooled connections; the next write must not notice."""
        if not store_url.startswith("postgresql"):
            pytest.skip("server-side connection kill is a PostgreSQL scenario")
        with factory.begin() as session:
            record_result(session, succeeded(spec))
        killer = sa.create_engine(store_url)
        try:
            with killer.connect() as connection:
                killed = connection.execute(sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )).scalar()
        finally:
            killer.dispose()
        assert killed, "the store's pooled connection should have been there to kill"
        row = save_with_retry(factory, lambda s: record_result(s, succeeded(spec)), backoff=0)
        assert row.status is TrialState.SUCCEEDED


class TestIsTransient:
    @pytest.mark.parametrize(
        ("error", "transient"),
        [
            pytest.param(unavailable(), True, id="operational"),
            pytest.param(IntegrityError("x", {}, Exception()), False, id="integrity"),
            pytest.param(ValueError(), False, id="other"),
        ],
    )
    def test_classification(self, error: BaseException, transient: bool) -> None:
        assert is_transient(error) is transient
