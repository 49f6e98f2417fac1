"""Small trials that start fast: the startup marks, lazy method libraries, and a one-CPU-worker
trial trained in its driver process when the local backend asks (no Ray Train, no Ray)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backends.local import LocalRayBackend
from orchestrator.core.lifecycle import TrialState
from orchestrator.core.names import RANK_IN_DRIVER_ENV
from orchestrator.core.worker_contract import AttemptSpec, single_cpu_rank
from worker.phases import PHASES, breakdown, log_startup, parse_startup

ROOT = Path(__file__).resolve().parents[3]


def _trial(tmp_path: Path, **fields: Any) -> AttemptSpec:
    return AttemptSpec.model_validate({
        "sweep": "s", "trial_id": "t", "lane": "l", "model": "ladder/t5-tiny-s",
        "method": "full", "output_dir": str(tmp_path / "run"),
        "training": {"epochs": 2, "init": "random", "precision": "fp32", "batchSize": 4,
                     "maxInputTokens": 64, "maxOutputTokens": 32, "generateLimit": 1},
        "dataset": {"source": "builtin:querydsl", "size": 12, "preamble": "short"},
        "resources": {"workers": 1, "gpusPerWorker": 0, "cpusPerWorker": 1}, **fields})


def test_breakdown_orders_phases_and_never_goes_back() -> None:
    marks = {"driver_process": 10.0, "driver_main": 11.0, "driver_imports": 14.0,
             "rank_process": 12.0, "rank_loop": 15.0, "first_step": 17.5}
    rows = breakdown(marks, start=9.0)
    assert [name for name, _ in rows] == [
        p for p, m in PHASES if m in marks]
    seconds = dict(rows)
    assert seconds["job submission to driver process"] == 1.0
    assert seconds["driver imports (torch, worker)"] == 3.0
    assert seconds["Ray Train controller + worker group"] == 0.0  # a reused process: clamped
    assert seconds["rank 0 process to training loop"] == 1.0  # from the latest mark, 14
    assert sum(seconds.values()) == pytest.approx(17.5 - 9.0)


def test_startup_line_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    log_startup({"first_step": 3.5, "driver_main": 1.25})
    text = "noise\n(RayTrainWorker pid=1) " + capsys.readouterr().err + "more noise\n"
    assert parse_startup(text) == {"first_step": 3.5, "driver_main": 1.25}
    assert parse_startup("ladder-startup {broken") is None


@pytest.mark.slow  # a fresh interpreter importing torch, transformers, peft, bitsandbytes
def test_full_fine_tuning_imports_neither_peft_nor_bitsandbytes() -> None:
    code = ("import sys\nfrom worker.models import import_method_libraries, build_model\n"
            "from orchestrator.core.lifecycle import Method\n"
            "import_method_libraries(Method.FULL)\n"
            "print(sorted(m for m in ('peft', 'bitsandbytes') if m in sys.modules))\n"
            "import_method_libraries(Method.QLORA)\n"
            "print(sorted(m for m in ('peft', 'bitsandbytes') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=300).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "['bitsandbytes', 'peft']"


def test_the_result_path_and_the_progress_actor_import_no_torch() -> None:
    """The fast stand-in worker (worker.result) and a trial's ProgressBox actor process
    (worker.progress) start without torch: about 3 CPU-seconds each on two cores otherwise."""
    code = ("import sys\nimport worker.result, worker.progress\n"
            "print(sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=300).stdout.strip()
    assert out == "[]"


def test_which_trials_train_in_the_driver(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.train import rank_in_driver

    one_cpu = _trial(tmp_path)
    two = _trial(tmp_path, resources={"workers": 2, "gpusPerWorker": 0, "cpusPerWorker": 1})
    gpu = _trial(tmp_path, resources={"workers": 1, "gpusPerWorker": 1, "cpusPerWorker": 1})
    assert single_cpu_rank(one_cpu) and not single_cpu_rank(two) and not single_cpu_rank(gpu)
    monkeypatch.delenv(RANK_IN_DRIVER_ENV, raising=False)
    assert not rank_in_driver(one_cpu)  # a cluster's RayJob: Ray Train, always
    monkeypatch.setenv(RANK_IN_DRIVER_ENV, "1")
    assert rank_in_driver(one_cpu) and not rank_in_driver(two) and not rank_in_driver(gpu)
    # The local backend asks for it, for every job.
    assert LocalRayBackend(runs_dir=tmp_path, db_url="sqlite://")._job_env()[
        RANK_IN_DRIVER_ENV] == "1"


def test_a_one_cpu_worker_trial_trains_in_the_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole recipe, in this process: epochs, losses, generation, the startup marks; Ray
    never joined (no ray.init, so no Ray Train worker group)."""
    from worker import phases
    from worker.train import run_trial

    monkeypatch.setenv(RANK_IN_DRIVER_ENV, "1")
    monkeypatch.delenv("LADDER_DB_URL", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    def ray_up() -> bool:
        return "ray" in sys.modules and sys.modules["ray"].is_initialized()

    ray_before = ray_up()  # another test of this process may have started Ray already
    result = run_trial(_trial(tmp_path))
    assert result.status is TrialState.SUCCEEDED, result.error
    assert [e.epoch for e in result.epochs if e.epoch > 0] == [1, 2]  # 0: the baseline
    assert result.best_eval_loss is not None and result.time_to_first_step_seconds > 0
    assert result.json_valid_rate is not None  # generation ran at the last epoch
    assert ray_up() == ray_before  # the driver's rank neither started nor stopped Ray
    marks = phases.marks()
    assert {"dataset", "trainer", "rank_loop", "rank_imports", "model", "encoded",
            "first_step"} <= set(marks)
    assert "rank_process" not in marks  # no process of its own


def test_a_budget_oom_in_the_driver_is_an_oom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A memory budget blown in the driver's rank: classified as a budget OOM, as from a
    Ray Train rank."""
    from worker.train import run_trial

    monkeypatch.setenv(RANK_IN_DRIVER_ENV, "1")
    monkeypatch.delenv("LADDER_DB_URL", raising=False)
    result = run_trial(_trial(tmp_path, memory_budget_bytes=1))
    assert result.status is TrialState.OOM, result.error
    assert result.oom_kind is not None and result.oom_kind.value == "budget"
