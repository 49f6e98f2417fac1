"""Engines: URL resolution and redaction, SQLite connection settings, the open_store cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.store import (
    DB_URL_ENV,
    DEFAULT_DB_URL,
    create_store_engine,
    database_url,
    dispose_stores,
    open_store,
    redact_url,
    resolve_db_url,
)

pytestmark = pytest.mark.integration


class TestRedactUrl:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            pytest.param(
                "postgresql+psycopg://ladder:s3cr%40t@db.example:5432/ladder",
                "postgresql+psycopg://ladder:***@db.example:5432/ladder",
                id="password",
            ),
            pytest.param(
                "postgresql+psycopg://ladder@db:5432/ladder",
                "postgresql+psycopg://ladder@db:5432/ladder",
                id="no-password",
            ),
            pytest.param(  # SQLAlchemy sorts the query parameters
                "postgresql://ladder@db/ladder?sslmode=require&password=hunter2",
                "postgresql://ladder@db/ladder?password=***&sslmode=require",
                id="password-in-query",
            ),
            pytest.param("sqlite:///ladder.db", "sqlite:///ladder.db", id="sqlite-file"),
            pytest.param(
                "not a url://user:hunter2@host/x", "not a url://user:***@host/x", id="unparsable"
            ),
        ],
    )
    def test_hides_the_password(self, url: str, expected: str) -> None:
        assert redact_url(url) == expected
        assert "hunter2" not in redact_url(url)

    def test_accepts_url_objects(self) -> None:
        url = sa.make_url("postgresql+psycopg://u:hunter2@h/db")
        assert redact_url(url) == "postgresql+psycopg://u:***@h/db"

    def test_engine_repr_never_shows_the_password(self) -> None:
        engine = create_store_engine("postgresql+psycopg://u:hunter2@127.0.0.1:1/db")
        try:
            assert "hunter2" not in repr(engine)
            assert "hunter2" not in redact_url(engine.url)
        finally:
            engine.dispose()


class TestDatabaseUrl:
    def test_argument_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(DB_URL_ENV, "sqlite:///from-env.db")
        assert database_url("sqlite:///given.db") == "sqlite:///given.db"

    def test_environment_next(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(DB_URL_ENV, "sqlite:///from-env.db")
        assert database_url() == "sqlite:///from-env.db"

    def test_default_last(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(DB_URL_ENV, raising=False)
        assert database_url() == DEFAULT_DB_URL == "sqlite:///ladder.db"

    def test_resolution_order_and_absolute_sqlite(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        # The one resolution the CLI, the engine and the worker share.
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv(DB_URL_ENV, raising=False)
        assert resolve_db_url(None, fallback="sqlite:///trial.db") == (
            f"sqlite:///{tmp_path / 'trial.db'}")
        assert resolve_db_url(None, default=None) is None
        assert resolve_db_url(None) == f"sqlite:///{tmp_path / 'ladder.db'}"
        monkeypatch.setenv(DB_URL_ENV, "sqlite:///env.db")
        assert resolve_db_url(None, fallback="sqlite:///trial.db") == (
            f"sqlite:///{tmp_path / 'env.db'}")
        assert resolve_db_url("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
        assert resolve_db_url("sqlite:///:memory:") == "sqlite:///:memory:"
        pg = "postgresql+psycopg://u:p@h/db"
        assert resolve_db_url(pg) == pg
        assert resolve_db_url("sqlite:///rel.db", absolute=False) == "sqlite:///rel.db"

    def test_engine_uses_the_environment(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv(DB_URL_ENV, f"sqlite:///{tmp_path / 'env.db'}")
        engine = create_store_engine()
        try:
            assert engine.url.database == str(tmp_path / "env.db")
        finally:
            engine.dispose()


class TestSqliteConnections:
    @pytest.mark.parametrize(
        ("pragma", "expected"),
        [
            pytest.param("journal_mode", "wal", id="wal"),
            pytest.param("busy_timeout", 30_000, id="busy-timeout"),
            pytest.param("foreign_keys", 1, id="foreign-keys"),
        ],
    )
    def test_pragmas(self, tmp_path: Path, pragma: str, expected: object) -> None:
        engine = create_store_engine(f"sqlite:///{tmp_path / 'ladder.db'}")
        try:
            with engine.connect() as connection:
                assert connection.exec_driver_sql(f"PRAGMA {pragma}").scalar() == expected
        finally:
            engine.dispose()

    def test_postgres_engines_pre_ping(self) -> None:
        engine = create_store_engine("postgresql+psycopg://u@127.0.0.1:1/db")
        try:
            assert engine.pool._pre_ping
        finally:
            engine.dispose()


class TestOpenStore:
    def test_cached_per_url(self, store_url: str) -> None:
        first = open_store(store_url)
        assert open_store(store_url) is first
        dispose_stores()
        assert open_store(store_url) is not first

    def test_migrates(self, store_url: str) -> None:
        factory = open_store(store_url)
        with factory() as session:
            tables = set(sa.inspect(session.get_bind()).get_table_names())
        assert {"sweeps", "trials", "epochs", "alembic_version"} <= tables


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("mysql://ladder:pw@db/ladder", id="mysql"),
        pytest.param("mssql+pyodbc://ladder:pw@db/ladder", id="mssql"),
    ],
)
def test_other_databases_are_refused_at_open(url: str) -> None:
    """The upserts are written for SQLite and PostgreSQL: any other URL fails at once,
    naming the backend, instead of at the first write."""
    with pytest.raises(ValueError, match=r"supports SQLite and PostgreSQL.*not '(mysql|mssql)'"):
        create_store_engine(url)
