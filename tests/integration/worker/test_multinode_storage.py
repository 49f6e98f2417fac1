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

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core.lifecycle import ExitCode, TrialState
from orchestrator.core.trial import TrialResult
from tests.integration.worker.test_worker_training import ROOT, stored, tiny_trial

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                       reason="needs root and unshare for a mount namespace"),
]

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End a `ray start --block` we started, with the Ray processes of its session."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            break
        os.killpg(process.pid, sig)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # raylet's workers left in the group, if any


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the Ray head did not listen on port {port}")


def _wait_for_nodes(address: str, env: dict[str, str], count: int, timeout: float = 90) -> None:
    script = (f"import ray; ray.init(address={address!r}, include_dashboard=False, "
              "configure_logging=False); print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=60)
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise AssertionError(f"{count} Ray nodes did not come up at {address}")


@pytest.fixture
def two_pods(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """(GCS address, the output directory, env): a head node and a 'worker pod' node whose
    view of the output directory is a tmpfs of its own."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    temp_dir = Path(tempfile.mkdtemp(prefix="lmn-", dir="/tmp"))  # Ray's socket paths are short
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = subprocess.Popen(
        [RAY, "start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
         f"--temp-dir={temp_dir}", *common],
        env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    pod = None
    try:
        _wait_for_port(port)
        node = " ".join([RAY, "start", f"--address={address}", "--num-cpus=2", *common])
        pod = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f'mount -t tmpfs -o size=256m worker-pod-disk "{run_dir}" && exec {node}'],
            env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        _wait_for_nodes(address, env, 2)
        yield address, run_dir, env
    finally:
        if pod is not None:
            _stop(pod)
        _stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_rank_on_another_node_with_its_own_disk(
    two_pods: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    address, run_dir, env = two_pods
    url = f"sqlite:///{tmp_path / 'ladder.db'}"  # outside the tmpfs: both nodes see it
    trial = tiny_trial(tmp_path, "lora", training={
        "epochs": 2, "learningRate": 1e-3, "batchSize": 2, "precision": "fp32", "init": "random",
        "maxInputTokens": 64, "maxOutputTokens": 48, "generateLimit": 2},
        dataset={"source": "builtin:querydsl", "size": 12, "preamble": "short"},
        resources={"workers": 1, "gpusPerWorker": 0, "cpusPerWorker": 1})
    assert Path(trial.output_dir) == run_dir
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--trial", str(trial.write(tmp_path / "t.json"))],
        cwd=ROOT, env={**env, "RAY_ADDRESS": address, "LADDER_DB_URL": url},
        capture_output=True, text=True, timeout=600)

    result = TrialResult.from_output(done.stdout)
    assert result is not None, done.stderr[-3000:]
    assert result.status is TrialState.SUCCEEDED, result.error
    assert done.returncode == ExitCode.SUCCEEDED
    # The whole summary reached the driver from the other node.
    assert [e.epoch for e in result.epochs] == [1, 2] and result.best_epoch in (1, 2)
    assert result.time_to_first_step_seconds > 0 and result.peak_host_memory_bytes > 0
    (row,) = stored(url)
    assert row.status is TrialState.SUCCEEDED and len(row.epochs) == 2
    # The driver's side of the output directory holds the result; the rank's tmpfs is gone.
    assert TrialResult.model_validate_json((run_dir / "result.json").read_text()) == result
