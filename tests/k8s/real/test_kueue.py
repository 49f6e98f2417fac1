"""Kueue admits Ladder's RayJobs for real (execution.queueName), on the test cluster of
tests/k8s/cluster/up.sh: real Kueue v0.17.0 (ray.io/rayjob integration), the real KubeRay
operator and scheduler, two fake nodes of 4 nvidia.com/gpu.

Two trials of 2 workers x 4 GPUs go to a ClusterQueue with a quota of 8 GPUs, and Ladder is
told the cluster has 16 (so Ladder launches both and Kueue, not Ladder, decides). Kueue admits
one: it unsuspends that RayJob, whose cluster the operator makes and the scheduler binds; the
other stays suspended, its Workload without quota. When the first trial ends, Kueue admits the
second, and the Sweep succeeds.

STAND-INS, named: no container runs; the head pods' processes are one real Ray head in the
cluster's network namespace (conftest.ray_head), running the FAST STAND-IN for training
(tests/reliability/fast_worker.py) through `execution.python`: what is under test is admission,
not training. Kueue's webhooks are not registered (up.sh says why); Ladder creates the RayJobs
suspended itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import store
from orchestrator.core.lifecycle import TrialState
from tests.k8s.operator_harness import (
    REPO_ROOT,
    ControllerProcess,
    dump,
    free_port,
    http_ok,
    wait_for,
)
from tests.k8s.real.conftest import RAY_VERSION, Cluster, ray_head
from tests.reliability.fast_worker import write_shim

pytestmark = pytest.mark.realcluster

KUEUE = "kueue.x-k8s.io/v1beta2"
# Everything a trial pod asks for must be covered by the ClusterQueue, or Kueue never admits
# the Workload ("resource ... unavailable in ClusterQueue"): Ladder's pods request scratch disk.
COVERED = {"cpu": "1000", "memory": "20Ti", "ephemeral-storage": "20Ti", "nvidia.com/gpu": "8"}

SWEEP = """
apiVersion: ladder.dev/v1alpha1
kind: Sweep
metadata: {name: queued}
spec:
  ladder: [ladder/t5-tiny-s]
  methods: [full, lora]
  adapters: [{rank: 8, alphas: [16]}]
  training: {epochs: 1, precision: fp32, init: random, batchSize: 8, maxInputTokens: 64,
             maxOutputTokens: 32, generateLimit: 2}
  dataset: {source: "builtin:querydsl", size: 16, preamble: short, evalFraction: 0.25}
  resources: {workers: 2, gpusPerWorker: 4}
  escalation: {onOOM: stop-lane, retries: 0}
  parallelism: 2
  execution: EXECUTION
