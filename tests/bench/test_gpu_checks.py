"""The GPU readiness checks' CPU-side logic: the script imports, its trials are valid specs,
and each verdict passes what the fixed code produces and fails what the bug produced (the
results here are built by hand; the checks themselves run on a GPU machine)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.core.worker_contract import AttemptResult, EpochRecord
from tests.bench.test_bench_quick import load

GiB = 2**30


@pytest.fixture(scope="module")
def checks():
    return load("gpu_checks")


def _result(**fields: Any) -> AttemptResult:
    base: dict[str, Any] = {"sweep": "gpu-checks", "trial_id": "t", "lane": "l",
                            "model": "google/flan-t5-base", "method": "lora",
                            "status": TrialState.SUCCEEDED}
    return AttemptResult.model_validate({**base, **fields})


def _epochs(peaks: list[int | None]) -> list[EpochRecord]:
    return [EpochRecord(epoch=i + 1, train_loss=1.0, train_label_loss=1.0, eval_loss=1.0,
                        learning_rate=1e-4, samples_per_second=10.0, wall_seconds=1.0,
                        peak_gpu_memory_bytes=p) for i, p in enumerate(peaks)]


def test_the_trials_are_valid(checks) -> None:
    spec = checks.trial("x", "google/flan-t5-xl", "full", batch=512, size=600, budget=GiB)
    assert spec.training.per_worker_batch(1) == 512 and spec.memory_budget_bytes == GiB
    assert checks.trial("y", "google/flan-t5-base", "lora", workers=2).resources.workers == 2


def test_storage_verdict(checks) -> None:
    ok = _result(epochs=_epochs([1, 2]))
    assert checks.judge_storage(ok, 2).ok
    refused = _result(status=TrialState.FAILED, error="RuntimeError: Unable to set up cluster "
                      "storage with the following settings: ...")
    assert not checks.judge_storage(refused, 2).ok
    assert not checks.judge_storage(_result(epochs=_epochs([1])), 2).ok


def test_oom_verdict(checks) -> None:
    at_probe = _result(status=TrialState.OOM, oom_kind=OOMKind.GPU, epochs_completed=0)
    assert checks.judge_oom(at_probe, OOMKind.GPU).ok
    # The bug of item 4: a budget above the card labelled every OOM `budget`.
    assert not checks.judge_oom(at_probe, OOMKind.BUDGET).ok
    assert not checks.judge_oom(_result(status=TrialState.FAILED), OOMKind.GPU).ok
    late = _result(status=TrialState.OOM, oom_kind=OOMKind.GPU, epochs_completed=2)
    assert not checks.judge_oom(late, OOMKind.GPU).ok
    assert checks.judge_oom(late, OOMKind.GPU, at_probe=False).ok


def test_peaks_verdict(checks) -> None:
    good = _result(epochs=_epochs([30 * GiB, 28 * GiB, 33 * GiB]), peak_gpu_memory_bytes=34 * GiB,
                   peak_torch_allocated_bytes=29 * GiB, time_to_first_step_seconds=20.0)
    assert checks.judge_peaks(good).ok
    # The bug of item 7: every epoch reported the run's peak so far.
    stuck = good.model_copy(update={"epochs": _epochs([34 * GiB] * 3)})
    assert not checks.judge_peaks(stuck).ok
    no_nvml = good.model_copy(update={"peak_gpu_memory_bytes": None})  # MIG lookup failed
    assert not checks.judge_peaks(no_nvml).ok
    context = good.model_copy(update={"peak_torch_allocated_bytes": 34 * GiB})
    assert not checks.judge_peaks(context).ok
