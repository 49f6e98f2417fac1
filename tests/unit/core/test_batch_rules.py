"""How `training.batchSize` and `training.microBatchSize` split over workers and passes: one
rule (orchestrator.core.spec.Training) that the worker, the estimator and the simulator share."""

from __future__ import annotations

import pytest

from orchestrator.core.estimate import estimate_trial
from orchestrator.core.grid import expand
from orchestrator.core.spec import Sweep, SweepSpec, Training


@pytest.mark.parametrize(("batch", "micro", "workers", "share", "per_pass", "passes"), [
    pytest.param(8, None, 8, 1, 1, 1, id="paper-1-per-gpu"),
    pytest.param(8, None, 1, 8, 8, 1, id="one-worker-one-pass"),
    pytest.param(8, 1, 1, 8, 1, 8, id="one-worker-eight-passes"),
    pytest.param(8, 3, 1, 8, 3, 3, id="uneven-last-pass"),
    pytest.param(8, 2, 4, 2, 2, 1, id="micro-equal-to-share"),
    pytest.param(8, 16, 2, 4, 4, 1, id="micro-above-share"),
    pytest.param(6, None, 4, 1, 1, 1, id="rounded-down-to-one"),
])
def test_batch_splits(batch: int, micro: int | None, workers: int, share: int, per_pass: int,
                      passes: int) -> None:
    training = Training(batch_size=batch, micro_batch_size=micro)
    assert training.per_worker_batch(workers) == share
    assert training.pass_batch(workers) == per_pass
    assert training.accumulation_steps(workers) == passes


def test_micro_batches_shrink_the_memory_estimate_not_the_batch() -> None:
    def estimate(micro: int | None) -> int:
        spec = SweepSpec.model_validate({
            "ladder": ["google/flan-t5-xl"], "methods": ["lora"],
            "adapters": [{"rank": 64, "alphas": [256]}],
            "training": {"batchSize": 8, "microBatchSize": micro},
            "resources": {"workers": 1, "gpusPerWorker": 1},
        })
        (trial,) = expand(Sweep(name="m", spec=spec)).all_trials()
        estimate = estimate_trial(spec, trial)
        assert estimate is not None
        return estimate.total_bytes

    whole, passes = estimate(None), estimate(1)
    assert passes < whole
    assert passes < 80 * 2**30 < whole  # XL LoRA at 1400/1024 tokens: 8 at once do not fit