"""


def kueue_running() -> bool:
    port = os.environ.get("LADDER_CLUSTER_KUEUE_PROBE_PORT", "27082")
    return http_ok(f"http://127.0.0.1:{port}/readyz", timeout=3)


@pytest.fixture
def queues(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """A namespace with a LocalQueue pointing at a fresh ClusterQueue of 8 GPUs; the queue
    objects are deleted afterwards (the ClusterQueue and flavor are cluster-scoped)."""
    if not kueue_running():
        pytest.skip("Kueue is not running on the test cluster: it is opt-in (1627 Go packages "
                    "to build); LADDER_KUEUE=1 builds it and up.sh starts it")
    namespace = cluster.create_namespace("ladder-kueue")
    suffix = os.urandom(3).hex()
    flavor, cluster_queue, local_queue = f"gpu-{suffix}", f"ladder-{suffix}", "team-a"
    objects = [
        {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": flavor}},
        {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": cluster_queue},
         "spec": {"namespaceSelector": {}, "resourceGroups": [{
             "coveredResources": list(COVERED),
             "flavors": [{"name": flavor, "resources": [
                 {"name": name, "nominalQuota": quota} for name, quota in COVERED.items()]}],
         }]}},
        {"apiVersion": KUEUE, "kind": "LocalQueue",
         "metadata": {"name": local_queue, "namespace": namespace},
         "spec": {"clusterQueue": cluster_queue}},
    ]
    cluster.kubectl_ok("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                             "items": objects}))
    wait_for("the ClusterQueue to be active", lambda: "True" in cluster.kubectl(
        "get", "clusterqueue", cluster_queue, "-o",
        "jsonpath={.status.conditions[?(@.type=='Active')].status}").stdout,
        timeout=60, interval=0.5, diagnose=lambda: cluster.logs("kueue"))
    try:
        yield namespace, local_queue
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")
        cluster.kubectl("delete", "clusterqueue", cluster_queue, "--wait=false")
        cluster.kubectl("delete", "resourceflavor", flavor, "--wait=false")


def items(cluster: Cluster, namespace: str, kind: str) -> list[dict[str, Any]]:
    proc = cluster.kubectl("-n", namespace, "get", kind, "-o", "json")
    return json.loads(proc.stdout)["items"] if proc.returncode == 0 else []


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c["type"] == kind), {})


@pytest.mark.timeout(600)
def test_kueue_admits_one_8_gpu_trial_at_a_time(
    cluster: Cluster, queues: tuple[str, str], tmp_path: Path,
) -> None:
    namespace, local_queue = queues
    cluster.install_crds(REPO_ROOT / "k8s" / "crd")
    db_url = f"sqlite:///{tmp_path / 'ladder.db'}"
    execution = {
        "rayVersion": RAY_VERSION, "submissionMode": "HTTPMode",
        "authOptions": {"mode": "disabled"}, "ttlSecondsAfterFinished": 0,
        "capacity": {"gpus": 16}, "queueName": local_queue,
        "outputDir": str(tmp_path / "runs"), "python": str(write_shim(tmp_path / "fast")),
        "runtimeEnv": {"env_vars": {"LADDER_FAST_EPOCHS": "1", "LADDER_FAST_EPOCH_SECONDS": "10"}},
    }
    controller = ControllerProcess(kubeconfig=cluster.kubeconfig, namespace=namespace,
                                   db_url=db_url, log_dir=tmp_path / "logs",
                                   liveness=f"http://127.0.0.1:{free_port()}/healthz")
    seen: dict[str, set[str]] = {"admitted": set(), "waiting": set(), "clusters": set()}

    def why() -> str:
        jobs = [(j["metadata"]["name"], j["spec"].get("suspend"), j.get("status"))
                for j in items(cluster, namespace, "rayjobs")]
        workloads = [(w["metadata"]["name"], (w.get("status") or {}).get("conditions"))
                     for w in items(cluster, namespace, "workloads.kueue.x-k8s.io")]
        return "\n".join([f"seen: {seen}", "RayJobs: " + dump(jobs),
                          "Workloads: " + dump(workloads), controller.logs(),
                          cluster.logs("kueue", "kuberay-operator")])

    controller.start()
    try:
        with ray_head(cluster, db_url):
            cluster.kubectl_ok("-n", namespace, "apply", "-f", "-",
                               input=SWEEP.replace("EXECUTION", json.dumps(execution)))

            def one_admitted_one_waiting() -> bool:
                jobs = items(cluster, namespace, "rayjobs")
                workloads = items(cluster, namespace, "workloads.kueue.x-k8s.io")
                for rc in items(cluster, namespace, "rayclusters"):
                    seen["clusters"].add(rc["metadata"]["name"])
                # Kueue admits by setting suspend to false, which the apiserver drops (omitempty).
                admitted = [j for j in jobs if not j["spec"].get("suspend")]
                waiting = [w for w in workloads if condition(w, "QuotaReserved").get(
                    "status") == "False" and "insufficient" in condition(
                    w, "QuotaReserved").get("message", "").lower()]
                if len(jobs) == 2 and len(admitted) == 1 and len(waiting) == 1:
                    seen["admitted"].add(admitted[0]["metadata"]["name"])
                    seen["waiting"].update(j["metadata"]["name"] for j in jobs
                                           if j["spec"].get("suspend") is True)
                    return True
                return False

            wait_for("Kueue to admit one trial and hold the other", one_admitted_one_waiting,
                     timeout=240, interval=1, diagnose=why)
            jobs = {j["metadata"]["name"]: j for j in items(cluster, namespace, "rayjobs")}
            for job in jobs.values():  # both created by Ladder for Kueue
                assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == local_queue
            (waiting,) = seen["waiting"]
            # The suspended trial has no RayCluster: nothing holds GPUs for it.
            assert not any(c.startswith(waiting) for c in seen["clusters"]), why()

            def finished() -> dict[str, Any] | None:
                for job in items(cluster, namespace, "rayjobs"):
                    if not job["spec"].get("suspend"):
                        seen["admitted"].add(job["metadata"]["name"])
                proc = cluster.kubectl("-n", namespace, "get", "sweep", "queued", "-o", "json")
                status = json.loads(proc.stdout).get("status") or {} if proc.returncode == 0 \
                    else {}
                return status if status.get("phase") in ("Succeeded", "Failed") else None

            status = wait_for("the Sweep to finish", finished, timeout=420, interval=1,
                              diagnose=why)
    finally:
        controller.stop()
    detail = why()
    assert status["phase"] == "Succeeded", detail
    # Kueue admitted the second trial once the first had ended: both ran, one at a time.
    assert seen["admitted"] == set(jobs), detail
    with store.open_store(db_url)() as session:
        rows = store.attempts(session, namespace, "queued")
    assert sorted(r.status for r in rows) == [TrialState.SUCCEEDED] * 2, detail
    first, second = sorted(rows, key=lambda r: r.started_at or r.finished_at)
    assert first.finished_at is not None and second.started_at is not None
    assert second.started_at >= first.finished_at, detail
