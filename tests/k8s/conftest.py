"""Fixtures for tests that need a real Kubernetes API server.

The control plane is etcd + kube-apiserver built from Go modules by
``tests/k8s/controlplane/build.sh`` and started on 127.0.0.1 by
``tests/k8s/controlplane/start.sh`` (see that folder's README). There is no
kube-controller-manager, scheduler or kubelet: objects are stored, validated,
admitted and authorized (RBAC) for real, but nothing reconciles them.

Environment:
    LADDER_SKIP_K8S=1   skip every test that needs the control plane. Without it
                        a failed build or start fails those tests loudly.
    LADDER_CP_KEEP=1    leave a control plane that this session started running.
    LADDER_CP_DIR, LADDER_CP_CACHE, LADDER_CP_*_PORT: see controlplane/env.sh.
    LADDER_SHARED_CRDS  folder with the CRD bundles (default <repo>/tests/crds).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CONTROLPLANE_DIR = Path(__file__).resolve().parent / "controlplane"
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_CRDS = Path(os.environ.get("LADDER_SHARED_CRDS", REPO_ROOT / "tests" / "crds"))
KUBERAY_CRDS = SHARED_CRDS / "kuberay-v1.7.0"
PROMETHEUS_OPERATOR_CRDS = SHARED_CRDS / "prometheus-operator-v0.93.0"

# The first build compiles kube-apiserver, kubectl and etcd from source (many
# minutes on 2 cores); later builds are a cache hit and take about a second.
BUILD_TIMEOUT_S = int(os.environ.get("LADDER_CP_BUILD_TIMEOUT", "3600"))
START_TIMEOUT_S = 300

_build: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "k8s: needs the local kube-apiserver (tests/k8s/controlplane)"
    )


def _skip_k8s() -> bool:
    return os.environ.get("LADDER_SKIP_K8S") == "1"


def _build_controlplane() -> Path:
    """Run build.sh once per process; a cache hit returns in about a second."""
    if "bin" in _build:
        return _build["bin"]  # type: ignore[return-value]
    if "error" in _build:
        pytest.fail(str(_build["error"]), pytrace=False)
    try:
        proc = subprocess.run(
            ["bash", str(CONTROLPLANE_DIR / "build.sh")],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        _build["error"] = f"tests/k8s/controlplane/build.sh timed out after {exc.timeout}s"
        pytest.fail(str(_build["error"]), pytrace=False)
    if proc.returncode != 0:
        _build["error"] = (
            f"tests/k8s/controlplane/build.sh failed (exit {proc.returncode}); "
            "set LADDER_SKIP_K8S=1 to skip the k8s tests.\n"
            f"--- stderr (tail) ---\n{proc.stderr[-6000:]}"
        )
        pytest.fail(str(_build["error"]), pytrace=False)
    bin_dir = Path(proc.stdout.strip().splitlines()[-1])
    _build["bin"] = bin_dir
    return bin_dir


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    # Build before the first test runs, so that a cold build (which may take
    # longer than a test's pytest-timeout) is not charged to a single test.
    if _skip_k8s() or session.config.option.collectonly:
        return
    if not any(item.get_closest_marker("k8s") for item in session.items):
        return
    # A failure is recorded in _build; the control_plane fixture reports it per test.
    with contextlib.suppress(pytest.fail.Exception):
        _build_controlplane()


@dataclass
class ControlPlane:
    """A running local control plane and helpers to talk to it as admin."""

    kubeconfig: Path
    bin_dir: Path
    state_dir: Path
    server: str

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | str | None = None,
        input: str | None = None,
        check: bool = False,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl (as admin unless ``kubeconfig`` is given)."""
        cmd = [str(self.kubectl_path), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        return subprocess.run(
            cmd, input=input, capture_output=True, text=True, check=check, timeout=timeout
        )

    def kubectl_ok(self, *args: str, **kwargs: object) -> str:
        """Run kubectl; fail the test with its stderr when it exits non-zero."""
        proc = self.kubectl(*args, **kwargs)  # type: ignore[arg-type]
        if proc.returncode != 0:
            pytest.fail(
                f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}",
                pytrace=False,
            )
        return proc.stdout

    def install_crds(self, crd_dir: Path, timeout_s: int = 60) -> list[str]:
        """Server-side apply every *.yaml in ``crd_dir`` and wait until each CRD is
        Established. Returns the CRD names (e.g. ``rayjobs.ray.io``)."""
        files = sorted(crd_dir.glob("*.yaml"))
        if not files:
            pytest.fail(f"no CRD manifests (*.yaml) in {crd_dir}", pytrace=False)
        names: list[str] = []
        for f in files:
            out = self.kubectl_ok(
                "apply", "--server-side", "--force-conflicts",
                "--field-manager", "ladder-tests", "-o", "name", "-f", str(f),
            )  # fmt: skip
            names += [line.strip() for line in out.splitlines() if line.strip()]
        # `kubectl wait --for condition=Established` errors out instead of waiting
        # while a just-created CRD has no status.conditions yet, so poll instead.
        jsonpath = "{.status.conditions[?(@.type=='Established')].status}"
        deadline = time.monotonic() + timeout_s
        pending = list(names)
        while pending:
            pending = [
                n
                for n in pending
                if self.kubectl("get", n, "-o", f"jsonpath={jsonpath}").stdout != "True"
            ]
            if pending and time.monotonic() > deadline:
                pytest.fail(f"CRDs not Established after {timeout_s}s: {pending}", pytrace=False)
            if pending:
                time.sleep(0.2)
        return [n.split("/", 1)[1] for n in names]

    def create_namespace(self, prefix: str = "ladder-test") -> str:
        """Create a namespace with a unique name, plus its ``default`` ServiceAccount
        (normally made by kube-controller-manager, which does not run here; the
        ServiceAccount admission plugin refuses Pods whose account is missing)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.kubectl_ok("create", "namespace", name)
        self.kubectl_ok("-n", name, "create", "serviceaccount", "default")
        return name

    def sa_kubeconfig(self, namespace: str, service_account: str, out: Path) -> Path:
        """Kubeconfig authenticating as a ServiceAccount, with a TokenRequest token
        (created with the namespace/SA when missing; see sa-kubeconfig.sh)."""
        proc = subprocess.run(
            ["bash", str(CONTROLPLANE_DIR / "sa-kubeconfig.sh"), namespace, service_account,
             str(out)],
            capture_output=True, text=True, env=self._env(), timeout=120,
        )  # fmt: skip
        if proc.returncode != 0:
            pytest.fail(f"sa-kubeconfig.sh failed:\n{proc.stderr}", pytrace=False)
        return out

    def _env(self) -> dict[str, str]:
        return {**os.environ, "LADDER_CP_BIN": str(self.bin_dir)}


def _state_dir() -> Path:
    return Path(os.environ.get("LADDER_CP_DIR", "/tmp/ladder-controlplane"))


def _server() -> str:
    return f"https://127.0.0.1:{os.environ.get('LADDER_CP_APISERVER_PORT', '26443')}"


def _ready(kubectl: Path, kubeconfig: Path) -> bool:
    if not kubeconfig.exists():
        return False
    proc = subprocess.run(
        [str(kubectl), "--kubeconfig", str(kubeconfig), "--request-timeout=3s",
         "get", "--raw", "/readyz"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver on 127.0.0.1, started (and built) when needed.

    A control plane that was already running is reused and left running; one
    started here is stopped at the end of the session unless LADDER_CP_KEEP=1.
    """
    if _skip_k8s():
        pytest.skip("LADDER_SKIP_K8S=1: skipping tests that need the local kube-apiserver")
    bin_dir = _build_controlplane()
    state_dir = _state_dir()
    kubeconfig = state_dir / "admin.kubeconfig"
    env = {**os.environ, "LADDER_CP_BIN": str(bin_dir)}

    already_running = _ready(bin_dir / "kubectl", kubeconfig)
    if not already_running:
        try:
            proc = subprocess.run(
                ["bash", str(CONTROLPLANE_DIR / "start.sh")],
                capture_output=True, text=True, env=env, timeout=START_TIMEOUT_S,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail(f"start.sh did not finish in {START_TIMEOUT_S}s", pytrace=False)
        if proc.returncode != 0:
            pytest.fail(
                f"tests/k8s/controlplane/start.sh failed (exit {proc.returncode}); logs in "
                f"{state_dir}. Set LADDER_SKIP_K8S=1 to skip the k8s tests.\n{proc.stderr}",
                pytrace=False,
            )
    cp = ControlPlane(kubeconfig=kubeconfig, bin_dir=bin_dir, state_dir=state_dir, server=_server())
    try:
        yield cp
    finally:
        if not already_running and os.environ.get("LADDER_CP_KEEP") != "1":
            subprocess.run(
                ["bash", str(CONTROLPLANE_DIR / "stop.sh")], env=env, timeout=60, check=False
            )


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        pytest.fail(
            f"{what} not found at {path} (the copies live in tests/crds; "
            "LADDER_SHARED_CRDS overrides the folder)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def kuberay_crds(control_plane: ControlPlane) -> list[str]:
    """KubeRay v1.7.0 CRDs (RayCluster, RayJob), applied server-side and Established."""
    return control_plane.install_crds(_require_dir(KUBERAY_CRDS, "KubeRay CRDs"))


@pytest.fixture(scope="session")
def prometheus_operator_crds(control_plane: ControlPlane) -> list[str]:
    """prometheus-operator v0.93.0 CRDs (PodMonitor, ServiceMonitor, PrometheusRule)."""
    return control_plane.install_crds(
        _require_dir(PROMETHEUS_OPERATOR_CRDS, "prometheus-operator CRDs")
    )


@pytest.fixture
def k8s_namespace(control_plane: ControlPlane) -> str:
    """A fresh namespace for one test. Namespaces are never deleted: without
    kube-controller-manager a deleted namespace would stay Terminating forever."""
    return control_plane.create_namespace()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A SQLite store of the test's own (the controller and the trial pods' Secret use it)."""
    return f"sqlite:///{tmp_path / 'ladder.db'}"
