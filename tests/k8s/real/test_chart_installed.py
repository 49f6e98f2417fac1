"""helm/ladder installed with `helm install` (not template + apply) on the test cluster of
tests/k8s/cluster/up.sh (real kube-scheduler, kube-controller-manager, KubeRay operator and two
fake GPU nodes), its controller running as the release's Deployment defines it, and a Sweep
completing through the real operator.

The controller runs with the Deployment's own args and environment (read back from the
installed release), authenticated with a token of the chart's ServiceAccount, so only the
chart's RBAC lets it work; capacity comes from the nodes (the chart sets none). Two ways:

- `test_helm_install_controller_process`: `ladder controller` as a process, the token in a
  kubeconfig;
- `test_helm_install_controller_image`: the controller image (docker/build.sh) under podman
  with `--network=host`, read-only root, UID 10001, and the token, CA and namespace mounted at
  /var/run/secrets/kubernetes.io/serviceaccount with KUBERNETES_SERVICE_HOST/PORT pointing at
  the cluster's apiserver on loopback: exactly how the pod would get its credentials
  (in-cluster config). Skipped, with the reason, only where no container engine can run.

What stands in, and why:
- No kubelet runs the Deployment's pod (kwok's nodes run no containers), hence the process or
  the container started by the test.
- The head pod's processes: a real Ray head in the cluster's network namespace
  (conftest.ray_head), to which the real operator submits the job (HTTPMode). Its job runs the
  FAST STAND-IN for training (tests/reliability/fast_worker.py, through `execution.python`),
  which honours the rest of the worker contract for real (store rows, result, exit code). What
  is under test is the chart and the controller it installs; real training through the real
  operator is test_real_kuberay.py.
- The store is SQLite through the chart's "your own database" Secret
  (`database.existingSecret`), since nothing would run the bundled PostgreSQL StatefulSet.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.operator.kube import Kube, load_config
from tests.helm.chart import CHART, run_helm
from tests.k8s.operator_harness import REPO_ROOT, dump, free_port, http_ok, wait_for
from tests.k8s.real.conftest import RAY_VERSION, Cluster, ray_head
from tests.reliability.fast_worker import write_shim

pytestmark = pytest.mark.realcluster

STORE_SECRET = "ladder-store"
SWEEP = """
apiVersion: ladder.dev/v1alpha1
kind: Sweep
metadata: {name: installed}
spec:
  ladder: [ladder/t5-tiny-s]
  methods: [full]
  training: {epochs: 1, precision: fp32, init: random, batchSize: 8, maxInputTokens: 64,
             maxOutputTokens: 32, generateLimit: 2}
  dataset: {source: "builtin:querydsl", size: 16, preamble: short, evalFraction: 0.25}
  resources: {workers: 1, gpusPerWorker: 1}
  execution: EXECUTION
