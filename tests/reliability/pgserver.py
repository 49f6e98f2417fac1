"""A real PostgreSQL server that a test can stop and start again (the store-outage fault).

Built on the helpers of the integration tests' `postgres_url` fixture (tests/integration/
conftest.py: the distribution's initdb and pg_ctl, run as `postgres` or `nobody` under
root), but owned by the reliability tests: stopping it must not pull the database from under
other tests, and `stop`/`start` keep the data directory and the port.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from orchestrator.ports import free_port
from tests.integration.conftest import (
    POSTGRES_USER,
    _as_user,
    _run,
    _server_user,
    find_postgres_binaries,
)


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, on a fixed loopback port."""

    def __init__(self) -> None:
        binaries = find_postgres_binaries()
        if binaries is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) were not found; "
                               "install them with `apt-get install postgresql`")
        self.binaries = binaries
        self.user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="ladder-pg-rel-"))
        self.data, self.log_file = self.root / "data", self.root / "postgres.log"
        self.port = 0
        self.running = False
        if self.user is not None:
            account = pwd.getpwnam(self.user)
            shutil.chown(self.root, account.pw_uid, account.pw_gid)
        _run(_as_user(self.user, [str(binaries.initdb), "-D", str(self.data), "-U",
                                  POSTGRES_USER, "-A", "trust", "-E", "UTF8", "--locale=C",
                                  "-N"]), self.root, "initdb")

    def _pg_ctl(self, *args: str) -> list[str]:
        return _as_user(self.user, [str(self.binaries.pg_ctl), "-D", str(self.data), "-l",
                                    str(self.log_file), *args])

    def start(self) -> None:
        """Start (again, on the same port once it has one)."""
        ports = [self.port] if self.port else [free_port() for _ in range(3)]
        error: Exception | None = None
        for port in ports:
            options = f"-h 127.0.0.1 -p {port} -k {self.root} -F"
            try:
                _run(self._pg_ctl("-w", "-t", "60", "-o", options, "start"), self.root,
                     "pg_ctl start")
            except RuntimeError as failure:
                error = failure
                continue
            self.port, self.running = port, True
            return
        raise RuntimeError(f"PostgreSQL did not start: {error}\n{self.log_tail()}")

    def stop(self, mode: str = "fast") -> float:
        """Stop the server (`fast`: clients are disconnected, `immediate`: as if it
        crashed); returns when it is down. Returns the monotonic time it went down."""
        _run(self._pg_ctl("-m", mode, "-w", "stop"), self.root, "pg_ctl stop")
        self.running = False
        return time.monotonic()

    def create_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"ladder_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=POSTGRES_USER,
                             dbname="postgres", autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{self.port}/{name}"

    def log_tail(self, limit: int = 4000) -> str:
        if not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")[-limit:]

    def destroy(self) -> None:
        if self.running:
            subprocess.run(self._pg_ctl("-m", "immediate", "-w", "stop"), cwd=self.root,
                           capture_output=True, timeout=120)
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)
