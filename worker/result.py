"""Where a trial's outcome goes: the store (live epochs, the final result), a file and stdout.

The store is best effort while training (an unreachable database must never fail or stall a
run) and insistent at the end: `deliver` keeps retrying the result write with backoff
(`save_with_retry`, again and again) for up to LADDER_RESULT_RETRY_SECONDS (default 600), so a
database restarted or failed over while the trial ends still gets the result; the epochs
written live while it was away travel with the result. Whatever happens to the store, the
result is also written to `<outputDir>/result.json` and printed as the last stdout line
(`AttemptResult.json_line()`), which is what backends read when the database is away.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.core.classify import excerpt
from orchestrator.core.lifecycle import ExitCode, TrialState
from orchestrator.core.names import DB_URL_ENV, RESULT_RETRY_ENV
from orchestrator.core.worker_contract import AttemptResult, AttemptSpec, EpochRecord

__all__ = [
    "DB_URL_ENV",
    "EpochSink",
    "deliver",
    "error_text",
    "exit_code",
    "failure_result",
    "mark_running",
    "store_url",
]

log = logging.getLogger(__name__)

DEFAULT_RESULT_RETRY_SECONDS = 600.0
RESULT_FILE = "result.json"
# Ray's wrappers around the exception that really happened; error texts name the latter.
_WRAPPERS = frozenset({
    "TrainingFailedError", "WorkerGroupError", "ControllerError", "UserExceptionWithTraceback",
    "RayTaskError", "RayTrainError",
})


def store_url(trial: AttemptSpec) -> str | None:
    """LADDER_DB_URL in the environment, else the trial's `dbUrl`, else None (no store).

    A relative SQLite path is made absolute here, against the driver's working directory:
    Ray Train runs workers in a directory of its own, where it would name another file.
    """
    if not (os.environ.get(DB_URL_ENV) or trial.db_url):
        return None  # no store: not worth importing it (SQLAlchemy, Alembic) to learn that
    from orchestrator.store.engine import resolve_db_url

    return resolve_db_url(None, fallback=trial.db_url or None, default=None)


def error_text(error: BaseException, limit: int = 3000) -> str:
    """'Type: message' of the root cause (through Ray's wrappers), then the end of the
    wrapper's text (where Ray puts the worker's traceback); at most `limit` characters."""
    from worker.memory import exception_chain  # imports torch: only a failure needs it

    root = next(
        (e for e in exception_chain(error) if type(e).__name__ not in _WRAPPERS
         and not type(e).__name__.startswith("RayTaskError")),
        error,
    )
    head = f"{type(root).__name__}: {root}"
    cap = limit if root is error else limit // 2  # leave room for the wrapper's text
    if len(head) > cap:
        head = head[: cap - 3] + "..."
    if root is error:
        return head
    room = limit - len(head) - 5  # "\n\n" and excerpt's "..."
    return f"{head}\n\n{excerpt(str(error), room)}"


def failure_result(
    trial: AttemptSpec,
    error: BaseException,
    *,
    started_at: datetime | None = None,
    wall_seconds: float | None = None,
) -> AttemptResult:
    """A classified failure for an exception raised outside training (setup, CLI)."""
    from worker.memory import classify_failure  # imports torch: only a failure needs it

    state, kind = classify_failure(error, budget_set=trial.memory_budget_bytes is not None)
    return AttemptResult.for_trial(
        trial,
        status=state,
        oom_kind=kind,
        error=error_text(error),
        started_at=started_at,
        finished_at=datetime.now(UTC),
        wall_seconds=wall_seconds,
    )


def exit_code(result: AttemptResult) -> ExitCode:
    if result.status is TrialState.SUCCEEDED:
        return ExitCode.SUCCEEDED
    if result.status is TrialState.OOM:
        return ExitCode.OOM
    return ExitCode.FAILED


def _factory(url: str) -> Any:
    from orchestrator.store import open_store

    return open_store(url)


def mark_running(trial: AttemptSpec, started_at: datetime) -> None:
    """Record the attempt as running (so live epochs have a row to attach to); best effort."""
    url = store_url(trial)
    if url is None:
        return
    try:
        from orchestrator.store import record_attempt

        with _factory(url).begin() as session:
            record_attempt(session, trial, status=TrialState.RUNNING, started_at=started_at)
    except Exception as error:
        log.warning("store: cannot record trial %s as running: %s", trial.trial_id, error)


class EpochSink:
    """Rank 0's live epoch writer. Store errors are logged, never raised; after three in a
    row it stops trying, so a database that hangs does not slow every epoch down."""

    MAX_FAILURES = 3

    def __init__(self, trial: AttemptSpec, url: str | None) -> None:
        self.trial, self.url = trial, url
        self.failures = 0

    def write(self, record: EpochRecord) -> None:
        if self.url is None or self.failures >= self.MAX_FAILURES:
            return
        t = self.trial
        try:
            from orchestrator.store import record_epoch

            with _factory(self.url).begin() as session:
                record_epoch(session, t.key, record)
            self.failures = 0
        except Exception as error:
            self.failures += 1
            log.warning("store: epoch %d of trial %s not written: %s",
                        record.epoch, t.trial_id, error)


def result_retry_seconds() -> float:
    """How long `deliver` keeps trying the store: LADDER_RESULT_RETRY_SECONDS, default 600."""
    text = os.environ.get(RESULT_RETRY_ENV, "").strip()
    try:
        return max(0.0, float(text)) if text else DEFAULT_RESULT_RETRY_SECONDS
    except ValueError:
        log.warning("%s=%r is not a number; using %.0f s", RESULT_RETRY_ENV, text,
                    DEFAULT_RESULT_RETRY_SECONDS)
        return DEFAULT_RESULT_RETRY_SECONDS


def store_result(
    url: str,
    result: AttemptResult,
    *,
    within: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Write `result` to the store at `url`, retrying transient failures (a database that is
    down, restarting or failing over) with backoff for up to `within` seconds; the last
    failure propagates, and so does at once any failure that is not transient."""
    from orchestrator.store import is_transient, record_result, save_with_retry

    give_up = clock() + within
    pause = 1.0
    while True:
        try:
            # open_store connects (and migrates) first: inside the loop, so a database that
            # is away when the trial ends is waited for too.
            save_with_retry(_factory(url), lambda session: record_result(session, result),
                            attempts=3, backoff=0.5, max_backoff=2.0, sleep=sleep)
            return
        except Exception as error:
            left = give_up - clock()
            if not is_transient(error) or left <= 0:
                raise
            log.warning("store: result of trial %s not written yet (%s); trying again for "
                        "%.0f s more", result.trial_id, type(error).__name__, left)
            sleep(min(pause, left))
            pause = min(pause * 2, 10.0)


def deliver(result: AttemptResult, trial: AttemptSpec) -> bool:
    """Store the result (retrying for LADDER_RESULT_RETRY_SECONDS), write result.json, print
    the result line last.

    Returns whether the store has it. Never raises: this is the worker's last word.
    """
    stored = False
    url = store_url(trial)
    if url is not None:
        try:
            store_result(url, result, within=result_retry_seconds())
            stored = True
        except Exception as error:
            log.error("store: result of trial %s not written: %s", trial.trial_id, error)
    try:
        path = Path(trial.output_dir) / RESULT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(result.model_dump_json(by_alias=True, indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        log.error("cannot write %s: %s", RESULT_FILE, error)
    print(result.json_line(), flush=True)
    return stored
