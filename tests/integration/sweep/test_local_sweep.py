"""Local sweeps end to end: the real CLI, a real Ray runtime, real CPU training, SQLite.

The quickstart is run exactly as a newcomer runs it, with real training (the one whole
real-training sweep of the local runner in the suite). A smaller sweep is SIGKILLed mid-way
and resumed, and every trial must appear exactly once in the results; another is stopped with
Ctrl-C. Those two test the runner, not training, so their trials are the FAST STAND-IN
(tests/reliability/fast_worker.py, run as the worker through LADDER_WORKER_PYTHON): real Ray
jobs on a real Ray runtime, the real store and the real worker contract, no training.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.core.names import WORKER_PYTHON_ENV
from tests.reliability.fast_worker import (
    EPOCH_SECONDS_ENV,
    EPOCHS_ENV,
    OOM_MODELS_ENV,
    write_shim,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
LADDER = [sys.executable, "-m", "orchestrator.cli"]


def ladder(*args: str, cwd: Path, timeout: float = 900,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([*LADDER, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def results(db: str, cwd: Path, *extra: str) -> list[dict]:
    done = ladder("results", "--db", db, "--json", *extra, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_quickstart_climbs_and_stops_at_the_budget(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ladder.db'}"
    done = ladder("run", str(ROOT / "examples/quickstart.yaml"), "--db", db,
                  "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Best trial" in done.stdout and "Lane ceilings" in done.stdout
    # Every trial (one CPU worker each) was forked from the warm fork server.
    forks = (tmp_path / "runs" / "fork-server.log").read_text().count("fork server: forked")
    assert forks == 15

    records = results(db, tmp_path)
    assert len(records) == 15  # 5 lanes x 3 models, one record per trial
    by_model = {}
    for record in records:
        by_model.setdefault(record["model"], []).append(record)
    # Every lane climbs tiny-s -> tiny-m and runs out of its budget on tiny-l.
    assert all(r["status"] == "succeeded" for r in by_model["ladder/t5-tiny-s"])
    assert all(r["status"] == "succeeded" for r in by_model["ladder/t5-tiny-m"])
    assert all((r["status"], r["oom_kind"]) == ("oom", "budget")
               for r in by_model["ladder/t5-tiny-l"])
    for record in records:
        assert record["estimated_memory_bytes"] > 0  # every attempt carries the estimate
        if record["status"] == "succeeded":
            assert record["best_eval_loss"] > 0 and record["samples_per_second"] > 0
            assert record["peak_host_memory_bytes"] > 0 and record["wall_seconds"] > 0
            assert 0 <= record["json_valid_rate"] <= 1 and 0 <= record["exact_match"] <= 1

    status = ladder("status", "quickstart", "--db", db, cwd=tmp_path)
    assert status.returncode == 0 and "capped" in status.stdout
    csv_out = ladder("results", "--db", db, "--csv", cwd=tmp_path)
    assert csv_out.stdout.splitlines()[0].startswith("sweep,namespace,trial_id,lane,model")

    # Running the same spec again repeats nothing: the sweep is finished.
    before = results(db, tmp_path, "--all-attempts")
    again = ladder("run", str(ROOT / "examples/quickstart.yaml"), "--db", db,
                   "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert again.returncode == 0
    # ...and it did not start a runtime (the line may wrap at a long temporary path).
    assert "nothing to run (Ray not started)" in " ".join(again.stdout.split())
    assert results(db, tmp_path, "--all-attempts") == before
    assert len(before) >= 15


def _small_sweep(path: Path) -> Path:
    spec = yaml.safe_load((ROOT / "examples/quickstart.yaml").read_text())
    spec["metadata"]["name"] = "resume"
    spec["spec"]["methods"] = ["full", "lora"]
    spec["spec"]["adapters"] = [{"rank": 8, "alphas": [16]}]
    spec["spec"]["parallelism"] = 1
    path.write_text(yaml.safe_dump(spec))
    return path


def fast_env(tmp_path: Path, epoch_seconds: float) -> dict[str, str]:
    """`ladder run` with the fast stand-in as every trial's worker: two epochs of
    `epoch_seconds` each, and the largest tiny model out of its budget as in the quickstart."""
    shim = write_shim(tmp_path / "fast-python")
    root = str(ROOT)
    return {WORKER_PYTHON_ENV: str(shim), EPOCHS_ENV: "2", EPOCH_SECONDS_ENV: str(epoch_seconds),
            OOM_MODELS_ENV: "ladder/t5-tiny-l",
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def _states(db_file: Path) -> list[tuple[str, int, str]]:
    if not db_file.exists():
        return []
    try:
        with sqlite3.connect(db_file) as connection:
            return connection.execute("SELECT trial_id, attempt, status FROM trials").fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for an init that may never reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_resume_after_sigkill_runs_every_trial_once(tmp_path: Path) -> None:
    sweep = _small_sweep(tmp_path / "resume.yaml")
    db_file = tmp_path / "ladder.db"
    db = f"sqlite:///{db_file}"
    args = [*LADDER, "run", str(sweep), "--db", db, "--runs-dir", str(tmp_path / "runs")]
    env = fast_env(tmp_path, epoch_seconds=1.0)
    log = tmp_path / "first-run.log"
    with log.open("wb") as out:
        first = subprocess.Popen(args, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, env={**os.environ, **env})
    deadline = time.monotonic() + 600
    # Kill it once one trial has succeeded and another is under way.
    while time.monotonic() < deadline:
        states = [s for _, _, s in _states(db_file)]
        if "succeeded" in states and "running" in states:
            break
        assert first.poll() is None, (
            "the first run ended before it could be killed:\n"
            + log.read_text(errors="replace")[-3000:])
        time.sleep(0.5)
    else:
        pytest.fail("no trial succeeded in time")
    succeeded_before = {t for t, _, s in _states(db_file) if s == "succeeded"}
    running_before = {t for t, _, s in _states(db_file) if s == "running"}
    head = json.loads((tmp_path / "runs/ray-head.json").read_text())
    os.killpg(first.pid, signal.SIGKILL)  # the runner; its Ray head has a session of its own
    first.wait()

    done = ladder("run", str(sweep), "--db", db, "--runs-dir", str(tmp_path / "runs"),
                  cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The resumed run took over the head the killed one left (and its running trial), and
    # stopped it at the end.
    assert "Reusing the Ray runtime" in done.stdout
    assert not (tmp_path / "runs/ray-head.json").exists()
    assert not _running(head["pid"])
    rows = _states(db_file)
    succeeded = [t for t, _, s in rows if s == "succeeded"]
    assert len(succeeded) == len(set(succeeded)), "a trial succeeded twice"
    assert succeeded_before <= set(succeeded)
    # Finished trials were never run again; the running one was adopted, not relaunched.
    for trial_id in succeeded_before | running_before:
        assert [a for t, a, _ in rows if t == trial_id] == [1]
    latest = results(db, tmp_path)
    assert len(latest) == 6  # 2 lanes x 3 models, each exactly once
    assert {r["status"] for r in latest} <= {"succeeded", "oom"}


def test_ctrl_c_stops_running_trials_and_records_them_cancelled(tmp_path: Path) -> None:
    sweep = _small_sweep(tmp_path / "ctrlc.yaml")
    db_file = tmp_path / "ladder.db"
    args = [*LADDER, "run", str(sweep), "--db", f"sqlite:///{db_file}",
            "--runs-dir", str(tmp_path / "runs")]
    env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1",
           **fast_env(tmp_path, epoch_seconds=30.0)}
    run = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while "running" not in [s for _, _, s in _states(db_file)]:
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.5)
    time.sleep(3)  # into the trial (its first epoch takes 30 s)
    run.send_signal(signal.SIGINT)  # what Ctrl-C sends the foreground process
    out, err = run.communicate(timeout=180)
    assert run.returncode == 130, out[-3000:] + err[-3000:]
    assert "Interrupted" in err and "resume" in err
    states = [s for _, _, s in _states(db_file)]
    assert "cancelled" in states
    assert "running" not in states and "pending" not in states  # nothing half-written
    assert not (tmp_path / "runs/ray-head.json").exists()  # its Ray head stopped with it
