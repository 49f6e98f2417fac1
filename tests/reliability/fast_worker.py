"""A FAST STAND-IN for the training inside a trial, for the fault-injection tests.

THIS DOES NOT TRAIN. Real training takes minutes per trial on two CPU cores, and the fault
tests need dozens of sweeps; what they exercise is everything around a trial (controller,
RayJobs, store, retries). So this program takes the worker's place in the entrypoint the
controller writes (`<python> -m worker run --trial FILE`, with `execution.python` pointing
at a shim that runs `main`) and honours the rest of the worker contract for real:

- reads the resolved trial from FILE (`AttemptSpec`); writes its pid to
  `<outputDir>/worker.pid` (so a test can kill it);
- records the attempt as running, writes one epoch row per epoch live (`worker.result`'s
  `mark_running` and `EpochSink`: best effort, as in the real worker);
- ends with one `AttemptResult` delivered by the real `worker.result.deliver` (the store, with
  its bounded retries; `result.json`; the result line on stdout) and the contract's exit
  code: 0 succeeded, 3 out of memory.

Knobs, from the environment (a Sweep's `execution.runtimeEnv.env_vars`):
  LADDER_FAST_EPOCHS          epochs to "run" (default 2)
  LADDER_FAST_EPOCH_SECONDS   seconds each epoch takes (default 0.5)
  LADDER_FAST_OOM_MODELS      comma-separated models that end in a budget OOM instead
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.core.worker_contract import AttemptResult, AttemptSpec, EpochRecord
from orchestrator.files import read_trial
from worker.result import EpochSink, deliver, exit_code, mark_running, store_url

EPOCHS_ENV = "LADDER_FAST_EPOCHS"
EPOCH_SECONDS_ENV = "LADDER_FAST_EPOCH_SECONDS"
OOM_MODELS_ENV = "LADDER_FAST_OOM_MODELS"


def expected_loss(trial: AttemptSpec, epoch: int) -> float:
    """The eval loss this stand-in reports: a deterministic function of the trial, so a test
    can tell the worker's own result from anything else written to the store."""
    return round(1.0 / (epoch + trial.model_index + 1), 6)


PID_FILE = "worker.pid"


def run(trial: AttemptSpec) -> AttemptResult:
    started, t0 = datetime.now(UTC), time.monotonic()
    # Where a test finds this process to kill it (a Ray worker dying mid-trial).
    (Path(trial.output_dir) / PID_FILE).write_text(str(os.getpid()), encoding="utf-8")
    mark_running(trial, started)
    sink = EpochSink(trial, store_url(trial))
    epochs: list[EpochRecord] = []
    seconds = float(os.environ.get(EPOCH_SECONDS_ENV, "0.5"))
    for epoch in range(1, int(os.environ.get(EPOCHS_ENV, "2")) + 1):
        time.sleep(seconds)
        record = EpochRecord(
            epoch=epoch, train_loss=expected_loss(trial, epoch) + 0.1,
            train_label_loss=expected_loss(trial, epoch), eval_loss=expected_loss(trial, epoch),
            learning_rate=1e-4, samples_per_second=100.0, wall_seconds=seconds,
        )
        epochs.append(record)
        sink.write(record)
    oom_models = {m for m in os.environ.get(OOM_MODELS_ENV, "").split(",") if m}
    common = {"started_at": started, "finished_at": datetime.now(UTC),
              "wall_seconds": time.monotonic() - t0}
    if trial.model in oom_models:
        return AttemptResult.for_trial(
            trial, status=TrialState.OOM, oom_kind=OOMKind.BUDGET,
            error="MemoryBudgetExceeded: the fast stand-in's budget OOM", **common)
    best = min(epochs, key=lambda e: e.eval_loss)
    return AttemptResult.for_trial(
        trial, status=TrialState.SUCCEEDED, best_eval_loss=best.eval_loss,
        best_epoch=best.epoch, epochs_completed=len(epochs), samples_per_second=100.0,
        epochs=epochs, **common)


def main(argv: Sequence[str]) -> int:
    """`... -m worker run --trial FILE`, as the controller's entrypoint calls the worker."""
    args = list(argv)
    trial = read_trial(Path(args[args.index("--trial") + 1]))
    result = run(trial)
    deliver(result, trial)
    return int(exit_code(result))


def write_shim(path: Path) -> Path:
    """An executable that runs `main`, for `execution.python` (the entrypoint calls it as
    the interpreter: `<shim> -m worker run --trial FILE`)."""
    path.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "from tests.reliability.fast_worker import main\n"
        "sys.exit(main(sys.argv[1:]))\n",
        encoding="utf-8",
    )
    path.chmod(0o755)
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