"""
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class Installed:
    """A release installed with `helm install`, and what its Deployment would run."""

    def __init__(self, control_plane: Cluster, tmp_path: Path) -> None:
        self.cp = control_plane
        self.namespace = control_plane.create_namespace("ladder-rel")
        self.sweeps = control_plane.create_namespace("ladder-sweeps")
        self.release = f"i{uuid.uuid4().hex[:6]}"
        self.full = f"{self.release}-ladder"
        # A folder the container's UID 10001 can write too (SQLite adds its journal beside).
        self.data = tmp_path / "store"
        self.data.mkdir()
        self.data.chmod(0o777)
        self.db_url = f"sqlite:///{self.data / 'ladder.db'}"
        for ns in (self.namespace, self.sweeps):
            control_plane.kubectl_ok("-n", ns, "create", "secret", "generic", STORE_SECRET,
                                     f"--from-literal=url={self.db_url}")
        proc = run_helm(
            "install", self.release, str(CHART), "--namespace", self.namespace,
            "--set", "postgresql.enabled=false",
            "--set", f"database.existingSecret={STORE_SECRET}",
            "--set-json", f"watchNamespaces={json.dumps([self.sweeps])}",
            "--force-conflicts", kubeconfig=control_plane.kubeconfig, check=False, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        status = json.loads(run_helm("status", self.release, "--namespace", self.namespace,
                                     "-o", "json", kubeconfig=control_plane.kubeconfig).stdout)
        assert status["info"]["status"] == "deployed", status["info"]
        deployment = json.loads(control_plane.kubectl_ok(
            "-n", self.namespace, "get", "deployment", f"{self.full}-controller", "-o", "json"))
        pod = deployment["spec"]["template"]["spec"]
        self.service_account = pod["serviceAccountName"]
        (self.container,) = pod["containers"]
        self.security = {**(pod.get("securityContext") or {}),
                         **(self.container.get("securityContext") or {})}

    def secret_value(self, name: str, key: str) -> str:
        data = json.loads(self.cp.kubectl_ok("-n", self.namespace, "get", "secret", name,
                                             "-o", "json"))["data"]
        return base64.b64decode(data[key]).decode()

    def controller_env(self, metrics_port: int) -> dict[str, str]:
        """The Deployment's env as the kubelet would resolve it (Secrets, the downward API);
        the metrics port is moved to a free one (the chart's 9400 may be taken here)."""
        env: dict[str, str] = {}
        for item in self.container.get("env") or []:
            source = item.get("valueFrom") or {}
            if "value" in item or not source:  # no value at all: the empty string
                env[item["name"]] = item.get("value", "")
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                env[item["name"]] = self.secret_value(ref["name"], ref["key"])
            elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
                env[item["name"]] = f"{self.full}-controller-test"
            elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                env[item["name"]] = self.namespace
            else:
                raise AssertionError(f"unexpected env in the chart's Deployment: {item}")
        assert env["LADDER_METRICS_PORT"] == "9400"
        env["LADDER_METRICS_PORT"] = str(metrics_port)
        return env

    def controller_args(self, health_port: int) -> list[str]:
        """The Deployment's args, its liveness endpoint on loopback at a free port."""
        args = list(self.container["args"])
        (liveness,) = [a for a in args if a.startswith("--liveness=")]
        assert liveness == "--liveness=http://0.0.0.0:8080/healthz", liveness
        args[args.index(liveness)] = f"--liveness=http://127.0.0.1:{health_port}/healthz"
        assert f"--db-secret={STORE_SECRET}/url" in args and f"--namespace={self.sweeps}" in args
        return args

    def token(self) -> str:
        return self.cp.kubectl_ok("-n", self.namespace, "create", "token",
                                  self.service_account, "--duration", "1h").strip()


def _sweep_completes(installed: Installed, tmp_path: Path, logs: Callable[[], str],
                     alive: Callable[[], bool]) -> None:
    """Apply the Sweep in the watched namespace; the real operator makes the trial's cluster,
    the scheduler binds its pods to a GPU node, the job runs on the Ray head; it succeeds."""
    cp = installed.cp
    kube = Kube(load_config(str(cp.kubeconfig)))
    # The chart's execution defaults stay (rayVersion, resources, nodeSelector, tolerations,
    # capacity from the nodes) but for what the stand-in Ray head needs: no token auth, the
    # job posted to its dashboard, and the test's interpreter with the fast worker.
    execution: dict[str, Any] = {
        "outputDir": str(tmp_path / "runs"),
        "python": str(write_shim(tmp_path / "fast-worker")),
        "runtimeEnv": {"env_vars": {"LADDER_FAST_EPOCHS": "1"}},
        "submissionMode": "HTTPMode",
        "authOptions": {"mode": "disabled"},
        "ttlSecondsAfterFinished": 0,
    }
    with ray_head(cp, installed.db_url):
        cp.kubectl_ok("-n", installed.sweeps, "apply", "-f", "-",
                      input=SWEEP.replace("EXECUTION", json.dumps(execution)))

        bound: dict[str, dict[str, Any]] = {}  # worker pod -> its spec, once scheduled

        def why() -> str:
            sweep = kube.get_sweep(installed.sweeps, "installed") or {}
            jobs = [j.get("status") for j in kube.list_rayjobs(installed.sweeps, "installed")]
            return (f"sweep status: {dump(sweep.get('status'))}\nrayjobs: {dump(jobs)}\n"
                    f"controller:\n{logs()[-6000:]}\n"
                    f"{cp.logs('kuberay-operator', 'kube-scheduler', tail=2000)}")

        def finished() -> dict[str, Any] | None:
            pods = json.loads(cp.kubectl_ok("-n", installed.sweeps, "get", "pods", "-l",
                                            "ray.io/node-type=worker", "-o", "json"))["items"]
            bound.update({p["metadata"]["name"]: p["spec"] for p in pods
                          if p["spec"].get("nodeName")})
            status = (kube.get_sweep(installed.sweeps, "installed") or {}).get("status") or {}
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        status = wait_for("the Sweep to finish", finished, timeout=300, interval=1,
                          diagnose=why)
        assert status["phase"] == "Succeeded", why()
        assert status["trials"]["succeeded"] == 1 and status["trials"]["done"] == 1, why()
        assert status["best"]["model"] == "ladder/t5-tiny-s", why()
        (job,) = kube.list_rayjobs(installed.sweeps, "installed")
        # The RayJob carries the chart's defaults and the store Secret it named.
        head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        refs = [e["valueFrom"]["secretKeyRef"] for e in head["containers"][0]["env"]
                if "secretKeyRef" in (e.get("valueFrom") or {})]
        assert {"name": STORE_SECRET, "key": "url"} in refs
        # The chart's rayVersion reached the operator, and the trial's worker pod was bound
        # by the real scheduler to a fake GPU node, with the GPU it asked for.
        assert job["spec"]["rayClusterSpec"]["rayVersion"] == RAY_VERSION
        assert bound, why()
        for spec in bound.values():
            assert spec["nodeName"] in ("gpu-node-0", "gpu-node-1"), why()
            assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert alive(), logs()[-6000:]
        # The operator is done with the RayJob before its head stops. One it still tracked
        # would be submitted again to the next test's head, at the same address (the head
        # Service's), and turn up in that test's job list.
        wait_for("the RayJob to be Complete", lambda: all(
            (j.get("status") or {}).get("jobDeploymentStatus") in ("Complete", "Failed")
            for j in kube.list_rayjobs(installed.sweeps, "installed")),
            timeout=120, interval=1, diagnose=why)
    # Nothing was forbidden to the chart's ServiceAccount (Kopf's scan of the namespaces too:
    # rbac.listNamespaces lets it notice watched namespaces created later).
    refused = [line for line in logs().splitlines() if "forbidden" in line.lower()]
    assert refused == [], logs()[-6000:]


@pytest.mark.timeout(600)
def test_helm_install_controller_process(cluster: Cluster, tmp_path: Path) -> None:
    control_plane = cluster
    installed = Installed(control_plane, tmp_path)
    kubeconfig = control_plane.sa_kubeconfig(installed.namespace, installed.service_account,
                                             tmp_path / "sa.kubeconfig")
    health = free_port()
    env = {**os.environ, **installed.controller_env(free_port()), "KUBECONFIG": str(kubeconfig),
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT),
                                                     os.environ.get("PYTHONPATH")) if p)}
    log_path = tmp_path / "controller.log"
    # What the image's entrypoint runs: `ladder controller` plus the Deployment's args.
    command = [sys.executable, "-c",
               "from orchestrator.cli import main; main()", "controller",
               *installed.controller_args(health)]
    with log_path.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=tmp_path, start_new_session=True)
    logs = lambda: log_path.read_text(errors="replace")  # noqa: E731
    try:
        _wait_healthy(health, logs)
        _sweep_completes(installed, tmp_path, logs, lambda: process.poll() is None)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def _wait_healthy(port: int, logs: Callable[[], str]) -> None:
    wait_for("the controller's /healthz", lambda: http_ok(f"http://127.0.0.1:{port}/healthz", 3),
             timeout=120, diagnose=lambda: logs()[-6000:])


