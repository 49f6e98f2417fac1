"""The worker's last word: result in the store, in result.json and as the last stdout line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray.train import WorkerGroupError

from orchestrator.core.lifecycle import ExitCode, OOMKind, TrialState
from orchestrator.core.worker_contract import RESULT_PREFIX, AttemptResult, AttemptSpec, EpochRecord
from worker.memory import MemoryBudgetExceeded
from worker.result import EpochSink, deliver, error_text, exit_code, store_result, store_url
from worker.train import run_trial

ROOT = Path(__file__).resolve().parents[3]


def spec(tmp_path: Path, **fields: object) -> AttemptSpec:
    return AttemptSpec(sweep="s", trial_id="t1", lane="l", model="ladder/t5-tiny-s", method="full",
                     output_dir=str(tmp_path / "out"), **fields)


def result(
    trial: AttemptSpec, status: TrialState = TrialState.SUCCEEDED, **fields
) -> AttemptResult:
    return AttemptResult.for_trial(trial, status=status, **fields)


@pytest.mark.parametrize(
    ("status", "code"),
    [(TrialState.SUCCEEDED, ExitCode.SUCCEEDED), (TrialState.OOM, ExitCode.OOM),
     (TrialState.FAILED, ExitCode.FAILED), (TrialState.CANCELLED, ExitCode.FAILED)],
)
def test_exit_codes(tmp_path: Path, status: TrialState, code: ExitCode) -> None:
    assert exit_code(result(spec(tmp_path), status)) == code


def test_store_url_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trial = spec(tmp_path, db_url="sqlite:////data/trial.db")
    monkeypatch.delenv("LADDER_DB_URL", raising=False)
    assert store_url(trial) == "sqlite:////data/trial.db"
    monkeypatch.setenv("LADDER_DB_URL", "sqlite:////data/env.db")
    assert store_url(trial) == "sqlite:////data/env.db"
    monkeypatch.delenv("LADDER_DB_URL")
    assert store_url(spec(tmp_path)) is None


def test_relative_sqlite_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Train workers run in a directory of their own: a relative path would move."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LADDER_DB_URL", "sqlite:///ladder.db")
    assert store_url(spec(tmp_path)) == f"sqlite:///{tmp_path / 'ladder.db'}"
    monkeypatch.setenv("LADDER_DB_URL", "sqlite:////abs/ladder.db")
    assert store_url(spec(tmp_path)) == "sqlite:////abs/ladder.db"
    monkeypatch.setenv("LADDER_DB_URL", "postgresql+psycopg://u:p@db/ladder")
    assert store_url(spec(tmp_path)) == "postgresql+psycopg://u:p@db/ladder"


def test_error_text_names_the_root_cause() -> None:
    budget = MemoryBudgetExceeded("building the model", 40 * 2**20, 2**20)
    text = error_text(WorkerGroupError("[Rank 0 Error Snippet]: traceback...", {0: budget}))
    assert text.startswith("MemoryBudgetExceeded: 40.0 MiB used on cpu")
    assert "Rank 0 Error Snippet" in text  # the wrapper's text follows
    assert error_text(ValueError("plain")) == "ValueError: plain"
    assert len(error_text(RuntimeError("x" * 10_000))) <= 3000


def test_deliver_without_a_reachable_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LADDER_DB_URL", f"sqlite:///{tmp_path}/no/such/dir/ladder.db")
    monkeypatch.setenv("LADDER_RESULT_RETRY_SECONDS", "1")
    trial = spec(tmp_path)
    done = result(trial, TrialState.OOM, oom_kind=OOMKind.BUDGET, error="over budget")
    started = time.monotonic()
    assert deliver(done, trial) is False
    assert time.monotonic() - started >= 1.0  # it kept trying for LADDER_RESULT_RETRY_SECONDS
    last = capsys.readouterr().out.splitlines()[-1]
    assert AttemptResult.from_output(last) == done
    saved = AttemptResult.model_validate_json((tmp_path / "out/result.json").read_text())
    assert saved == done


def test_result_write_waits_for_a_store_that_comes_back(tmp_path: Path) -> None:
    """A store that cannot be opened (here: its directory is missing, sqlite3's "unable to
    open database file", an OperationalError like a refused connection) is retried with
    backoff; once it is there again, the result lands."""
    from orchestrator.store import all_attempts, open_store, to_result

    home = tmp_path / "store"
    url = f"sqlite:///{home}/ladder.db"
    done = result(spec(tmp_path), best_eval_loss=1.5)
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 4:
            home.mkdir()  # the store is back
        time.sleep(min(seconds, 0.05))

    store_result(url, done, within=60, sleep=pause)
    assert len(pauses) >= 4
    with open_store(url)() as session:
        (row,) = all_attempts(session)
        assert to_result(row) == done


def test_result_write_gives_up_after_its_deadline(tmp_path: Path) -> None:
    from sqlalchemy.exc import OperationalError

    done = result(spec(tmp_path))
    started = time.monotonic()
    with pytest.raises(OperationalError):
        store_result(f"sqlite:///{tmp_path}/missing/ladder.db", done, within=1.0)
    assert 1.0 <= time.monotonic() - started < 10


def test_deliver_to_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.store import all_attempts, open_store, to_result

    url = f"sqlite:///{tmp_path}/ladder.db"
    monkeypatch.setenv("LADDER_DB_URL", url)
    trial = spec(tmp_path)
    epoch = EpochRecord(epoch=1, train_loss=2.0, train_label_loss=2.5, train_rationale_loss=1.5,
                        eval_loss=1.9, learning_rate=1e-3, samples_per_second=10.0,
                        wall_seconds=1.0)
    done = result(trial, best_eval_loss=1.9, best_epoch=1, epochs_completed=1, epochs=[epoch])
    assert deliver(done, trial) is True
    with open_store(url)() as session:
        (row,) = all_attempts(session, with_epochs=True)
        assert to_result(row) == done
    assert capsys.readouterr().out.splitlines()[-1].startswith(RESULT_PREFIX)


def test_epoch_sink_swallows_store_errors(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    sink = EpochSink(spec(tmp_path), f"sqlite:///{tmp_path}/no/such/dir/ladder.db")
    epoch = EpochRecord(epoch=1, train_loss=1.0, train_label_loss=1.0, eval_loss=1.0,
                        learning_rate=1e-3, samples_per_second=1.0, wall_seconds=1.0)
    for _ in range(5):
        sink.write(epoch)  # never raises
    assert sink.failures == EpochSink.MAX_FAILURES  # and stops trying after three in a row
    assert "not written" in caplog.text


def test_bad_dataset_fails_before_any_model(tmp_path: Path) -> None:
    missing = tmp_path / "data.jsonl"
    done = run_trial(spec(tmp_path, dataset={"source": str(missing)}))
    assert done.status is TrialState.FAILED and done.oom_kind is None
    assert f"{missing}:1: file not found" in done.error
    assert done.epochs_completed == 0 and done.wall_seconds < 5


def test_invalid_trial_file(tmp_path: Path) -> None:
    path = tmp_path / "trial.json"
    path.write_text(json.dumps({"sweep": "s", "trialId": "t1", "lane": "l", "model": "m",
                                "method": "full", "training": {"precision": "fp16"}}))
    done = subprocess.run([sys.executable, "-m", "worker", "run", "--trial", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == ExitCode.FAILED
    last = AttemptResult.from_output(done.stdout)
    assert last is not None and last.status is TrialState.FAILED
    assert "fp16 is not supported" in last.error
