"""Engines, migrations and session factories for the store.

SQLite (the workstation default) and PostgreSQL (clusters) are both first-class. Every
process that touches the store calls `open_store` (or `migrate`) first; migrating is
idempotent and safe to run from several processes at once, so a controller, a local runner
and workers started together never race each other into a half-created schema.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
import traceback
from pathlib import Path
from typing import Any, overload

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.core.names import DB_URL_ENV, DEFAULT_DB_URL

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Key of the PostgreSQL advisory lock that serializes migrations across processes. Any fixed
# bigint works; an arbitrary-looking one avoids colliding with other applications' keys.
MIGRATION_LOCK_KEY = 0x2F1C_5B0E_8D47_A3E1


@overload
def resolve_db_url(
    explicit: str | None = None, *, fallback: str | None = None, default: str = ...,
    absolute: bool = True,
) -> str: ...
@overload
def resolve_db_url(
    explicit: str | None = None, *, fallback: str | None = None, default: None,
    absolute: bool = True,
) -> str | None: ...
def resolve_db_url(
    explicit: str | None = None,
    *,
    fallback: str | None = None,
    default: str | None = DEFAULT_DB_URL,
    absolute: bool = True,
) -> str | None:
    """The store URL, resolved the one way every part of Ladder resolves it.

    `explicit` (a `--db` option, an argument), else $LADDER_DB_URL, else `fallback` (a
    trial's `dbUrl`), else `default` (`sqlite:///ladder.db`; None: no store). With
    `absolute`, a relative SQLite path is made absolute against this process's working
    directory: trials run in other processes (Ray jobs, Ray Train workers) with working
    directories of their own, where the same relative path names another file.
    """
    url = explicit or os.environ.get(DB_URL_ENV) or fallback or default
    if url is None or not absolute or not url.startswith("sqlite"):
        return url
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return url  # not a URL: opening the store names the problem
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return url
    if Path(database).is_absolute():
        return url
    return parsed.set(database=str(Path(database).resolve())).render_as_string(
        hide_password=False
    )


def database_url(url: str | URL | None = None) -> str:
    """The store URL: the argument, else $LADDER_DB_URL, else `sqlite:///ladder.db` (as given:
    a relative SQLite path stays relative; `resolve_db_url` makes it absolute)."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=False)
    return resolve_db_url(url, absolute=False)


# A URL's `user:PASSWORD@` ends at the `@` followed by a host and then the URL's end, a `/`,
# `?` or `#`: so a password with `@` in it (written unencoded, e.g. u:p@ss@host/db) is
# redacted whole, never cut at its first `@`. A string with a scheme is matched after `://`
# only (so `sqlite:///a:b@c.db` has no password); one without (`u:pw@host/db`) from its start.
_USERINFO_END = r"(?P<tail>@)(?=[^@/?#\s'\"]*(?:[/?#\s'\",;)]|$))"
_PASSWORD_IN_NETLOC = re.compile(
    r"(?P<head>(?:^(?![A-Za-z][A-Za-z0-9+.-]*://)|://)[^:/@?#\s]*:)[^\s]*?" + _USERINFO_END
)
_PASSWORD_IN_QUERY = re.compile(r"(?P<head>[?&]password=)[^&#]*", re.IGNORECASE)
# In free text (an error message, a traceback, a KubeRay status): a URL's `user:PASSWORD@`,
# and libpq's `password=...` (a DSN's key=value form, a URL's query), quoted or not.
_PASSWORD_IN_TEXT_URL = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@?#'\"]*:)[^\s'\"]*?" + _USERINFO_END
)
_PASSWORD_IN_TEXT_PARAM = re.compile(
    r"(?P<head>\bpassword\s*=\s*)(?:'[^']*'|\"[^\"]*\"|[^\s&#'\",;)]+)", re.IGNORECASE
)


def password_has_at(url: str) -> bool:
    """True when the URL's password holds an unencoded `@` (SQLAlchemy and libpq would cut it
    there and take the rest of it for the host name, which error messages then quote)."""
    match = _PASSWORD_IN_NETLOC.search(url)
    return match is not None and "@" in url[match.end("head"):match.start("tail")]


def redact_url(url: str | URL) -> str:
    """The URL with its password shown as `***`: the only form a URL may be logged or printed."""
    if isinstance(url, URL):
        url = url.render_as_string(hide_password=False)
    try:
        if password_has_at(url):
            raise ValueError("ambiguous: parsing would cut the password at its first '@'")
        rendered = make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Not a SQLAlchemy URL (a typo, a DSN, a bad port): still never echo a password back.
        rendered = _PASSWORD_IN_NETLOC.sub(r"\g<head>***\g<tail>", url)
    # libpq also accepts the password as a query parameter.
    return redact_secrets(_PASSWORD_IN_QUERY.sub(r"\g<head>***", rendered))


def redact_secrets(text: str) -> str:
    """Free text with every database password in it shown as `***`.

    Error messages travel from a worker to the store, and from there into a Sweep's status,
    its Kubernetes events, the controller's logs and `ladder results`; a driver's message or a
    traceback may quote the URL it was given. The store writes errors through this (see
    `repository.error_excerpt`), and so does the controller for text it did not read from it.
    """
    text = _PASSWORD_IN_TEXT_URL.sub(r"\g<head>***\g<tail>", text)
    return _PASSWORD_IN_TEXT_PARAM.sub(r"\g<head>***", text)


