"""Fixtures for tests on the test cluster of ``tests/k8s/cluster/up.sh``: a kube-apiserver
with the real kube-scheduler, kube-controller-manager, KubeRay operator and Kueue, and two fake
GPU nodes (kwok, 4 x nvidia.com/gpu each).

STAND-INS, named: no container runs. kwok marks pods Running; a process a pod would run
(a Ray head) is started by the tests inside the cluster's network namespace, at the address
kwok gives every pod (198.51.100.2).

Environment:
    LADDER_SKIP_K8S=1 or LADDER_SKIP_REALCLUSTER=1   skip these tests.
    LADDER_KUEUE=1   build Kueue (1627 Go packages; cluster/README.md) so that up.sh starts it;
                     without it Kueue runs only when a build is cached (test_kueue.py skips).
    LADDER_CLUSTER_DIR (default /tmp/ladder-cluster), LADDER_CLUSTER_*: see cluster/env.sh.
    A cluster already up (a developer's `up.sh` with the same LADDER_CLUSTER_DIR) is reused
    and left running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.backends.ray_head import stop_head
from tests.k8s.conftest import ControlPlane
from tests.k8s.operator_harness import REPO_ROOT, http_ok, wait_for

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"
CONTROLPLANE_DIR = Path(__file__).resolve().parents[1] / "controlplane"
STATE_DIR = Path(os.environ.get("LADDER_CLUSTER_DIR", "/tmp/ladder-cluster"))
NETNS = os.environ.get("LADDER_CLUSTER_NETNS", "ladder-cluster")
NODE_IP = "198.51.100.2"  # every fake node's and pod's address (cluster/env.sh)
RAY_VERSION = "2.60.0"  # the installed Ray (checked by ray_head); KubeRay needs rayVersion
DASHBOARD_PORT = 8265  # KubeRay's head Service port "dashboard"
BUILD_TIMEOUT_S = int(os.environ.get("LADDER_CP_BUILD_TIMEOUT", "3600"))
START_TIMEOUT_S = 300

_build: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "realcluster: needs the test cluster of tests/k8s/cluster/up.sh (root, built binaries)",
    )


def skip_reason() -> str | None:
    if os.environ.get("LADDER_SKIP_K8S") == "1" or os.environ.get("LADDER_SKIP_REALCLUSTER") == "1":
        return "LADDER_SKIP_K8S=1 / LADDER_SKIP_REALCLUSTER=1: skipping the real-cluster tests"
    if os.geteuid() != 0:
        return ("the test cluster needs root for its network namespace and veth pair "
                "(ip netns add); run as root, as CI does")
    if shutil.which("ip") is None:
        return "the test cluster needs iproute2's `ip` (network namespace)"
    return None


def _build_all() -> None:
    """The binaries up.sh needs, each by its own cached build (a hit takes a second)."""
    if _build:
        return
    steps = [
        ("tests/k8s/controlplane/build.sh", ["bash", str(CONTROLPLANE_DIR / "build.sh")]),
        ("tests/k8s/cluster/build.sh kwok", ["bash", str(CLUSTER_DIR / "build.sh"), "kwok"]),
        ("tests/k8s/cluster/build.sh kuberay",
         ["bash", str(CLUSTER_DIR / "build.sh"), "kuberay"]),
    ]
    if os.environ.get("LADDER_KUEUE") == "1":  # opt-in: 1627 Go packages (up.sh)
        steps.append(("tests/k8s/cluster/build.sh kueue",
                      ["bash", str(CLUSTER_DIR / "build.sh"), "kueue"]))
    for name, command in steps:
        try:
            proc = subprocess.run(command, capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _build["error"] = f"{name} timed out after {BUILD_TIMEOUT_S}s"
            return
        if proc.returncode != 0:
            _build["error"] = (f"{name} failed (exit {proc.returncode}); set "
                               f"LADDER_SKIP_REALCLUSTER=1 to skip.\n{proc.stderr[-4000:]}")
            return
        _build[name] = proc.stdout.strip().splitlines()[-1]
    _build["ok"] = "1"


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    # Build before the first test, so a cold build is not charged to one test's timeout.
    if session.config.option.collectonly or skip_reason():
        return
    if any(item.get_closest_marker("realcluster") for item in session.items):
        _build_all()


@dataclass
class Cluster(ControlPlane):
    """The running test cluster; kubectl helpers as admin (ControlPlane's)."""

    netns: str = NETNS
    node_ip: str = NODE_IP
    log_dir: Path = STATE_DIR

    def create_namespace(self, prefix: str = "ladder-real") -> str:
        """A namespace with a unique name and its ``default`` ServiceAccount, which the real
        kube-controller-manager makes (the bare control plane's helper creates it itself)."""
        name = f"{prefix}-{os.urandom(4).hex()}"
        self.kubectl_ok("create", "namespace", name)
        wait_for("the default ServiceAccount",
                 lambda: self.kubectl("-n", name, "get", "sa", "default").returncode == 0,
                 timeout=30, interval=0.3)
        return name

    def _env(self) -> dict[str, str]:
        # The control plane's scripts (sa-kubeconfig.sh) with this cluster's state and port.
        return {**super()._env(), "LADDER_CP_DIR": str(self.state_dir),
                "LADDER_CP_APISERVER_PORT": self.server.rsplit(":", 1)[1]}

    def netns_exec(self, *command: str) -> list[str]:
        """`command` run inside the cluster's network namespace (at the pods' address)."""
        return ["ip", "netns", "exec", self.netns, *command]

    def logs(self, *names: str, tail: int = 3000) -> str:
        parts = []
        for name in names:
            path = self.log_dir / f"{name}.log"
            if path.exists():
                parts.append(f"--- {path} ---\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)


def _ready(kubectl: Path, kubeconfig: Path) -> bool:
    if not kubeconfig.exists():
        return False
    proc = subprocess.run([str(kubectl), "--kubeconfig", str(kubeconfig), "--request-timeout=3s",
                           "get", "--raw", "/readyz"], capture_output=True, text=True, timeout=30)
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to up.sh: its trap stops every component and removes the namespace."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The test cluster, started by `tests/k8s/cluster/up.sh` (and stopped at the end of the
    session), or one already up, reused and left running."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    _build_all()
    if "error" in _build:
        pytest.fail(_build["error"], pytrace=False)
    bin_dir = Path(_build["tests/k8s/controlplane/build.sh"])
    kubeconfig = STATE_DIR / "controlplane" / "admin.kubeconfig"
    server = f"https://127.0.0.1:{os.environ.get('LADDER_CLUSTER_APISERVER_PORT', '27443')}"
    process: subprocess.Popen[bytes] | None = None
    if not ((STATE_DIR / "ready").exists() and _ready(bin_dir / "kubectl", kubeconfig)):
        log_path = tmp_path_factory.mktemp("cluster") / "up.log"
        with log_path.open("wb") as out:
            process = subprocess.Popen(["bash", str(CLUSTER_DIR / "up.sh")], stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (STATE_DIR / "ready").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                _stop(process)
                pytest.fail(f"tests/k8s/cluster/up.sh did not get ready (exit "
                            f"{process.returncode}):\n{log_path.read_text()[-5000:]}",
                            pytrace=False)
            time.sleep(0.5)
    try:
        yield Cluster(kubeconfig=kubeconfig, bin_dir=bin_dir,
                      state_dir=STATE_DIR / "controlplane", server=server)
    finally:
        if process is not None:
            with contextlib.suppress(Exception):
                _stop(process)


@contextlib.contextmanager
def ray_head(cluster: Cluster, db_url: str) -> Iterator[str]:
    """STAND-IN for the head pods' processes: a real Ray head inside the cluster's network
    namespace at the pods' address, its dashboard on 8265 (what the head Service points at).
    Token auth is off (RAY_AUTH_MODE=disabled): Ray 2.60 turns it on by default, and then the
    operator, which sends no token here, gets 401 and the RayJob never ends. Yields the
    dashboard's URL."""
    import ray

    assert ray.__version__ == RAY_VERSION, "update RAY_VERSION to the installed Ray"
    temp = tempfile.mkdtemp(prefix="ladder-ray-", dir="/tmp")  # short: Ray's socket paths
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        # What the head container would have: the store's URL from the Secret, the worker
        # package and an interpreter that has it.
        "LADDER_DB_URL": db_url,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH"))
                                      if p),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    url = f"http://{NODE_IP}:{DASHBOARD_PORT}"

    def answers() -> bool:
        return http_ok(f"{url}/api/version")

    # The address is fixed (the head Service's): a head left from an earlier test would answer
    # the probe below in this one's place, with that test's jobs in its table.
    wait_for(f"no Ray dashboard left at {url} from an earlier test", lambda: not answers(),
             timeout=60, interval=1)
    command = cluster.netns_exec(
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
        f"--node-ip-address={NODE_IP}", f"--dashboard-host={NODE_IP}",
        f"--dashboard-port={DASHBOARD_PORT}", "--include-dashboard=true",
        "--num-cpus=4", "--num-gpus=0", f"--object-store-memory={256 * 2**20}",
        f"--temp-dir={temp}", "--disable-usage-stats",
    )
    log_path = Path(temp) / "ray-start.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"ray start exited:\n{log_path.read_text()[-3000:]}")
        return answers()

    try:
        wait_for("the Ray head's dashboard in the namespace", up, timeout=120, interval=1)
        yield url
    finally:
        # The whole process group and every process of its directory: Ray's daemons, the
        # dashboard and the jobs' drivers (`ray start --block` alone, on SIGTERM, once left
        # its dashboard answering for the next test, and takes 30 s or more after jobs).
        stop_head(process.pid, temp)
        process.wait(timeout=30)
        wait_for(f"the Ray dashboard at {url} to stop", lambda: not answers(), timeout=60,
                 interval=1)
        shutil.rmtree(temp, ignore_errors=True)
