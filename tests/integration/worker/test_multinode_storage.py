"""A trial whose Ray Train worker runs on another node than the driver, with its own disk.

On Kubernetes the driver and Ray Train's controller run on the head pod and every rank on a
worker pod: `<outputDir>` is a different directory on each pod. Here two real Ray nodes on
this machine stand in for the two pods: the head (no CPUs, so no rank can land there) and a
second node started inside a mount namespace whose `<outputDir>` is a tmpfs of its own. Ray
Train V2 refused any checkpoint from such a rank ("Unable to set up cluster storage"); the
trial must succeed with its whole summary, carried without a checkpoint or shared storage.

Needs root (a mount namespace and a tmpfs) and util-linux's `unshare`; skipped otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core.lifecycle import ExitCode, TrialState
from orchestrator.core.worker_contract import AttemptResult
from orchestrator.files import write_trial
from tests.integration.worker.test_worker_training import ROOT, stored, tiny_trial
from tests.integration.worker.two_nodes import can_isolate, two_pods

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not can_isolate(), reason="needs root and unshare for a mount namespace"),
]


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    run_dir = tmp_path / "run"
    with two_pods(run_dir) as (address, env):
        yield address, run_dir, env


def test_rank_on_another_node_with_its_own_disk(
    pods: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    address, run_dir, env = pods
    url = f"sqlite:///{tmp_path / 'ladder.db'}"  # outside the tmpfs: both nodes see it
    trial = tiny_trial(tmp_path, "lora", training={
        "epochs": 2, "learningRate": 1e-3, "batchSize": 2, "precision": "fp32", "init": "random",
        "maxInputTokens": 64, "maxOutputTokens": 48, "generateLimit": 2},
        dataset={"source": "builtin:querydsl", "size": 12, "preamble": "short"},
        resources={"workers": 1, "gpusPerWorker": 0, "cpusPerWorker": 1})
    assert Path(trial.output_dir) == run_dir
    trial_file = write_trial(trial, tmp_path / "t.json")
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--trial", str(trial_file)],
        cwd=ROOT, env={**env, "RAY_ADDRESS": address, "LADDER_DB_URL": url},
        capture_output=True, text=True, timeout=600)

    result = AttemptResult.from_output(done.stdout)
    assert result is not None, done.stderr[-3000:]
    assert result.status is TrialState.SUCCEEDED, result.error
    assert done.returncode == ExitCode.SUCCEEDED
    # The whole summary reached the driver from the other node.
    assert [e.epoch for e in result.epochs] == [1, 2] and result.best_epoch in (1, 2)
    assert result.time_to_first_step_seconds > 0 and result.peak_host_memory_bytes > 0
    (row,) = stored(url)
    assert row.status is TrialState.SUCCEEDED and len(row.epochs) == 2
    # The driver's side of the output directory holds the result; the rank's tmpfs is gone.
    assert AttemptResult.model_validate_json((run_dir / "result.json").read_text()) == result
