"""`python -m worker run --trial FILE`: the worker contract.

docs/architecture.md, "The worker contract".

Runs one trial and always ends the same way, whatever happened: one AttemptResult in the store
(when a URL is known) and in `<outputDir>/result.json`, printed as the last stdout line, and
the exit code of its state: 0 succeeded, 3 out of memory (any kind), 1 anything else. An
exception anywhere, setup included, becomes a failed result rather than a bare traceback; a
SIGTERM (the trial stopped from outside) becomes a cancelled one.

`python -m worker probe --trial FILE` runs only the probe step on the longest batch (does
the trial fit?) and prints the result line, storing nothing.

`python -m worker export|predict` are the torch side of `ladder export` and `ladder predict`
(worker/export.py): the controller's CLI runs them as a subprocess, never importing torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.core.lifecycle import ExitCode, TrialState
from orchestrator.core.worker_contract import AttemptResult
from orchestrator.files import read_trial

log = logging.getLogger("worker")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "run one trial and report its result"),
        ("probe", "only the probe step on the longest batch: does the trial fit?"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--trial", required=True, type=Path, help="the trial as JSON")
    export = commands.add_parser("export", help="saved weights as a Hugging Face model")
    export.add_argument("--model-dir", required=True, type=Path, help="a trial's model/")
    export.add_argument("--out", required=True, type=Path)
    export.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    export.add_argument("--record", default="{}", help="the trial's stored result, as JSON")
    predict = commands.add_parser("predict", help="greedy answers, one JSON line each")
    predict.add_argument("--model-dir", required=True, type=Path,
                         help="a trial's model/ or an exported model")
    predict.add_argument("--questions", required=True, type=Path, help="one JSON string a line")
    predict.add_argument("--explain", action="store_true")
    predict.add_argument("--device", default=None, help="default: cuda when there is one")
    predict.add_argument("--batch-size", type=int, default=16)
    predict.add_argument("--max-new-tokens", type=int, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command in ("export", "predict"):
        from worker.export import main as export_main

        return export_main(args)
    return int(run(args.trial, probe_only=args.command == "probe"))


# Set by the SIGTERM handler: whatever exception the stop surfaces as on its way out (Ray
# Train may wrap it in its own), the trial was stopped, it did not fail.
STOP_REQUESTED = threading.Event()


# Seconds a stopped trial has to unwind on its own before the watchdog ends it: the SystemExit
# can land inside library code that swallows it (Ray Train's setup does, now and then).
STOP_GRACE_SECONDS = 10.0
# Held by whoever delivers the result: the unwinding main thread or the watchdog, never both.
_DELIVERING = threading.Lock()
_on_stuck: list[Callable[[], None]] = []  # what the watchdog does for the current trial


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM: the trial is stopped from outside (Ray's stop_job, a deleted RayJob, a
    cancelled sweep). Unwind the way Ray's own handler does (SystemExit), remembering that it
    was a stop, with a watchdog in case the unwinding gets stuck."""
    if STOP_REQUESTED.is_set():
        return  # one stop is enough; let the result go out
    STOP_REQUESTED.set()
    if _on_stuck:
        watchdog = threading.Timer(STOP_GRACE_SECONDS, _on_stuck[0])
        watchdog.daemon = True
        watchdog.start()
    sys.exit(signum)


def _stopped(result: AttemptResult) -> AttemptResult:
    """The result as it stood (epochs done, figures so far), recorded as cancelled."""
    return result.model_copy(update={
        "status": TrialState.CANCELLED, "oom_kind": None,
        "error": "cancelled: stopped from outside (SIGTERM)",
    })


def run(path: Path, *, probe_only: bool = False) -> ExitCode:
    from worker import phases

    if "driver_process" not in phases.marks():  # a forked trial marked its fork
        phases.mark("driver_process", phases.process_started())
    phases.mark("driver_main")
    from worker.result import deliver, exit_code, failure_result

    started_at, t0 = datetime.now(UTC), time.time()
    try:
        trial = read_trial(path)
    except Exception as error:
        return _unreadable_trial(path, error)
    def stuck() -> None:
        if not _DELIVERING.acquire(blocking=False):
            return  # the main thread is delivering its own result
        log.warning("trial %s did not unwind within %.0f s of SIGTERM; ending it",
                    trial.trial_id, STOP_GRACE_SECONDS)
        stopped = _stopped(AttemptResult.for_trial(
            trial, status=TrialState.CANCELLED, started_at=started_at,
            finished_at=datetime.now(UTC), wall_seconds=time.time() - t0))
        if probe_only:
            print(stopped.json_line(), flush=True)
        else:
            deliver(stopped, trial)
        sys.stdout.flush()
        os._exit(int(ExitCode.FAILED))

    _on_stuck[:] = [stuck]
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        from worker.train import run_trial

        phases.mark("driver_imports")
        result = run_trial(trial, probe_only=probe_only)
    except BaseException as error:  # a stop too: the result must still go out.
        if isinstance(error, KeyboardInterrupt):
            STOP_REQUESTED.set()
        if STOP_REQUESTED.is_set():
            # No classification: the stop may have cut an import short (a half-imported ray).
            result = AttemptResult.for_trial(
                trial, status=TrialState.FAILED, started_at=started_at,
                finished_at=datetime.now(UTC), wall_seconds=time.time() - t0,
            )
        else:
            log.exception("trial %s failed outside training", trial.trial_id)
            result = failure_result(
                trial, error, started_at=started_at, wall_seconds=time.time() - t0
            )
    if STOP_REQUESTED.is_set() and result.status is not TrialState.SUCCEEDED:
        log.warning("trial %s was stopped from outside", trial.trial_id)
        result = _stopped(result)
    _disconnect_ray()  # so that no forwarded worker log line comes after the result line
    with _DELIVERING:
        if probe_only:
            print(result.json_line(), flush=True)
        else:
            deliver(result, trial)
    return exit_code(result)


def _disconnect_ray() -> None:
    if "ray" not in sys.modules:
        return
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception as error:
        log.warning("ray.shutdown failed: %s", error)


def _unreadable_trial(path: Path, error: Exception) -> ExitCode:
    """A trial file that does not validate: exit 1, with a failed result line when the file
    at least names the trial (there is no trusted store URL or output dir to write to)."""
    message = f"invalid trial file {path}: {error}"
    log.error("%s", message)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        identity = {k: raw[k] for k in ("sweep", "trialId", "lane", "model", "method")}
        identity.update({k: raw[k] for k in ("namespace", "attempt") if k in raw})
        result = AttemptResult.model_validate({**identity, "status": "failed", "error": message})
    except Exception:
        return ExitCode.FAILED
    print(result.json_line(), flush=True)
    return ExitCode.FAILED
