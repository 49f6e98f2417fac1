"""The worker environment (expandable CUDA segments) everywhere a trial runs, and a mid-run
OOM recorded as an OOM at its epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from orchestrator.backends.local import LocalRayBackend
from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.core.worker_contract import WORKER_ENV, AttemptSpec
from orchestrator.operator.manifests import ExecutionConfig, runtime_env

ALLOC = "PYTORCH_CUDA_ALLOC_CONF"


def _trial(tmp_path: Path, **fields: Any) -> AttemptSpec:
    return AttemptSpec.model_validate({
        "sweep": "s", "trial_id": "t", "lane": "l", "model": "ladder/t5-tiny-s",
        "method": "full", "output_dir": str(tmp_path / "run"),
        "training": {"epochs": 3, "init": "random", "precision": "fp32"},
        "dataset": {"source": "builtin:querydsl", "size": 8, "preamble": "short"},
        "resources": {"workers": 1, "gpusPerWorker": 0, "cpusPerWorker": 1}, **fields})


def test_the_constant() -> None:
    assert WORKER_ENV == {ALLOC: "expandable_segments:True"}


@pytest.mark.parametrize(("execution", "expected"), [
    pytest.param({}, "expandable_segments:True", id="default"),
    pytest.param({"runtimeEnv": {"env_vars": {ALLOC: "max_split_size_mb:512"}}},
                 "max_split_size_mb:512", id="runtime-env-wins"),
    pytest.param({"env": [{"name": ALLOC, "value": "backend:cudaMallocAsync"}]}, None,
                 id="container-env-left-alone"),
])
def test_rayjob_runtime_env(tmp_path: Path, execution: dict[str, Any],
                            expected: str | None) -> None:
    env = runtime_env(_trial(tmp_path), ExecutionConfig.model_validate(execution))["env_vars"]
    assert env.get(ALLOC) == expected


def test_local_backend_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOC, raising=False)
    backend = LocalRayBackend(runs_dir=tmp_path, db_url="sqlite://")
    assert backend._job_env()[ALLOC] == "expandable_segments:True"
    monkeypatch.setenv(ALLOC, "max_split_size_mb:512")  # the user's own, inherited by Ray
    assert ALLOC not in backend._job_env()


@pytest.mark.parametrize(("reported", "note"), [
    pytest.param({}, None, id="before-the-probe"),
    pytest.param({"time_to_first_step_seconds": 4.2, "epochs_completed": 0, "epochs": []},
                 "out of memory in epoch 1, after the probe step", id="first-epoch"),
])
def test_mid_run_oom_is_an_oom_at_its_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reported: dict[str, Any], note: str | None
) -> None:
    """Stand-in for a GPU that runs out of memory mid-run (none here): `fit` fails with torch's
    OOM after rank 0 published what it had; the real path is tests/bench/gpu_checks.py."""
    from worker import train

    def failing_fit(trial, loop, storage, name, out: dict[str, Any]) -> dict[str, Any]:
        out.update(reported)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "fit", failing_fit)
    monkeypatch.delenv("LADDER_DB_URL", raising=False)
    result = train.run_trial(_trial(tmp_path))
    assert (result.status, result.oom_kind) == (TrialState.OOM, OOMKind.GPU)
    if note is None:
        assert result.error.startswith("OutOfMemoryError: ")
        assert result.time_to_first_step_seconds is None
    else:
        assert result.error.startswith(note) and "OutOfMemoryError: CUDA out" in result.error
        assert result.time_to_first_step_seconds == 4.2 and result.epochs_completed == 0


def test_mid_run_oom_after_two_epochs() -> None:
    from worker.train import mid_run_oom_note

    assert mid_run_oom_note(TrialState.OOM, {"time_to_first_step_seconds": 1.0,
                                             "epochs_completed": 2}).startswith(
        "out of memory in epoch 3")
    assert mid_run_oom_note(TrialState.FAILED, {"time_to_first_step_seconds": 1.0}) is None
