"""The controller's reconcile pass (orchestrator.operator.reconcile) against an in-memory
fake of the Kubernetes API and a real SQLite store: launches, idempotence, outcomes from the
store, from RayJob statuses and from pods, lost RayJobs, suspend, parallelism, deletion."""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from orchestrator import store
from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.core.worker_contract import AttemptResult
from orchestrator.operator.kube import KubeError
from orchestrator.operator.manifests import (
    LABEL_SWEEP,
    SecretRef,
    attempt_of,
    decode_trial,
)
from orchestrator.operator.reconcile import ANNOTATION_OUTCOME, Reconciler

NS = "ml"
SPEC: dict[str, Any] = {
    "ladder": ["ladder/t5-tiny-s", "ladder/t5-tiny-m", "ladder/t5-tiny-l"],
    "methods": ["full", "lora"],
    "adapters": [{"rank": 8, "alphas": [16]}],
    "training": {"epochs": 1},
    "resources": {"workers": 1, "gpusPerWorker": 0},
    "escalation": {"onOOM": "stop-lane", "retries": 1, "memoryBudget": "160Mi"},
    "parallelism": 2,
}


def pruned(value: Any) -> Any:
    """What the API server stores: null fields pruned (they are not nullable in the CRD)."""
    if isinstance(value, Mapping):
        return {k: pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return copy.deepcopy(value)


def merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """RFC 7386 merge patch, then pruning as the API server does."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = pruned(value)


class FakeCluster:
    """The slice of the Kubernetes API the reconciler uses, in memory."""

    def __init__(self) -> None:
        self.sweeps: dict[tuple[str, str], dict[str, Any]] = {}
        self.rayjobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.events: list[tuple[str, str, str]] = []
        # Nodes as the API lists them; None: listing them is forbidden (no ClusterRole).
        self.nodes: list[dict[str, Any]] | None = []
        self.kuberay_events: list[dict[str, Any]] = []  # Events KubeRay posts on RayClusters
        self.status_patches = 0
        self.creates = 0
        self._rv = itertools.count(1)

    def add_sweep(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": "ladder.dev/v1alpha1", "kind": "Sweep",
            "metadata": {"name": name, "namespace": NS, "uid": str(uuid.uuid4()),
                         "generation": 1},
            "spec": copy.deepcopy(spec),
        }
        self.sweeps[(NS, name)] = body
        return body

    def set_spec(self, name: str, **fields: Any) -> None:
        body = self.sweeps[(NS, name)]
        body["spec"].update(fields)
        body["metadata"]["generation"] += 1

    # Cluster protocol
    def get_sweep(self, namespace: str, name: str) -> dict[str, Any] | None:
        body = self.sweeps.get((namespace, name))
        return copy.deepcopy(body) if body is not None else None

    def list_rayjobs(self, namespace: str, sweep: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(j) for (ns, _), j in sorted(self.rayjobs.items())
                if ns == namespace and j["metadata"]["labels"].get(LABEL_SWEEP) == sweep]

    def create_rayjob(self, manifest: Mapping[str, Any]) -> bool:
        key = (manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        if key in self.rayjobs:
            return False
        self.creates += 1
        job = copy.deepcopy(dict(manifest))
        job["metadata"]["resourceVersion"] = str(next(self._rv))
        self.rayjobs[key] = job
        return True

    def delete_rayjob(self, namespace: str, name: str) -> bool:
        return self.rayjobs.pop((namespace, name), None) is not None

    def annotate_rayjob(self, namespace: str, name: str,
                        annotations: Mapping[str, str]) -> None:
        job = self.rayjobs.get((namespace, name))
        if job is not None:
            job["metadata"].setdefault("annotations", {}).update(annotations)

    def cluster_pods(self, namespace: str, cluster: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.pods.get((namespace, cluster), []))

    def _all_pods(self) -> list[dict[str, Any]]:
        out = []
        for (namespace, _), pods in sorted(self.pods.items()):
            for pod in pods:
                pod = copy.deepcopy(pod)
                pod.setdefault("metadata", {}).setdefault("namespace", namespace)
                out.append(pod)
        return out

    def sweep_pods(self, namespace: str, sweep: str) -> list[dict[str, Any]]:
        return [p for p in self._all_pods() if p["metadata"]["namespace"] == namespace
                and (p["metadata"].get("labels") or {}).get(LABEL_SWEEP) == sweep]

    def list_nodes(self) -> list[dict[str, Any]]:
        if self.nodes is None:
            raise KubeError("list nodes: 403 Forbidden", 403)
        return copy.deepcopy(self.nodes)

    def active_pods(self) -> list[dict[str, Any]]:
        return [p for p in self._all_pods()
                if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]

    def cluster_events(self, namespace: str, cluster: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(e) for e in self.kuberay_events
                if e["involvedObject"]["name"] == cluster
                and e["involvedObject"]["namespace"] == namespace]

    def patch_sweep_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        body = self.sweeps.get((namespace, name))
        if body is not None:
            self.status_patches += 1
            merge(body.setdefault("status", {}), status)

    def event(self, obj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))

    # what KubeRay would do
    def finish(self, name: str, job: str, deployment: str, message: str = "") -> None:
        """The status KubeRay v1.6.2 leaves at the end (its counters; AppFailed)."""
        status = self.rayjobs[(NS, name)].setdefault("status", {})
        status.update({"jobStatus": job, "jobDeploymentStatus": deployment,
                       "message": message, "rayClusterName": f"{name}-abcde",
                       "startTime": "2025-01-01T00:00:00Z", "jobId": name,
                       "endTime": "2025-01-01T00:10:00Z",
                       "succeeded": int(job == "SUCCEEDED"), "failed": int(job == "FAILED"),
                       "dashboardURL": f"{name}-abcde-head-svc.{NS}.svc.cluster.local:8265"})
        if deployment == "Failed":
            status.setdefault("reason", "AppFailed")

    def run_cluster(self, name: str, *, node: str | None = "n1",
                    phase: str = "Running") -> str:
        """What KubeRay does for a RayJob: a RayCluster `<rayjob>-abcde` whose head and
        worker pods carry the templates' labels and resources (and `ray.io/*` labels)."""
        job = self.rayjobs[(NS, name)]
        cluster_name = f"{name}-abcde"
        status = job.setdefault("status", {})
        status.update({"jobDeploymentStatus": "Initializing", "rayClusterName": cluster_name,
                       "jobId": name, "startTime": "2025-01-01T00:00:00Z",
                       "rayClusterStatus": {"desiredGPU": "0"}})
        spec = job["spec"]["rayClusterSpec"]
        groups = [("head", spec["headGroupSpec"], 1)] + [
            ("worker", g, g["replicas"]) for g in spec["workerGroupSpecs"]]
        pods = []
        for role, group, replicas in groups:
            for index in range(replicas):
                template = copy.deepcopy(group["template"])
                labels = {**template["metadata"]["labels"], "ray.io/cluster": cluster_name,
                          "ray.io/node-type": role}
                pod_spec = template["spec"]
                if node is not None:
                    pod_spec["nodeName"] = node
                pods.append({"metadata": {"name": f"{cluster_name}-{role}-{index}",
                                          "namespace": NS, "labels": labels},
                             "spec": pod_spec, "status": {"phase": phase}})
        self.pods[(NS, cluster_name)] = pods
        return cluster_name

    def ttl_met(self, name: str) -> None:
        """KubeRay deletes a finished job's RayCluster (and pods) once its TTL has passed."""
        self.pods.pop((NS, f"{name}-abcde"), None)

    def jobs(self) -> list[str]:
        return sorted(name for _, name in self.rayjobs)

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]


