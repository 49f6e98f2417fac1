"""The worker for real: CPU training, SQLite store.

Each test is one tiny trial (ladder/t5-tiny-s, 24 examples, 3 epochs). Two paths run it:
- the cluster's: the driver starts a Ray Train worker group, as on a RayJob's head. Ray Train
  costs about 20 CPU-seconds of its own actors per trial and each rank about 15 more to import
  torch, transformers and peft on two cores, so only the tests about that path take it: LoRA
  with micro-batches on two ranks (gloo; DDP must sync on the last micro-batch only) and the
  SIGTERM tests (a stopped Ray job or a deleted RayJob must stop the worker group).
- the local backend's for a one-CPU-worker trial: the rank trains in the driver
  (RANK_IN_DRIVER_ENV), the same `train_loop_per_worker`. Full fine-tuning, QLoRA and the
  memory budget run so here; on the cluster's path they are run by tests/k8s (a trained trial
  and a budget OOM through the real worker on a Ray head) and tests/integration/sweep
  (paper-exact on T5, the decoder sweep: full and QLoRA through 2-rank DDP).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.core.lifecycle import ExitCode, OOMKind, TrialState
from orchestrator.core.names import RANK_IN_DRIVER_ENV
from orchestrator.core.worker_contract import AttemptResult, AttemptSpec
from orchestrator.files import write_trial

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def tiny_trial(tmp_path: Path, method: str, workers: int = 1, **fields: object) -> AttemptSpec:
    adapters = {} if method == "full" else {"rank": 8, "alpha": 16}
    values: dict[str, object] = {
        "sweep": "worker-it", "trial_id": f"t-{method}", "lane": f"lane-{method}",
        "model": "ladder/t5-tiny-s", "method": method,
        "training": {
            "epochs": 3, "learningRate": 1e-3, "batchSize": 4, "precision": "fp32",
            "init": "random", "maxInputTokens": 96, "maxOutputTokens": 64, "generateLimit": 4,
        },
        "dataset": {"source": "builtin:querydsl", "size": 24, "preamble": "short"},
        "resources": {"workers": workers, "gpusPerWorker": 0, "cpusPerWorker": 1},
        "output_dir": str(tmp_path / "run"),
    }
    return AttemptSpec.model_validate({**values, **adapters, **fields})


def stored(url: str) -> list[AttemptResult]:
    from orchestrator.store import all_attempts, open_store, to_result

    with open_store(url)() as session:
        return [to_result(row) for row in all_attempts(session, with_epochs=True)]


@pytest.mark.parametrize(
    ("method", "save_model", "micro_batch", "workers"),
    [
        pytest.param("full", "final", None, 1, id="full"),
        # Two passes of one example per step on each of two ranks: DDP syncs on the second only.
        pytest.param("lora", "best", 1, 2, id="lora-micro-batches"),
        pytest.param("qlora", "best", None, 1, id="qlora"),
    ],
)
def test_trains_and_stores(
    method: str, save_model: str, micro_batch: int | None, workers: int, ray_address: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.result import deliver
    from worker.train import run_trial

    url = f"sqlite:///{tmp_path / 'ladder.db'}"
    monkeypatch.setenv("LADDER_DB_URL", url)
    if workers == 1:  # as the local backend runs it; DDP takes Ray Train's worker group
        monkeypatch.setenv(RANK_IN_DRIVER_ENV, "1")
    trial = tiny_trial(tmp_path, method, workers)
    trial = trial.model_copy(
        update={"training": trial.training.model_copy(
            update={"save_model": save_model, "micro_batch_size": micro_batch})}
    )
    result = run_trial(trial)

    assert result.status is TrialState.SUCCEEDED, result.error
    baseline, *epochs = result.epochs  # epoch 0: the untuned model (training.baseline)
    assert baseline.epoch == 0 and baseline.train_loss is None and baseline.exact_match == 0
    assert baseline.eval_rationale_loss is not None and baseline.json_valid_rate is not None
    assert (result.baseline_eval_loss, result.baseline_exact_match) == (
        baseline.eval_loss, baseline.exact_match)
    assert result.epochs_completed == len(epochs) == 3
    losses = [e.eval_loss for e in epochs]
    assert losses[-1] < losses[0] and min(losses) < baseline.eval_loss  # training helped
    best = min(epochs, key=lambda e: e.eval_loss)
    assert (result.best_epoch, result.best_eval_loss) == (best.epoch, best.eval_loss)
    assert all(e.train_rationale_loss is not None for e in epochs)  # dssAlpha 0.5
    # Telemetry, measured.
    assert result.wall_seconds > 0 and result.samples_per_second > 0
    assert 0 < result.time_to_first_step_seconds < result.wall_seconds
    assert result.peak_host_memory_bytes > 0
    assert all(e.samples_per_second > 0 and e.wall_seconds > 0 for e in epochs)
    assert result.peak_gpu_memory_bytes is None and result.gpu_memory_per_device == []  # CPU
    # Generation after the last epoch, on generateLimit examples.
    assert 0 <= result.exact_match <= 1 and 0 <= result.json_valid_rate <= 1
    assert result.trainable_parameters <= result.total_parameters
    assert (result.trainable_parameters < result.total_parameters) == (method != "full")

    # Rank 0 kept the weights: the adapter for LoRA/QLoRA, of the epoch saveModel names.
    manifest = json.loads((tmp_path / "run" / "model" / "ladder-model.json").read_text())
    saved_epoch = result.best_epoch if save_model == "best" else 3
    assert (manifest["epoch"], manifest["method"]) == (saved_epoch, method)
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    assert (tmp_path / "run" / "model" / weights).stat().st_size > 0
    # ...and `ladder export` turns them into a plain model (tests/unit/worker/test_export.py).
    from worker.export import export_model

    exported = export_model(tmp_path / "run" / "model", tmp_path / "exported")
    assert (exported / "model.safetensors").stat().st_size > 0

    # Rank 0 wrote the epochs live; the final write then records the whole result.
    (live,) = stored(url)
    assert live.status is TrialState.RUNNING and [e.epoch for e in live.epochs] == [0, 1, 2, 3]
    assert deliver(result, trial)
    (final,) = stored(url)
    assert final.status is TrialState.SUCCEEDED
    assert final.best_eval_loss == result.best_eval_loss and final.epochs == result.epochs


def run_worker(trial_file: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "run", "--trial", str(trial_file)],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )


def test_memory_budget_ends_as_budget_oom(tmp_path: Path) -> None:
    """1 MiB: the model alone exceeds it, so the verdict comes right after it is built. The
    rank trains in the driver, as the local backend runs it (through Ray Train: tests/k8s)."""
    url = f"sqlite:///{tmp_path / 'ladder.db'}"
    trial = tiny_trial(tmp_path, "full", memory_budget_bytes=2**20)
    done = run_worker(write_trial(trial, tmp_path / "trial.json"),
                      {RANK_IN_DRIVER_ENV: "1", "LADDER_DB_URL": url})

    assert done.returncode == ExitCode.OOM, done.stderr[-3000:]
    result = AttemptResult.from_output(done.stdout.splitlines()[-1])  # the very last line
    assert result is not None
    assert (result.status, result.oom_kind) == (TrialState.OOM, OOMKind.BUDGET)
    assert result.error.startswith("MemoryBudgetExceeded: ")
    # The first check that sees host memory over 1 MiB gives the verdict, before any step:
    # after the model is built or, when that measurement is still under (RSS is noisy), after
    # the optimizer is.
    assert re.search(r"measured after (building the model|creating the optimizer)",
                     result.error), result.error
    assert result.epochs_completed == 0 and result.time_to_first_step_seconds is None
    (row,) = stored(url)
    assert (row.status, row.oom_kind) == (TrialState.OOM, OOMKind.BUDGET)
    assert AttemptResult.model_validate_json((tmp_path / "run/result.json").read_text()) == result


def test_bad_dataset_fails_with_the_file_named(tmp_path: Path) -> None:
    data = tmp_path / "broken.jsonl"
    data.write_text('{"input": "q", "label": "{}", "rationale": "r"}\n{"input": "q2"\n')
    url = f"sqlite:///{tmp_path / 'ladder.db'}"
    trial = tiny_trial(tmp_path, "lora", dataset={"source": str(data)})
    done = run_worker(write_trial(trial, tmp_path / "trial.json"), {"LADDER_DB_URL": url})

    assert done.returncode == ExitCode.FAILED, done.stderr[-3000:]
    result = AttemptResult.from_output(done.stdout)
    assert result is not None and result.status is TrialState.FAILED
    assert result.error.startswith(f"DatasetError: {data}:2: line is not valid JSON")
    (row,) = stored(url)
    assert row.status is TrialState.FAILED and row.error == result.error


@pytest.mark.parametrize("moment", [
    pytest.param("starting", id="before-training"),
    pytest.param("training", id="during-training"),
])
def test_sigterm_is_a_cancellation_not_a_failure(
    moment: str, ray_address: str, tmp_path: Path
) -> None:
    """Ray's stop_job and a deleted RayJob end the worker with SIGTERM: the trial was stopped,
    it did not fail, and the result still goes out (stdout, store)."""
    import signal
    import sqlite3
    import time

    url = f"sqlite:///{tmp_path / 'ladder.db'}"
    trial = tiny_trial(tmp_path, "full", training={
        "epochs": 200, "batchSize": 4, "precision": "fp32", "init": "random",
        "maxInputTokens": 96, "maxOutputTokens": 64})
    path = write_trial(trial, tmp_path / "trial.json")
    env = {**os.environ, "LADDER_DB_URL": url, "RAY_ADDRESS": ray_address,
           "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen([sys.executable, "-m", "worker", "run", "--trial", str(path)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)

    def state() -> str | None:
        try:
            with sqlite3.connect(tmp_path / "ladder.db") as db:
                row = db.execute("SELECT status FROM trials").fetchone()
                epochs = db.execute("SELECT count(*) FROM epochs").fetchone()[0]
        except sqlite3.OperationalError:
            return None
        if row is None:
            return None
        return "training" if epochs else row[0]

    deadline = time.monotonic() + 300
    wanted = "running" if moment == "starting" else "training"
    while state() != wanted and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.poll() is None, worker.communicate()[1][-3000:]
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=120)
    result = AttemptResult.from_output(out)
    assert result is not None, err[-3000:]
    assert result.status is TrialState.CANCELLED and "cancelled" in (result.error or "")
    assert worker.returncode == ExitCode.FAILED
    (row,) = stored(url)
    assert row.status is TrialState.CANCELLED
