"""Helpers for the controller's k8s tests: the controller as a real subprocess
(`ladder controller`), polling, and small kubectl-free API reads."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.operator.kube import KubeError
from orchestrator.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")




def wait_for(
    what: str, probe: Callable[[], T | None], *, timeout: float = 60, interval: float = 0.5,
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout`. A
    transient API error (a 429 while the API server initializes a new CRD's storage, a 5xx)
    is one more "not yet", as the controller itself treats it."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except KubeError as error:
            if not error.transient:
                raise
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    extra = f"\n{diagnose()}" if diagnose is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})"
                         f"{extra}")


DB_SECRET = "ladder-db"  # the Secret (key `url`) that gives trial pods LADDER_DB_URL


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` answers 200 now (a probe for `wait_for`)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def db_secret(db_url: str) -> dict[str, Any]:
    """The Secret `DB_SECRET` holding the store's URL, as the controller's tests create it."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": DB_SECRET},
            "data": {"url": base64.b64encode(db_url.encode()).decode()}}


@contextlib.contextmanager
def running_controller(
    kubeconfig: Path, namespace: str, db_url: str, log_dir: Path
) -> Iterator[ControllerProcess]:
    """`ladder controller` watching `namespace`, with its liveness endpoint on a free port;
    stopped afterwards."""
    process = ControllerProcess(kubeconfig=kubeconfig, namespace=namespace, db_url=db_url,
                                log_dir=log_dir,
                                liveness=f"http://127.0.0.1:{free_port()}/healthz")
    process.start()
    try:
        yield process
    finally:
        process.stop()


class ControllerProcess:
    """`ladder controller` in a subprocess, watching one namespace."""

    def __init__(self, *, kubeconfig: Path, namespace: str, db_url: str, log_dir: Path,
                 interval: float = 1.0, liveness: str = "",
                 env: dict[str, str] | None = None, db_secret: str = "ladder-db/url",
                 peering: str | None = None, name: str = "controller") -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.db_url = db_url
        self.log_dir = log_dir
        self.interval = interval
        self.liveness = liveness
        self.env = dict(env or {})
        self.db_secret = db_secret
        self.peering = peering
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.starts}.log"

    def start(self) -> ControllerProcess:
        self.starts += 1
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "LADDER_RECONCILE_INTERVAL": str(self.interval),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
            ),
            **self.env,
        }
        command = [
            sys.executable, "-c", "from orchestrator.cli import main; main()", "controller",
            "--namespace", self.namespace, "--db", self.db_url,
            "--db-secret", self.db_secret, "--liveness", self.liveness,
            *(["--peering", self.peering] if self.peering else []),
        ]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as when a node dies."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self, tail: int | None = 6000) -> str:
        """Each start's log, its last `tail` characters (for a message; None: all of it)."""
        texts = []
        for index in range(1, self.starts + 1):
            path = self.log_dir / f"{self.name}-{index}.log"
            if path.exists():
                text = path.read_text(errors="replace")
                texts.append(f"--- {self.name} start {index} ---\n"
                             + (text if tail is None else text[-tail:]))
        return "\n".join(texts)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)[:4000]