@pytest.fixture
def sessions(tmp_path: Path) -> Any:
    return store.open_store(f"sqlite:///{tmp_path / 'ladder.db'}")


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def reconciler(cluster: FakeCluster, sessions: Any) -> Reconciler:
    return Reconciler(cluster, sessions, db_secret=SecretRef(name="ladder-db"))


def rows(sessions: Any, sweep: str = "qs") -> dict[tuple[str, int], store.AttemptRow]:
    with sessions() as session:
        return {(r.trial_id, r.attempt): r for r in store.attempts(session, NS, sweep)}


def job_for(cluster: FakeCluster, lane_prefix: str) -> str:
    (name,) = [n for (_, n), j in cluster.rayjobs.items()
               if j["metadata"]["labels"]["ladder.dev/lane"].startswith(lane_prefix)
               and "status" not in j]
    return name


def write_result(sessions: Any, cluster: FakeCluster, name: str, **fields: Any) -> None:
    spec = decode_trial(cluster.rayjobs[(NS, name)])
    assert spec is not None
    with sessions.begin() as session:
        store.record_result(session, AttemptResult.for_trial(spec, **fields))


def test_first_pass_launches_lane_heads(cluster: FakeCluster, reconciler: Reconciler,
                                        sessions: Any) -> None:
    body = cluster.add_sweep("qs", SPEC)
    result = reconciler.reconcile(NS, "qs")
    assert result is not None and len(result.launched) == 2
    assert len(cluster.jobs()) == 2
    for (_, name), job in cluster.rayjobs.items():
        assert job["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
        key = attempt_of(job)
        assert key is not None and key[1] == 1
        row = rows(sessions)[key]
        assert row.rayjob_name == name and row.status == TrialState.PENDING
    status = cluster.sweeps[(NS, "qs")]["status"]
    assert status["phase"] == "Running" and status["observedGeneration"] == 1
    assert status["trials"]["total"] == 6 and status["trials"]["pending"] == 2
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "False", "Progressing": "True", "Suspended": "False"}
    assert cluster.reasons().count("TrialLaunched") == 2


