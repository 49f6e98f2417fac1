"""The warm fork server (worker/forkserver.py): a trial forked from it behaves as the same
trial in a fresh `python -m worker run` process: its streams, environment, working directory
and exit; a SIGTERM to the job's process stops it as a cancelled trial; a child the kernel
kills ends its job with the same signal; an unreachable server costs nothing but a line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from orchestrator.core.grid import attempt_spec, expand
from orchestrator.core.lifecycle import ExitCode, TrialState
from orchestrator.core.names import DB_URL_ENV, FORK_SERVER_ENV, RANK_IN_DRIVER_ENV
from orchestrator.core.spec import load_sweep_text
from orchestrator.core.worker_contract import AttemptResult
from orchestrator.files import write_trial

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.integration  # real training in a forked child


def _start_server(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "worker.forkserver", str(path)], cwd=ROOT,
                            env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not bind"
        time.sleep(0.05)
    return proc


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, subprocess.Popen]]:
    path = tmp_path_factory.mktemp("fork") / "s"
    proc = _start_server(path)
    yield path, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _env(socket_path: Path | str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != DB_URL_ENV}
    env.update({"PYTHONPATH": str(ROOT), FORK_SERVER_ENV: str(socket_path),
                RANK_IN_DRIVER_ENV: "1", **extra})
    return env


def _trial(tmp_path: Path, epochs: int) -> Path:
    data = yaml.safe_load((ROOT / "examples/quickstart.yaml").read_text())
    data["spec"]["training"].update(epochs=epochs, saveModel="none", generateLimit=1)
    data["spec"]["methods"] = ["full"]
    sweep = load_sweep_text(yaml.safe_dump(data))
    trial = next(iter(expand(sweep).all_trials()))
    spec = attempt_spec(sweep, trial, attempt=1, output_dir=str(tmp_path / "out"))
    return write_trial(spec, tmp_path / "trial.json")


def _worker(env: dict[str, str], cwd: Path, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "worker", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _training(env: dict[str, str], tmp_path: Path, epochs: int) -> subprocess.Popen[str]:
    """A trial of `epochs` epochs started through the server, once it trains (its first step)."""
    worker = _worker(env, tmp_path, "run", "--trial", str(_trial(tmp_path, epochs)))
    assert worker.stderr is not None
    for line in worker.stderr:
        if "ladder-startup" in line:
            return worker
    raise AssertionError(f"the trial never trained (exit {worker.wait()})")


def _children(server: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(server.pid).children()


def test_a_forked_trial_runs_with_the_clients_directory_environment_and_streams(
    server: tuple[Path, subprocess.Popen], tmp_path: Path
) -> None:
    socket_path, proc = server
    _trial(tmp_path, epochs=1)
    db = tmp_path / "store.db"
    # A relative trial path: found only from the client's working directory; the store URL
    # only in the client's environment.
    worker = _worker(_env(socket_path, **{DB_URL_ENV: f"sqlite:///{db}"}), tmp_path,
                     "run", "--trial", "trial.json")
    out, err = worker.communicate(timeout=300)
    result = AttemptResult.from_output(out)
    assert result is not None, err[-3000:]
    assert (result.status, worker.returncode) == (TrialState.SUCCEEDED, 0), err[-3000:]
    assert "not usable" not in err
    assert "ladder-startup" in err  # the child's stderr is the client's
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT status FROM trials").fetchall() == [("succeeded",)]
    assert json.loads((tmp_path / "out" / "result.json").read_text())["status"] == "succeeded"
    assert proc.poll() is None and _children(proc) == []  # the child was reaped


def test_sigterm_to_the_job_process_stops_the_forked_trial_as_cancelled(
    server: tuple[Path, subprocess.Popen], tmp_path: Path
) -> None:
    socket_path, proc = server
    worker = _training(_env(socket_path), tmp_path, epochs=500)
    assert _children(proc), "no forked child"
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=120)
    result = AttemptResult.from_output(out)
    assert result is not None, err[-3000:]
    assert result.status is TrialState.CANCELLED
    assert worker.returncode == ExitCode.FAILED
    deadline = time.monotonic() + 10
    while _children(proc) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _children(proc) == []


def test_a_child_killed_by_the_kernel_ends_its_job_with_the_same_signal(
    server: tuple[Path, subprocess.Popen], tmp_path: Path
) -> None:
    socket_path, proc = server
    worker = _training(_env(socket_path), tmp_path, epochs=500)
    (child,) = _children(proc)
    child.kill()  # as the OOM killer would
    worker.communicate(timeout=60)
    assert worker.returncode == -signal.SIGKILL


def test_a_vanished_client_stops_its_child(
    server: tuple[Path, subprocess.Popen], tmp_path: Path
) -> None:
    socket_path, proc = server
    worker = _training(_env(socket_path), tmp_path, epochs=500)
    (child,) = _children(proc)
    worker.kill()
    worker.wait()
    child.wait(timeout=60)  # SIGTERM'd by its watcher: it unwinds and exits
    assert not child.is_running()


def test_a_trial_outlives_its_server(tmp_path: Path) -> None:
    """A killed `ladder run` takes its fork server with it; the running trials go on and their
    jobs end as the trials do, for the next `ladder run` to adopt."""
    proc = _start_server(tmp_path / "s")
    worker = _training(_env(tmp_path / "s"), tmp_path, epochs=6)
    proc.kill()
    proc.wait()
    out, err = worker.communicate(timeout=300)
    result = AttemptResult.from_output(out)
    assert result is not None, err[-3000:]
    assert (result.status, worker.returncode) == (TrialState.SUCCEEDED, 0), err[-3000:]


def test_an_unreachable_server_leaves_the_trial_to_its_own_process(tmp_path: Path) -> None:
    (tmp_path / "trial.json").write_text("{not json")
    worker = _worker(_env(tmp_path / "no-such-socket"), tmp_path, "run", "--trial",
                     "trial.json")
    _out, err = worker.communicate(timeout=120)
    assert "fork server" in err and "not usable" in err
    assert "invalid trial file" in err  # the trial ran (and failed) in the client itself
    assert worker.returncode == ExitCode.FAILED


def test_the_server_ends_when_its_stdin_closes(tmp_path: Path) -> None:
    proc = _start_server(tmp_path / "s")
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o600  # its owner's only
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
