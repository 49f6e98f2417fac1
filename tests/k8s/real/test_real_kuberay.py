"""Ladder on the test cluster (tests/k8s/cluster/up.sh): the real KubeRay operator, the real
kube-scheduler and kube-controller-manager, two fake nodes of 4 nvidia.com/gpu each.

The chain tested end to end: a Sweep applied with kubectl -> Ladder's controller (`ladder
controller`, a subprocess) -> RayJobs -> the real operator makes RayClusters and pods -> the
real scheduler binds them onto the fake GPU nodes -> the operator submits the Ray job over
HTTP (HTTPMode, through the apiserver's service proxy) -> a real Ray head runs the real worker,
which trains and reports to the store -> Ladder records the outcome.

STAND-INS, named: no container runs (kwok marks pods Running). The processes of the head pod
are one local Ray head (Ray 2.60, token auth off) started inside the cluster's network
namespace at 198.51.100.2, the address kwok gives every pod: it serves every head pod's
dashboard, and its environment (LADDER_DB_URL, this checkout on PYTHONPATH, the test's
interpreter as `python`) stands in for the worker image and the head container's env. The
worker pods' Ray workers do not exist: the job runs on that head (training on CPU).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator import store
from orchestrator.core.lifecycle import TrialState
from tests.k8s.operator_harness import (
    REPO_ROOT,
    ControllerProcess,
    db_secret,
    dump,
    running_controller,
    wait_for,
)
from tests.k8s.real.conftest import NODE_IP, RAY_VERSION, Cluster, ray_head

pytestmark = pytest.mark.realcluster

FAKE_NODES = {"gpu-node-0", "gpu-node-1"}
SMALL = "ladder/t5-tiny-s"


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_crd(cluster: Cluster) -> list[str]:
    return cluster.install_crds(REPO_ROOT / "k8s" / "crd")


@pytest.fixture
def namespace(cluster: Cluster, sweep_crd: list[str], db_url: str) -> Iterator[str]:
    """A fresh namespace (its default ServiceAccount made by the real controller-manager)
    with the Secret that gives trial pods LADDER_DB_URL; deleted afterwards, which the real
    garbage collector carries through."""
    name = cluster.create_namespace()
    cluster.kubectl_ok("-n", name, "apply", "-f", "-", input=json.dumps(db_secret(db_url)))
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def controller(cluster: Cluster, namespace: str, db_url: str,
               tmp_path: Path) -> Iterator[ControllerProcess]:
    with running_controller(cluster.kubeconfig, namespace, db_url, tmp_path / "logs") as process:
        yield process


# --- helpers -----------------------------------------------------------------------------


def kget(cluster: Cluster, namespace: str, *what: str) -> list[dict[str, Any]]:
    proc = cluster.kubectl("-n", namespace, "get", *what, "-o", "json")
    if proc.returncode != 0:
        return []
    return json.loads(proc.stdout).get("items", [])


def sweep_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    proc = cluster.kubectl("-n", namespace, "get", "sweep", name, "-o", "json")
    return (json.loads(proc.stdout).get("status") or {}) if proc.returncode == 0 else {}


def diagnose(cluster: Cluster, namespace: str, controller: ControllerProcess) -> Any:
    def text() -> str:
        rayjobs = [(j["metadata"]["name"], j.get("status")) for j in
                   kget(cluster, namespace, "rayjobs")]
        pods = [(p["metadata"]["name"], p["spec"].get("nodeName"), p["status"].get("phase"),
                 [c.get("message") for c in p["status"].get("conditions") or []])
                for p in kget(cluster, namespace, "pods")]
        return "\n".join([
            "RayJobs: " + dump(rayjobs), "pods: " + dump(pods), controller.logs(),
            cluster.logs("kuberay-operator", "kwok", "kube-scheduler"),
        ])

    return text


# --- end to end --------------------------------------------------------------------------


def one_trial_sweep(tmp_path: Path) -> str:
    """examples/quickstart.yaml cut to one trial: t5-tiny-s, LoRA r8/a16, one epoch."""
    document = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
    spec = document["spec"]
    spec["ladder"] = [SMALL]
    spec["methods"] = ["lora"]
    spec["adapters"] = spec["adapters"][:1]
    spec["training"]["epochs"] = 1
    spec["training"].pop("saveModel", None)  # weights need a shared volume on a cluster
    spec["escalation"].pop("memoryBudget", None)
    spec["execution"] = {
        "outputDir": str(tmp_path / "runs"),
        "python": sys.executable,
        "rayVersion": RAY_VERSION,
        "submissionMode": "HTTPMode",  # the operator posts the job to the head's dashboard
        "authOptions": {"mode": "disabled"},  # the stand-in Ray head runs RAY_AUTH_MODE=disabled
        "ttlSecondsAfterFinished": 0,
    }
    document["metadata"] = {"name": "real"}
    return yaml.safe_dump(document)


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_sweep_runs_through_the_real_operator_and_scheduler(
    cluster: Cluster, namespace: str, controller: ControllerProcess, db_url: str,
    tmp_path: Path,
) -> None:
    why = diagnose(cluster, namespace, controller)
    seen_pods: dict[str, str] = {}  # pod -> node it was bound to
    seen_ips: set[str] = set()
    seen_clusters: set[str] = set()
    seen_status: list[dict[str, Any]] = []
    with ray_head(cluster, db_url) as dashboard:
        cluster.kubectl_ok("-n", namespace, "apply", "-f", "-", input=one_trial_sweep(tmp_path))

        def finished() -> dict[str, Any] | None:
            for pod in kget(cluster, namespace, "pods"):
                if pod["spec"].get("nodeName"):
                    seen_pods[pod["metadata"]["name"]] = pod["spec"]["nodeName"]
                if pod["status"].get("podIP"):
                    seen_ips.add(pod["status"]["podIP"])
            for rc in kget(cluster, namespace, "rayclusters"):
                seen_clusters.add(rc["metadata"]["name"])
            for job in kget(cluster, namespace, "rayjobs"):
                if job.get("status"):
                    seen_status.append(job["status"])
            status = sweep_status(cluster, namespace, "real")
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        status = wait_for("the sweep to finish", finished, timeout=720, interval=1,
                          diagnose=why)
        # Ladder has the outcome from the store once the worker reports it; the Ray job ends
        # (and the operator marks the RayJob Complete) when the worker process has exited.
        wait_for("the RayJob to be Complete", lambda: finished() and any(
            s.get("jobDeploymentStatus") == "Complete" for s in seen_status),
            timeout=120, interval=1, diagnose=why)
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(dashboard)
        rayjob_names = {j["metadata"]["name"] for j in kget(cluster, namespace, "rayjobs")}
        jobs: list[Any] = []

        def listed() -> set[str] | None:  # the head's job table, read until the job is in it
            jobs[:] = client.list_jobs()
            # This sweep's jobs only: the head's address is every test's (the head Service's),
            # and a RayJob of an earlier test that the operator still tracked may come here.
            ids = {j.submission_id for j in jobs
                   if j.submission_id and j.submission_id.startswith("real-")}
            return ids if rayjob_names <= ids else None

        submitted = wait_for("the operator's job in the head's job list", listed, timeout=30,
                             interval=1, diagnose=lambda: why() + "\njobs: " + dump(
                                 [(j.submission_id, j.job_id, str(j.status)) for j in jobs]))
        infos = {name: client.get_job_info(name) for name in submitted}
    with store.open_store(db_url)() as session:
        rows = store.attempts(session, namespace, "real")
    detail = why() + "\nrows: " + dump([(r.model, r.attempt, r.status, r.error) for r in rows])
    assert status["phase"] == "Succeeded", detail
    (row,) = rows
    # The worker really trained on the Ray head and reported to the store.
    assert row.status == TrialState.SUCCEEDED, detail
    assert row.best_eval_loss is not None and row.epochs_completed == 1, detail
    # The real operator made the RayCluster and its pods; the real scheduler bound them to
    # the fake GPU nodes (the head and one worker).
    assert seen_clusters and all(c.startswith(row.rayjob_name) for c in seen_clusters), detail
    assert len(seen_pods) >= 2 and set(seen_pods.values()) <= FAKE_NODES, detail
    assert seen_ips == {NODE_IP}, detail  # kwok gave them the namespace's address
    # It was the operator that submitted the Ray job (HTTPMode; the test submits nothing),
    # under the RayJob's jobId, and the job ended SUCCEEDED in Ray and in the RayJob's status.
    assert submitted == rayjob_names == {row.rayjob_name}, detail
    info = infos[row.rayjob_name]
    assert info.status == "SUCCEEDED", detail
    assert "-m worker run --trial" in info.entrypoint, detail
    final = [s for s in seen_status if s.get("jobDeploymentStatus") == "Complete"]
    assert final and final[-1]["jobStatus"] == "SUCCEEDED", detail


# --- over capacity -------------------------------------------------------------------------


OVER_CAPACITY = """
apiVersion: ladder.dev/v1alpha1
kind: Sweep
metadata: {name: big}
spec:
  ladder: [ladder/t5-tiny-s]
  methods: [full, lora]
  adapters: [{rank: 8, alphas: [16]}]
  training: {epochs: 1, precision: fp32, init: random}
  resources: {workers: 2, gpusPerWorker: 4}
  escalation: {onOOM: stop-lane, retries: 0}
  parallelism: 2
  # Ladder is told 16 GPUs; the cluster has 8: both trials launch, and the scheduler decides.
  execution: {rayVersion: "RAY_VERSION", submissionMode: HTTPMode, capacity: {gpus: 16},
              authOptions: {mode: disabled}}