def test_passes_are_idempotent(cluster: FakeCluster, reconciler: Reconciler) -> None:
    cluster.add_sweep("qs", SPEC)
    reconciler.reconcile(NS, "qs")
    patches, events = cluster.status_patches, len(cluster.events)
    for _ in range(3):
        result = reconciler.reconcile(NS, "qs")
        assert result is not None and result.launched == []
    assert cluster.creates == 2
    assert cluster.status_patches == patches  # nothing changed, nothing patched
    assert len(cluster.events) == events


def test_a_restarted_controller_adopts_instead_of_duplicating(
    cluster: FakeCluster, sessions: Any
) -> None:
    cluster.add_sweep("qs", SPEC)
    Reconciler(cluster, sessions).reconcile(NS, "qs")
    Reconciler(cluster, sessions).reconcile(NS, "qs")
    assert cluster.creates == 2 and len(cluster.jobs()) == 2


def test_running_then_worker_result_wins_over_rayjob_status(
    cluster: FakeCluster, reconciler: Reconciler, sessions: Any
) -> None:
    cluster.add_sweep("qs", SPEC)
    reconciler.reconcile(NS, "qs")
    name = job_for(cluster, "full")
    cluster.rayjobs[(NS, name)]["status"] = {"jobStatus": "RUNNING",
                                            "jobDeploymentStatus": "Running"}
    reconciler.reconcile(NS, "qs")
    key = attempt_of(cluster.rayjobs[(NS, name)])
    assert key is not None and rows(sessions)[key].status == TrialState.RUNNING
    # The worker's result (budget OOM) is stored before the Ray job ends with exit code 3.
    write_result(sessions, cluster, name, status=TrialState.OOM, oom_kind=OOMKind.BUDGET,
                 error="MemoryBudgetExceeded")
    cluster.finish(name, "FAILED", "Failed", "Job entrypoint command failed with exit code 3")
    reconciler.reconcile(NS, "qs")
    row = rows(sessions)[key]
    assert (row.status, row.oom_kind) == (TrialState.OOM, OOMKind.BUDGET)
    assert cluster.rayjobs[(NS, name)]["metadata"]["annotations"][ANNOTATION_OUTCOME] == (
        "oom/budget")
    assert "TrialOOM" in cluster.reasons() and "LaneCapped" in cluster.reasons()
    lanes = {lane["name"]: lane for lane in cluster.sweeps[(NS, "qs")]["status"]["lanes"]}
    full = next(lane for n, lane in lanes.items() if n.startswith("full"))
    assert full["state"] == "capped" and full["oomKind"] == "budget"
    assert "ceiling" not in full and full["stoppedAt"] == "ladder/t5-tiny-s"
    # Announced once only.
    reconciler.reconcile(NS, "qs")
    assert cluster.reasons().count("TrialOOM") == 1


