"""A SIGTERM whose SystemExit is swallowed inside library code (Ray Train's setup does, now and
then) must still end the worker, with a cancelled result, within the grace period."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.core.lifecycle import ExitCode, TrialState
from orchestrator.core.worker_contract import AttemptResult, AttemptSpec
from orchestrator.files import write_trial

ROOT = Path(__file__).resolve().parents[3]
# run_trial replaced by code that swallows every SystemExit, as a stuck library would.
SWALLOWING_WORKER = """
import sys, time
import worker.cli as cli
import worker.train as train
cli.STOP_GRACE_SECONDS = 1.0
def swallowing(trial, probe_only=False):
    ready = False
    while True:
        try:  # READY and the whole waiting loop inside the try: a SIGTERM sent after READY
            if not ready:  # always lands in here and is swallowed, never between iterations
                ready = True
                print("READY", flush=True)
            while True:
                time.sleep(0.05)
        except SystemExit:
            pass
train.run_trial = swallowing
sys.exit(cli.main(["run", "--trial", sys.argv[1]]))
"""


def test_a_swallowed_stop_still_ends_the_trial_as_cancelled(tmp_path: Path) -> None:
    trial = AttemptSpec(sweep="s", trial_id="t", lane="l", model="ladder/t5-tiny-s",
                      method="full", output_dir=str(tmp_path / "out"))
    path = write_trial(trial, tmp_path / "trial.json")
    env = {k: v for k, v in os.environ.items() if k != "LADDER_DB_URL"}
    env["PYTHONPATH"] = str(ROOT)
    worker = subprocess.Popen([sys.executable, "-c", SWALLOWING_WORKER, str(path)], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == "READY"
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=60)
    assert time.monotonic() - started < 30, "the watchdog did not end the stuck worker"
    result = AttemptResult.from_output(out)
    assert result is not None, err[-2000:]
    assert result.status is TrialState.CANCELLED
    assert worker.returncode == ExitCode.FAILED
    assert "did not unwind" in err