@pytest.mark.images
@pytest.mark.timeout(1500)
def test_helm_install_controller_image(cluster: Cluster, tmp_path: Path) -> None:
    control_plane = cluster
    from tests.images.images import build_image, engine

    eng = engine()
    if eng.name != "podman":
        pytest.skip("runs the image with podman's --network=host against the loopback apiserver")
    image = build_image("controller")
    installed = Installed(control_plane, tmp_path)
    # The token, CA and namespace where a pod of the Deployment would get them.
    secrets = tmp_path / "serviceaccount"
    secrets.mkdir()
    (secrets / "token").write_text(installed.token())
    (secrets / "ca.crt").write_bytes((control_plane.state_dir / "pki" / "ca.crt").read_bytes())
    (secrets / "namespace").write_text(installed.namespace)
    for path in (secrets, *secrets.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    port = control_plane.server.rsplit(":", 1)[1]
    health = free_port()
    env = {**installed.controller_env(free_port()),
           "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
    security = installed.security
    assert security["runAsUser"] == 10001 and security["readOnlyRootFilesystem"] is True
    name = f"ladder-controller-{uuid.uuid4().hex[:8]}"
    run = [
        "run", "--detach", f"--name={name}", "--network=host", "--read-only", "--tmpfs=/tmp",
        f"--user={security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}",
        "--cap-drop=ALL", "--security-opt=no-new-privileges",
        f"--volume={secrets}:{SA_DIR}:ro", f"--volume={installed.data}:{installed.data}",
        *[f"--env={k}={v}" for k, v in env.items()],
        image, *installed.controller_args(health),
    ]  # fmt: skip
    proc = eng.run(*run, timeout=120)
    assert proc.returncode == 0, proc.stderr

    def logs() -> str:
        out = eng.run("logs", name, timeout=60)
        return out.stdout + out.stderr

    def alive() -> bool:
        out = eng.run("inspect", "--format", "{{.State.Running}}", name, timeout=60)
        return out.stdout.strip() == "true"

    try:
        _wait_healthy(health, logs)
        _sweep_completes(installed, tmp_path, logs, alive)
        info: Any = json.loads(eng.run("inspect", name, timeout=60).stdout)[0]
        assert info["Config"]["User"] in ("10001:10001", "10001")
    finally:
        eng.run("stop", "--time=30", name, timeout=120)
        eng.run("rm", "--force", name, timeout=120)