def test_ladder_climbs_on_success_and_caps_on_cuda_oom(
    cluster: FakeCluster, reconciler: Reconciler, sessions: Any
) -> None:
    cluster.add_sweep("qs", {**SPEC, "methods": ["lora"], "escalation": {"retries": 0}})
    reconciler.reconcile(NS, "qs")
    small = job_for(cluster, "lora")
    write_result(sessions, cluster, small, status=TrialState.SUCCEEDED, best_eval_loss=0.5)
    cluster.finish(small, "SUCCEEDED", "Complete")
    reconciler.reconcile(NS, "qs")
    medium = job_for(cluster, "lora")
    assert medium != small
    # No worker result this time: the RayJob's message says CUDA OOM.
    cluster.finish(medium, "FAILED", "Failed",
                   "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB")
    reconciler.reconcile(NS, "qs")
    key = attempt_of(cluster.rayjobs[(NS, medium)])
    assert key is not None
    row = rows(sessions)[key]
    assert (row.status, row.oom_kind) == (TrialState.OOM, OOMKind.GPU)
    status = cluster.sweeps[(NS, "qs")]["status"]
    assert status["phase"] == "Succeeded"
    assert status["trials"]["succeeded"] == 1 and status["trials"]["oom"] == 1
    assert status["trials"]["skipped"] == 1
    assert status["best"]["evalLoss"] == 0.5
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert "SweepSucceeded" in cluster.reasons()
    assert len(cluster.jobs()) == 2  # the largest model never launched


def test_oomkilled_pod_is_a_host_oom(cluster: FakeCluster, reconciler: Reconciler,
                                     sessions: Any) -> None:
    cluster.add_sweep("qs", {**SPEC, "methods": ["full"]})
    reconciler.reconcile(NS, "qs")
    name = job_for(cluster, "full")
    cluster.finish(name, "FAILED", "Failed", "ActorDiedError: the actor died unexpectedly")
    cluster.pods[(NS, f"{name}-abcde")] = [{
        "metadata": {"name": f"{name}-abcde-workers-worker-x"},
        "status": {"containerStatuses": [{"name": "ray-worker", "state": {"terminated": {
            "reason": "OOMKilled", "exitCode": 137, "finishedAt": "2025-01-01T00:01:00Z"}}}]},
    }]
    reconciler.reconcile(NS, "qs")
    key = attempt_of(cluster.rayjobs[(NS, name)])
    assert key is not None
    row = rows(sessions)[key]
    assert (row.status, row.oom_kind) == (TrialState.OOM, OOMKind.HOST)
    assert "OOMKilled" in (row.error or "")


def test_rayjob_deleted_behind_our_back_is_run_again(
    cluster: FakeCluster, reconciler: Reconciler, sessions: Any
) -> None:
    cluster.add_sweep("qs", {**SPEC, "methods": ["full"]})
    reconciler.reconcile(NS, "qs")
    (name,) = cluster.jobs()
    cluster.delete_rayjob(NS, name)
    reconciler.reconcile(NS, "qs")
    (again,) = cluster.jobs()
    assert again.endswith("-2") and again[:-2] == name[:-2]
    by_attempt = {k[1]: r for k, r in rows(sessions).items()}
    assert by_attempt[1].status == TrialState.CANCELLED and "gone" in by_attempt[1].error
    assert by_attempt[2].status == TrialState.PENDING
    assert "RayJobLost" in cluster.reasons()


def test_failure_is_retried_then_fails_the_lane(
    cluster: FakeCluster, reconciler: Reconciler, sessions: Any
) -> None:
    cluster.add_sweep("qs", {**SPEC, "methods": ["full"]})  # retries: 1
    reconciler.reconcile(NS, "qs")
    for attempt in (1, 2):
        (name,) = [n for n in cluster.jobs() if n.endswith(f"-{attempt}")]
        cluster.finish(name, "FAILED", "Failed", "KeyError: 'x'")
        reconciler.reconcile(NS, "qs")
    assert len(cluster.jobs()) == 2
    status = cluster.sweeps[(NS, "qs")]["status"]
    assert status["phase"] == "Failed" and status["lanes"][0]["state"] == "failed"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Progressing"] == "False"


def test_suspend_cancels_and_resume_relaunches(
    cluster: FakeCluster, reconciler: Reconciler, sessions: Any
) -> None:
    cluster.add_sweep("qs", SPEC)
    reconciler.reconcile(NS, "qs")
    cluster.set_spec("qs", suspend=True)
    reconciler.reconcile(NS, "qs")
    assert cluster.jobs() == []
    status = cluster.sweeps[(NS, "qs")]["status"]
    assert status["phase"] == "Suspended" and status["observedGeneration"] == 2
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Suspended"]["status"] == "True"
    assert all(r.status == TrialState.CANCELLED for r in rows(sessions).values())
    cluster.set_spec("qs", suspend=False)
    reconciler.reconcile(NS, "qs")
    assert sorted(n[-2:] for n in cluster.jobs()) == ["-2", "-2"]