"""


@pytest.mark.timeout(300)
def test_two_8_gpu_trials_on_8_gpus_leave_one_pending(
    cluster: Cluster, namespace: str, controller: ControllerProcess,
) -> None:
    """Two trials of 2 workers x 4 GPUs on 2 nodes x 4 GPUs: the real scheduler binds one
    trial's workers, one per node, and leaves the other's Pending with its own message."""
    why = diagnose(cluster, namespace, controller)
    cluster.kubectl_ok("-n", namespace, "apply", "-f", "-",
                       input=OVER_CAPACITY.replace("RAY_VERSION", RAY_VERSION))

    def workers() -> dict[str, list[dict[str, Any]]] | None:
        by_cluster: dict[str, list[dict[str, Any]]] = {}
        for pod in kget(cluster, namespace, "pods", "-l", "ray.io/node-type=worker"):
            by_cluster.setdefault(pod["metadata"]["labels"]["ray.io/cluster"], []).append(pod)
        if len(by_cluster) < 2 or any(len(p) < 2 for p in by_cluster.values()):
            return None
        bound = [c for c, pods in by_cluster.items() if all(p["spec"].get("nodeName")
                                                            for p in pods)]
        pending = [c for c, pods in by_cluster.items() if all(
            any(cond.get("reason") == "Unschedulable" for cond in
                p["status"].get("conditions") or []) for p in pods)]
        return by_cluster if len(bound) == 1 and len(pending) == 1 else None

    by_cluster = wait_for("one trial bound and one unschedulable", workers, timeout=180,
                          interval=1, diagnose=why)
    detail = why()
    for pods in by_cluster.values():
        for pod in pods:
            limits = pod["spec"]["containers"][0]["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == "4", detail
    (bound,) = [p for p in by_cluster.values() if p[0]["spec"].get("nodeName")]
    (pending,) = [p for p in by_cluster.values() if not p[0]["spec"].get("nodeName")]
    # One worker per node: each node has exactly the 4 GPUs one worker asks for.
    assert sorted(p["spec"]["nodeName"] for p in bound) == sorted(FAKE_NODES), detail
    for pod in pending:
        assert pod["status"]["phase"] == "Pending", detail
        (cond,) = [c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled"]
        assert cond["status"] == "False" and cond["reason"] == "Unschedulable", detail
        assert "0/2 nodes are available" in cond["message"], detail
        assert "Insufficient nvidia.com/gpu" in cond["message"], detail
    # The scheduler said so in an event too, and the second RayJob is still Initializing.
    events = kget(cluster, namespace, "events", "--field-selector", "reason=FailedScheduling")
    assert any("Insufficient nvidia.com/gpu" in e.get("message", "") for e in events), detail
    pending_cluster = pending[0]["metadata"]["labels"]["ray.io/cluster"]
    (job,) = [j for j in kget(cluster, namespace, "rayjobs")
              if (j.get("status") or {}).get("rayClusterName") == pending_cluster]
    assert job["status"].get("jobDeploymentStatus") == "Initializing", detail