def install_log_redaction() -> None:
    """Redact every log record of this process as it is made (`redact_secrets`), whatever the
    logger, level or handler: DEBUG lines that quote a URL, a traceback's text, and what Kopf
    turns into Kubernetes events. Idempotent."""
    current = logging.getLogRecordFactory()
    if getattr(current, "_ladder_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return record
        record.msg, record.args = redact_secrets(message), None
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact_secrets(text)
        if record.stack_info:
            record.stack_info = redact_secrets(record.stack_info)
        return record

    factory._ladder_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def error_text(error: BaseException) -> str:
    """An error from opening or using the store as one line a user may see: the driver's own
    message (without SQLAlchemy's statement and 'Background on this error' link), whitespace
    folded, every password redacted."""
    orig = getattr(error, "orig", None)
    text = str(orig) if isinstance(orig, BaseException) else str(error)
    return redact_secrets(" ".join(text.split())) or type(error).__name__


def _switch_to_wal(cursor: Any) -> None:
    """Put the database file in WAL mode (it stays so: only the first connection switches).

    The switch needs an exclusive lock and SQLite may refuse it at once, busy_timeout or
    not, while another process opens the same new file; so wait for it here."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() in ("wal", "memory"):
                return
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL itself needs a lock another process may hold.
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            # WAL: readers (the CLI, the dashboard exporter) never block the writing runner.
            _switch_to_wal(cursor)
            # SQLite ignores foreign keys (and ON DELETE CASCADE) unless asked, per connection.
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()


SUPPORTED_BACKENDS = ("sqlite", "postgresql")


def create_store_engine(url: str | URL | None = None, **kwargs: Any) -> Engine:
    """An Engine for the store URL (`database_url` resolves the default), configured per dialect.

    SQLite: WAL journal, a 30 s busy timeout and foreign keys on every connection.
    PostgreSQL: `pool_pre_ping`, so a connection dropped by a database restart or failover is
    replaced instead of failing the next write.
    """
    raw = database_url(url)
    if password_has_at(raw):
        raise ValueError("the password in the URL contains '@': write it percent-encoded, "
                         "as %40")
    resolved = make_url(raw)
    backend = resolved.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise ValueError(
            f"the store supports SQLite and PostgreSQL URLs (sqlite:///FILE, "
            f"postgresql+psycopg://...), not {backend!r}"
        )
    options: dict[str, Any] = {}
    if backend == "sqlite":
        # pysqlite's own busy handler, in case a statement runs before the connect event.
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    elif backend == "postgresql":
        options["pool_pre_ping"] = True
    options.update(kwargs)
    engine = create_engine(resolved, **options)
    if backend == "sqlite":
        _configure_sqlite(engine)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to `engine`. Callers own them: open, commit (or `begin()`), close.

    `expire_on_commit=False`: rows returned from a committed transaction (e.g. by
    `save_with_retry`) stay readable afterwards instead of reloading from a closed session.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Alembic's Config built in code: the store needs no alembic.ini at runtime."""
    config = Config()
    # Config values go through configparser interpolation, so a literal % must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head_revisions() -> tuple[str, ...]:
    """The heads of the migration history (exactly one, unless two branches were merged badly)."""
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


def _upgrade_sqlite(connection: Connection) -> None:
    # Foreign keys off while migrating: batch mode rebuilds a table by copying it and dropping
    # the old one, and with foreign keys on, that DROP would cascade into child rows. The
    # pragma is a no-op inside a transaction, so it is switched before BEGIN and back after.
    connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
    connection.commit()
    try:
        # BEGIN IMMEDIATE takes SQLite's write lock up front (waiting up to busy_timeout), so
        # concurrent migrations run one after another, each inside one transaction: the second
        # finds the schema at head and does nothing.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            command.upgrade(alembic_config(connection), "head")
            violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if violations:
                raise RuntimeError(f"migration left foreign key violations: {violations[:5]}")
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
    finally:
        connection.exec_driver_sql("PRAGMA foreign_keys = ON")
        connection.commit()


def _upgrade_postgresql(connection: Connection) -> None:
    with connection.begin():
        # A transaction-scoped advisory lock: concurrent migrators queue here, and PostgreSQL's
        # transactional DDL makes the whole upgrade atomic; the lock goes with the commit.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        command.upgrade(alembic_config(connection), "head")


def migrate(target: Engine | str | URL | None = None) -> None:
    """`alembic upgrade head` on the store; idempotent and safe to run concurrently."""
    engine = target if isinstance(target, Engine) else create_store_engine(target)
    try:
        log.debug("migrating store %s", redact_url(engine.url))
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                _upgrade_sqlite(connection)
            elif engine.dialect.name == "postgresql":
                _upgrade_postgresql(connection)
            else:
                with connection.begin():
                    command.upgrade(alembic_config(connection), "head")
    finally:
        if engine is not target:
            engine.dispose()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


# open_store's cache: URL -> (pid, engine, factory). The pid guards against fork: a child must
# never reuse its parent's pooled connections, so it gets an engine of its own.
_stores: dict[str, tuple[int, Engine, sessionmaker[Session]]] = {}
_stores_lock = threading.Lock()


def open_store(url: str | URL | None = None) -> sessionmaker[Session]:
    """A session factory for a migrated store: engine + migrate + factory, cached per URL."""
    key = database_url(url)
    with _stores_lock:
        cached = _stores.get(key)
        if cached is not None:
            pid, engine, factory = cached
            if pid == os.getpid():
                return factory
            # Inherited across fork: drop the parent's connections without closing them
            # (closing would tear down sockets the parent still uses).
            engine.dispose(close=False)
        engine = create_store_engine(key)
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        factory = session_factory(engine)
        _stores[key] = (os.getpid(), engine, factory)
        return factory


def dispose_stores() -> None:
    """Forget every cached store and close its connections (tests; before dropping a database)."""
    with _stores_lock:
        for pid, engine, _factory in _stores.values():
            engine.dispose(close=pid == os.getpid())
        _stores.clear()
