"""Fixtures of the integration tests: a real PostgreSQL server and per-test store URLs.

PostgreSQL runs from the distribution's server binaries (`apt-get install postgresql`), in a
temporary directory, on a free loopback port, with trust authentication: one server per test
session, one clean schema per test. LADDER_SKIP_POSTGRES=1 skips the PostgreSQL cases instead
of failing them where no server can be installed.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.ports import free_port

SKIP_POSTGRES_ENV = "LADDER_SKIP_POSTGRES"
POSTGRES_DB = "ladder_test"
POSTGRES_USER = "postgres"
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found; install them with "
    "`apt-get install postgresql` (or set LADDER_SKIP_POSTGRES=1 to skip the PostgreSQL cases)"
)


@dataclass(frozen=True)
class PostgresBinaries:
    initdb: Path
    pg_ctl: Path


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def find_postgres_binaries() -> PostgresBinaries | None:
    """initdb and pg_ctl: from `pg_config --bindir`, Debian's versioned dirs, then PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            bindir = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            candidates.append(Path(bindir))
        except (OSError, subprocess.SubprocessError):
            pass
    # Debian's pg_config (libpq-dev) may point at /usr/bin, where only client wrappers live.
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for directory in candidates:
        initdb, pg_ctl = directory / "initdb", directory / "pg_ctl"
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return PostgresBinaries(initdb, pg_ctl)
    initdb_path, pg_ctl_path = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb_path and pg_ctl_path:
        return PostgresBinaries(Path(initdb_path), Path(pg_ctl_path))
    return None


def _server_user() -> str | None:
    """The account to run the server as: None for ourselves; initdb refuses to run as root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    pytest.fail("running as root, and neither a 'postgres' nor a 'nobody' user exists")


def _as_user(user: str | None, command: list[str]) -> list[str]:
    if user is None:
        return command
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *command]
    return ["su", user, "-s", "/bin/sh", "-c", shlex.join(command)]


def _run(command: list[str], cwd: Path, what: str) -> None:
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def _wait_for_database(port: int, timeout: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(
                host="127.0.0.1", port=port, user=POSTGRES_USER, dbname="postgres",
                autocommit=True, connect_timeout=5,
            ) as connection:
                connection.execute(f'CREATE DATABASE "{POSTGRES_DB}"')
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of database `ladder_test` on a PostgreSQL server started for this test session."""
    if os.environ.get(SKIP_POSTGRES_ENV) == "1":
        pytest.skip(f"{SKIP_POSTGRES_ENV}=1")
    binaries = find_postgres_binaries()
    if binaries is None:
        pytest.fail(INSTALL_HINT)
    user = _server_user()
    # Under /tmp rather than pytest's tmp_path: that one is private to root (0700), and the
    # server runs as another user. Short, too: a unix socket path must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="ladder-pg-"))
    data, log_file = root / "data", root / "postgres.log"
    if user is not None:
        account = pwd.getpwnam(user)
        os.chown(root, account.pw_uid, account.pw_gid)
    pg_ctl = [str(binaries.pg_ctl), "-D", str(data), "-l", str(log_file)]
    started = False
    try:
        _run(
            _as_user(user, [str(binaries.initdb), "-D", str(data), "-U", POSTGRES_USER,
                            "-A", "trust", "-E", "UTF8", "--locale=C", "-N"]),
            root, "initdb",
        )
        port = 0
        for _try in range(3):  # another process may grab the port between probe and bind
            port = free_port()
            options = f"-h 127.0.0.1 -p {port} -k {root} -F"
            try:
                _run(_as_user(user, [*pg_ctl, "-w", "-t", "60", "-o", options, "start"]),
                     root, "pg_ctl start")
                started = True
                break
            except RuntimeError:
                continue
        if not started:
            log_tail = log_file.read_text(errors="replace")[-4000:] if log_file.exists() else ""
            pytest.fail(f"PostgreSQL did not start; server log:\n{log_tail}")
        _wait_for_database(port)
        yield f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{port}/{POSTGRES_DB}"
    finally:
        if started:
            subprocess.run(
                _as_user(user, [*pg_ctl, "-m", "fast", "-w", "stop"]),
                cwd=root, capture_output=True, timeout=120,
            )
        shutil.rmtree(root, ignore_errors=True)


def _reset_postgres(url: str) -> None:
    """An empty `public` schema, so every test starts from a database never migrated."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty store URL: a fresh SQLite file, or a clean schema on the session's PostgreSQL."""
    from orchestrator.store import dispose_stores

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ladder.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        _reset_postgres(url)
    dispose_stores()
    yield url
    # open_store caches engines per URL; the next test's schema must be migrated afresh.
    dispose_stores()
