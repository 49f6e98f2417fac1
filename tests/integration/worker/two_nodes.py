"""Two real Ray nodes on this machine standing in for a head pod and a worker pod: the head
with no CPUs or GPUs (no rank can land there), the second node, where the ranks run, inside a
mount namespace whose output directory is a tmpfs of its own (a pod's own disk). Used by
tests/integration/worker/test_multinode_storage.py and, on a GPU machine, by
tests/bench/gpu_checks.py. Needs root and util-linux's `unshare` for the mount namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from orchestrator.backends.ray_head import stop_head
from orchestrator.core.names import LOOPBACK_ENV, LOOPBACK_NODE_IP
from orchestrator.ports import free_port, free_ports

ROOT = Path(__file__).resolve().parents[3]

RAY = str(Path(sys.executable).parent / "ray")


def _node_ports() -> list[str]:
    """Free ports for a node's agents: Ray's defaults (the dashboard agent's 52365) are fixed,
    so a second runtime on the machine (another pytest-xdist worker's) would collide."""
    flags = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
             "--metrics-export-port", "--runtime-env-agent-port", "--node-manager-port",
             "--object-manager-port")
    return [f"{flag}={port}" for flag, port in zip(flags, free_ports(len(flags)), strict=True)]


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex((LOOPBACK_NODE_IP, port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the Ray head did not listen on port {port}")


def _wait_for_nodes(address: str, env: dict[str, str], count: int, timeout: float = 240) -> None:
    script = (f"import ray; ray.init(address={address!r}, include_dashboard=False, "
              "configure_logging=False); print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # a loaded machine may take a minute just to import Ray: ask again
            done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                                  text=True, timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            continue
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise AssertionError(f"{count} Ray nodes did not come up at {address}")


def can_isolate() -> bool:
    """Whether a mount namespace can be made here (root, `unshare`)."""
    return os.geteuid() == 0 and shutil.which("unshare") is not None


@contextlib.contextmanager
def two_pods(run_dir: Path, *, cpus: int = 2, gpus: int = 0,
             isolate: bool = True) -> Iterator[tuple[str, dict[str, str]]]:
    """(GCS address, env) of a head node and a 'worker pod' node with `cpus` and `gpus`,
    whose view of `run_dir` is a tmpfs of its own when `isolate`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(tempfile.mkdtemp(prefix="lmn-", dir="/tmp"))  # Ray's socket paths are short
    port = free_port()
    address = f"{LOOPBACK_NODE_IP}:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", **LOOPBACK_ENV}
    common = ["--block", f"--node-ip-address={LOOPBACK_NODE_IP}", "--disable-usage-stats"]
    head = subprocess.Popen(
        [RAY, "start", "--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0",
         "--include-dashboard=false",
         f"--temp-dir={temp_dir}", *common, *_node_ports()],
        env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    pod = None
    try:
        _wait_for_port(port)
        node = " ".join([RAY, "start", f"--address={address}", f"--num-cpus={cpus}",
                         f"--num-gpus={gpus}", *common, *_node_ports()])
        command = (["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    f'mount -t tmpfs -o size=256m worker-pod-disk "{run_dir}" && exec {node}']
                   if isolate else ["sh", "-c", f"exec {node}"])
        pod = subprocess.Popen(
            command,
            env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        _wait_for_nodes(address, env, 2)
        yield address, env
    finally:
        # Both nodes' processes have the session's directory on their command lines.
        for process in (pod, head):
            if process is not None:
                stop_head(process.pid, str(temp_dir))
                process.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