def test_parallelism_is_honoured_live(cluster: FakeCluster, reconciler: Reconciler) -> None:
    cluster.add_sweep("qs", {**SPEC, "parallelism": 1})
    reconciler.reconcile(NS, "qs")
    assert len(cluster.jobs()) == 1
    cluster.set_spec("qs", parallelism=2)
    reconciler.reconcile(NS, "qs")
    assert len(cluster.jobs()) == 2


def test_deletion_removes_rayjobs_and_keeps_results(
    cluster: FakeCluster, reconciler: Reconciler, sessions: Any
) -> None:
    cluster.add_sweep("qs", SPEC)
    reconciler.reconcile(NS, "qs")
    done = job_for(cluster, "full")
    write_result(sessions, cluster, done, status=TrialState.SUCCEEDED, best_eval_loss=0.3)
    cluster.finish(done, "SUCCEEDED", "Complete")
    cluster.sweeps[(NS, "qs")]["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    result = reconciler.reconcile(NS, "qs")
    assert result is not None and result.remaining_rayjobs == 0
    assert cluster.jobs() == []
    states = sorted(r.status.value for r in rows(sessions).values())
    assert states == ["cancelled", "succeeded"]
    assert cluster.sweeps[(NS, "qs")]["status"]["phase"] == "Deleting"


def test_orphans_of_an_older_sweep_are_deleted(cluster: FakeCluster,
                                               reconciler: Reconciler) -> None:
    cluster.add_sweep("qs", SPEC)
    reconciler.reconcile(NS, "qs")
    old = set(cluster.jobs())
    cluster.add_sweep("qs", SPEC)  # same name, new uid: the old RayJobs are not its own
    result = reconciler.reconcile(NS, "qs")
    assert result is not None and sorted(result.deleted) == sorted(old)


def test_rayjob_without_store_row_is_adopted(cluster: FakeCluster, sessions: Any,
                                             tmp_path: Path) -> None:
    cluster.add_sweep("qs", {**SPEC, "methods": ["full"]})
    Reconciler(cluster, sessions).reconcile(NS, "qs")
    (name,) = cluster.jobs()
    # A fresh, empty store: the running RayJob is adopted, not launched again.
    fresh = store.open_store(f"sqlite:///{tmp_path / 'other.db'}")
    Reconciler(cluster, fresh).reconcile(NS, "qs")
    assert cluster.jobs() == [name] and cluster.creates == 1
    (row,) = rows(fresh).values()
    assert row.rayjob_name == name


def test_invalid_spec_is_reported_in_status(cluster: FakeCluster,
                                            reconciler: Reconciler) -> None:
    cluster.add_sweep("qs", {**SPEC, "execution": {"capacity": {"tpus": 1}}})
    result = reconciler.reconcile(NS, "qs")
    assert result is not None and result.invalid and "capacity" in result.invalid
    status = cluster.sweeps[(NS, "qs")]["status"]
    assert status["reason"] == "InvalidSpec" and "capacity" in status["message"]
    assert cluster.jobs() == [] and "InvalidSpec" in cluster.reasons()
    reconciler.reconcile(NS, "qs")
    assert cluster.reasons().count("InvalidSpec") == 1


def test_kick_runs_a_pass(cluster: FakeCluster, reconciler: Reconciler) -> None:
    cluster.add_sweep("qs", SPEC)
    reconciler.kick(NS, "qs")
    assert len(cluster.jobs()) == 2
    assert reconciler.reconcile(NS, "gone") is None


def test_resource_changes_apply_to_later_launches(
    cluster: FakeCluster, reconciler: Reconciler, sessions: Any
) -> None:
    cluster.add_sweep("qs", {**SPEC, "methods": ["full"]})
    reconciler.reconcile(NS, "qs")
    (first,) = cluster.jobs()
    cluster.set_spec("qs", resources={"workers": 2, "gpusPerWorker": 1})
    write_result(sessions, cluster, first, status=TrialState.SUCCEEDED, best_eval_loss=1.0)
    reconciler.reconcile(NS, "qs")
    (second,) = [n for n in cluster.jobs() if n != first]
    group = cluster.rayjobs[(NS, second)]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == 2
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"


# --- installation settings: execution defaults, host access, metrics -------------------------


def _pod_spec(cluster: FakeCluster, group: str = "worker") -> dict[str, Any]:
    (name, *_) = cluster.jobs()
    cluster_spec = cluster.rayjobs[(NS, name)]["spec"]["rayClusterSpec"]
    source = cluster_spec["headGroupSpec"] if group == "head" else \
        cluster_spec["workerGroupSpecs"][0]
    return source["template"]["spec"]


def test_installation_defaults_apply_under_the_sweeps_own_execution(
    cluster: FakeCluster, sessions: Any
) -> None:
    defaults = {"image": "registry.example/ladder-worker:1.0",
                "nodeSelector": {"nvidia.com/gpu.present": "true"},
                "worker": {"cpu": "16", "memory": "160Gi"}}
    reconciler = Reconciler(cluster, sessions, execution_defaults=defaults)
    cluster.add_sweep("qs", {**SPEC, "methods": ["full"],
                             "execution": {"worker": {"memory": "32Gi"}}})
    reconciler.reconcile(NS, "qs")
    pod = _pod_spec(cluster)
    container = pod["containers"][0]
    assert container["image"] == "registry.example/ladder-worker:1.0"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # The Sweep's worker.memory wins; the installation's worker.cpu stays.
    assert container["resources"]["limits"]["memory"] == "32Gi"
    assert container["resources"]["limits"]["cpu"] == "16"


HOST_PATH = {"volumes": [{"name": "data", "emptyDir": {}},
                         {"name": "host", "hostPath": {"path": "/var/lib"}}],
             "volumeMounts": [{"name": "host", "mountPath": "/host"}]}


@pytest.mark.parametrize("allowed", [pytest.param(False, id="refused-by-default"),
                                     pytest.param(True, id="allowed-by-the-installation")])
def test_host_path_volumes_need_the_installations_consent(
    cluster: FakeCluster, sessions: Any, allowed: bool
) -> None:
    reconciler = Reconciler(cluster, sessions, allow_privileged_trials=allowed)
    cluster.add_sweep("qs", {**SPEC, "methods": ["full"], "execution": HOST_PATH})
    result = reconciler.reconcile(NS, "qs")
    assert result is not None
    if allowed:
        assert result.invalid is None and len(cluster.jobs()) == 1
        assert {"name": "host", "hostPath": {"path": "/var/lib"}} in _pod_spec(cluster)["volumes"]
    else:
        assert result.invalid is not None and cluster.jobs() == []
        assert "spec.execution.volumes[1].hostPath" in result.invalid
        assert "allowPrivilegedTrials" in cluster.sweeps[(NS, "qs")]["status"]["message"]


def test_passes_are_measured_when_the_controller_serves_metrics(
    cluster: FakeCluster, sessions: Any
) -> None:
    from orchestrator.metrics import LadderMetrics

    metrics = LadderMetrics()
    reconciler = Reconciler(cluster, sessions, metrics=metrics)
    cluster.add_sweep("qs", SPEC)
    reconciler.reconcile(NS, "qs")
    reconciler.reconcile(NS, "qs")
    labels = {"sweep": "qs", "namespace": NS}
    count = metrics.registry.get_sample_value("ladder_reconcile_duration_seconds_count", labels)
    launches = metrics.registry.get_sample_value("ladder_trial_launch_latency_seconds_count",
                                                 labels)
    assert (count, launches) == (2.0, 2.0)


def test_every_attempt_stores_the_memory_estimate(cluster: FakeCluster, reconciler: Reconciler,
                                                  sessions: Any) -> None:
    from orchestrator.core.estimate import estimated_bytes
    from orchestrator.core.grid import expand
    from orchestrator.operator.reconcile import sweep_from_body

    body = cluster.add_sweep("qs", SPEC)
    reconciler.reconcile(NS, "qs")
    sweep = sweep_from_body(body)
    trials = {t.trial_id: t for t in expand(sweep).all_trials()}
    launched = rows(sessions)
    assert len(launched) == 2
    for (trial_id, _), row in launched.items():
        expected = estimated_bytes(sweep.spec, trials[trial_id])
        assert expected is not None and expected > 0
        assert row.estimated_memory_bytes == expected


def test_a_large_cached_grid_is_kept_out_of_collections() -> None:
    """A grid of FREEZE_GRID_TRIALS or more goes to the collector's permanent generation (full
    collections no longer walk it on every pass); a small one leaves the collector alone."""
    import gc

    from orchestrator.operator.reconcile import FREEZE_GRID_TRIALS, keep_out_of_collections

    gc.unfreeze()
    try:
        keep_out_of_collections(FREEZE_GRID_TRIALS - 1)
        assert gc.get_freeze_count() == 0
        keep_out_of_collections(FREEZE_GRID_TRIALS)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
