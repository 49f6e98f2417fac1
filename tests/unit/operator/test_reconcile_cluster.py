"""The reconcile pass against what the real KubeRay operator (v1.6.2) and a shared cluster do,
on the in-memory fake of test_reconcile: finished RayClusters keep their GPUs until their TTL,
capacity from the nodes, Kueue-suspended RayJobs, unschedulable pods, host OOMs that KubeRay
leaves only as an Event, and RayJob statuses with the real operator's fields."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.operator.reconcile import Reconciler
from tests.unit.operator.test_reconcile import (
    NS,
    SPEC,
    FakeCluster,
    rows,
    write_result,
)
from tests.unit.operator.test_reconcile import (
    cluster as cluster,
)
from tests.unit.operator.test_reconcile import (
    reconciler as reconciler,
)
from tests.unit.operator.test_reconcile import (
    sessions as sessions,
)

GPU = "nvidia.com/gpu"
# Four lanes whose every trial takes 8 GPUs (8 workers x 1 GPU), as in the paper.
GPU_SPEC: dict[str, Any] = {
    **copy.deepcopy(SPEC),
    "adapters": [{"rank": 8, "alphas": [16]}, {"rank": 16, "alphas": [32]},
                 {"rank": 32, "alphas": [64]}],
    "resources": {"workers": 8, "gpusPerWorker": 1},
    "escalation": {"onOOM": "stop-lane", "retries": 1},
    "parallelism": 8,
}


def spec_with(**execution: Any) -> dict[str, Any]:
    return {**copy.deepcopy(GPU_SPEC), "execution": execution}


def active_jobs(cluster: FakeCluster) -> list[str]:
    return sorted(n for (_, n), j in cluster.rayjobs.items()
                  if (j.get("status") or {}).get("jobDeploymentStatus") not in
                  ("Complete", "Failed"))


def node(name: str, gpus: int) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "status": {"allocatable": {GPU: str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def succeed(cluster: FakeCluster, sessions: Any, name: str) -> None:
    """The worker reports its result and KubeRay marks the job Complete; the RayCluster and
    its pods stay until ttlSecondsAfterFinished ("TTL has not been met")."""
    write_result(sessions, cluster, name, status=TrialState.SUCCEEDED, best_eval_loss=0.5)
    cluster.finish(name, "SUCCEEDED", "Complete")


# --- finished clusters keep their GPUs --------------------------------------------------------


def test_finished_clusters_keep_their_gpus_until_kuberay_deletes_them(
    cluster: FakeCluster, reconciler: Reconciler, sessions: Any
) -> None:
    """The issue's case: capacity 16; two 8-GPU trials finish but KubeRay keeps their
    clusters for the TTL. No new RayJob may start until their GPUs are really free."""
    cluster.add_sweep("qs", spec_with(capacity={"gpus": 16}))
    first = reconciler.reconcile(NS, "qs")
    assert first is not None and len(first.launched) == 2
    for name in first.launched:
        cluster.run_cluster(name)
        succeed(cluster, sessions, name)
    held = reconciler.reconcile(NS, "qs")
    assert held is not None and held.launched == []
    assert {r.status for r in rows(sessions).values()} == {TrialState.SUCCEEDED}

    cluster.ttl_met(first.launched[0])  # one cluster gone: 8 GPUs free
    one = reconciler.reconcile(NS, "qs")
    assert one is not None and len(one.launched) == 1
    cluster.ttl_met(first.launched[1])
    two = reconciler.reconcile(NS, "qs")
    assert two is not None and len(two.launched) == 1


def test_a_finished_attempts_pods_that_ended_hold_nothing(
    cluster: FakeCluster, reconciler: Reconciler, sessions: Any
) -> None:
    cluster.add_sweep("qs", spec_with(capacity={"gpus": 16}))
    first = reconciler.reconcile(NS, "qs")
    assert first is not None
    for name in first.launched:
        cluster.run_cluster(name, phase="Succeeded")
        succeed(cluster, sessions, name)
    again = reconciler.reconcile(NS, "qs")
    assert again is not None and len(again.launched) == 2


# --- host OOMs as KubeRay leaves them ---------------------------------------------------------


def test_a_worker_kuberay_deleted_for_oomkilled_is_a_host_oom(
    cluster: FakeCluster, reconciler: Reconciler, sessions: Any
) -> None:
    """The OOMKilled worker pod is gone (KubeRay deleted and replaced it in ~60 ms); only its
    `DeletedWorkerPod` Event on the RayCluster says what happened."""
    cluster.add_sweep("qs", SPEC)
    first = reconciler.reconcile(NS, "qs")
    assert first is not None
    name = first.launched[0]
    cluster_name = cluster.run_cluster(name)  # replacement pods: all Running, no OOM left
    cluster.kuberay_events.append({
        "involvedObject": {"kind": "RayCluster", "name": cluster_name, "namespace": NS},
        "reason": "DeletedWorkerPod", "type": "Normal",
        "lastTimestamp": "2025-01-01T00:01:00Z",
        "message": f"Deleted worker Pod {NS}/{cluster_name}-workers-worker-q8zt4; Pod status: "
                   "Failed; Pod restart policy: Never; Ray container terminated status: "
                   "&ContainerStateTerminated{ExitCode:137,Signal:0,Reason:OOMKilled,}",
    })
    cluster.finish(name, "FAILED", "Failed", "Job entrypoint command failed with exit code 1")
    reconciler.reconcile(NS, "qs")
    (row,) = [r for r in rows(sessions).values() if r.rayjob_name == name]
    assert (row.status, row.oom_kind) == (TrialState.OOM, OOMKind.HOST)
    assert "OOMKilled (exit code 137); KubeRay deleted and replaced it" in (row.error or "")


# --- pods the scheduler keeps refusing ----------------------------------------------------------

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
INSUFFICIENT = ("0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2 nodes "
                "are available: 2 No preemption victims found for incoming pod.")


def refuse_workers(cluster: FakeCluster, cluster_name: str, since: datetime) -> None:
    """What kube-scheduler writes on pods it cannot place."""
    for pod in cluster.pods[(NS, cluster_name)]:
        if pod["metadata"]["labels"]["ray.io/node-type"] == "worker":
            pod["spec"].pop("nodeName", None)
            pod["status"] = {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": INSUFFICIENT,
                "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ")}]}


def test_unschedulable_pods_requeue_the_trial_after_the_timeout(
    cluster: FakeCluster, sessions: Any
) -> None:
    reconciler = Reconciler(cluster, sessions, clock=lambda: NOW)
    cluster.add_sweep("qs", spec_with(unschedulableTimeoutSeconds=300))
    first = reconciler.reconcile(NS, "qs")
    assert first is not None
    name = first.launched[0]
    cluster_name = cluster.run_cluster(name)
    refuse_workers(cluster, cluster_name, NOW - timedelta(seconds=200))
    waiting = reconciler.reconcile(NS, "qs")
    assert waiting is not None and name not in waiting.deleted  # not yet

    refuse_workers(cluster, cluster_name, NOW - timedelta(seconds=301))
    requeued = reconciler.reconcile(NS, "qs")
    assert requeued is not None and name in requeued.deleted
    assert (NS, name) not in cluster.rayjobs
    (old,) = [r for r in rows(sessions).values() if r.rayjob_name == name]
    assert old.status == TrialState.CANCELLED
    assert old.error == (f"requeued: pod {cluster_name}-worker-0 unschedulable for 301 s: "
                         f"{INSUFFICIENT}")
    assert "TrialUnschedulable" in cluster.reasons()
    # The same trial runs again as attempt 2; the lane did not fail.
    assert any(n == name[:-1] + "2" for n in requeued.launched)
    status = cluster.sweeps[(NS, "qs")]["status"]
    assert all(lane["state"] != "failed" for lane in status["lanes"])


# --- capacity from the nodes of a shared cluster -----------------------------------------------


def tenant_pod(gpus: int, node_name: str = "gpu-1") -> dict[str, Any]:
    return {"metadata": {"name": "their-training", "namespace": "team-b", "labels": {}},
            "spec": {"nodeName": node_name, "containers": [
                {"name": "main", "resources": {"limits": {GPU: str(gpus)}}}]},
            "status": {"phase": "Running"}}


def test_without_capacity_the_nodes_free_gpus_bound_the_launches(
    cluster: FakeCluster, reconciler: Reconciler, sessions: Any
) -> None:
    """2 nodes x 8 GPUs, another team already uses 8: one 8-GPU trial fits, not four."""
    cluster.nodes = [node("gpu-1", 8), node("gpu-2", 8)]
    cluster.pods[("team-b", "theirs")] = [tenant_pod(8)]
    cluster.add_sweep("qs", spec_with())
    first = reconciler.reconcile(NS, "qs")
    assert first is not None and len(first.launched) == 1
    # Our own running trial's pods are not counted twice.
    cluster.run_cluster(first.launched[0], node="gpu-2")
    again = reconciler.reconcile(NS, "qs")
    assert again is not None and again.launched == []
    # The other team finishes: its 8 GPUs come back.
    cluster.pods[("team-b", "theirs")][0]["status"]["phase"] = "Succeeded"
    freed = reconciler.reconcile(NS, "qs")
    assert freed is not None and len(freed.launched) == 1
    assert not [r for r in rows(sessions).values() if r.status == TrialState.FAILED]


def test_a_node_not_ready_for_a_while_fails_no_trial(
    cluster: FakeCluster, reconciler: Reconciler, sessions: Any
) -> None:
    """One of two 8-GPU nodes goes NotReady: its GPUs are not free, but the trials that
    need them are not recorded unschedulable either; they wait."""
    down = node("gpu-2", 8)
    down["status"]["conditions"] = [{"type": "Ready", "status": "Unknown"}]
    cluster.nodes = [node("gpu-1", 8), down]
    cluster.add_sweep("qs", {**spec_with(), "resources": {"workers": 4, "gpusPerWorker": 4}})
    first = reconciler.reconcile(NS, "qs")
    assert first is not None and first.launched == []
    assert not rows(sessions)  # nothing recorded: waiting, not failed
    cluster.nodes = [node("gpu-1", 8), node("gpu-2", 8)]
    back = reconciler.reconcile(NS, "qs")
    assert back is not None and len(back.launched) == 1


def test_a_gpu_pool_that_scales_from_zero_is_not_a_capacity_of_zero(
    cluster: FakeCluster, reconciler: Reconciler, sessions: Any
) -> None:
    cluster.nodes = [{"metadata": {"name": "cpu-1"}, "status": {"allocatable": {"cpu": "8"}}}]
    cluster.add_sweep("qs", spec_with())
    first = reconciler.reconcile(NS, "qs")
    assert first is not None and len(first.launched) == 4  # the autoscaler adds GPU nodes
    assert not [r for r in rows(sessions).values() if r.status == TrialState.FAILED]


@pytest.mark.parametrize("nodes", [None, []], ids=["nodes-forbidden", "no-nodes"])
def test_without_readable_nodes_only_parallelism_bounds(
    cluster: FakeCluster, reconciler: Reconciler, nodes: list | None
) -> None:
    cluster.nodes = nodes
    cluster.add_sweep("qs", spec_with())
    first = reconciler.reconcile(NS, "qs")
    assert first is not None and len(first.launched) == 4  # every lane head


def test_explicit_capacity_wins_over_the_nodes(
    cluster: FakeCluster, reconciler: Reconciler
) -> None:
    cluster.nodes = [node("gpu-1", 8)]
    cluster.add_sweep("qs", spec_with(capacity={"gpus": 24}))
    first = reconciler.reconcile(NS, "qs")
    assert first is not None and len(first.launched) == 3


# --- Kueue -------------------------------------------------------------------------------------


def admit(cluster: FakeCluster, name: str) -> None:
    """What Kueue does once the ClusterQueue's quota allows: unsuspend the RayJob."""
    cluster.rayjobs[(NS, name)]["spec"]["suspend"] = False


def test_suspended_rayjobs_wait_for_kueue_and_hold_no_gpus(
    cluster: FakeCluster, reconciler: Reconciler
) -> None:
    cluster.nodes = [node("gpu-1", 8)]  # ignored: with a queue, Kueue's quota decides
    cluster.add_sweep("qs", spec_with(queueName="team-a", capacity={"gpus": 16}))
    first = reconciler.reconcile(NS, "qs")
    assert first is not None and len(first.launched) == 2  # what the capacity allows
    # Once created suspended (queued), they hold nothing: the next pass queues the rest.
    second = reconciler.reconcile(NS, "qs")
    assert second is not None and len(second.launched) == 2
    launched = first.launched + second.launched
    for name in launched:
        job = cluster.rayjobs[(NS, name)]
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        job["status"] = {"jobDeploymentStatus": "Suspended"}
    assert reconciler.reconcile(NS, "qs").launched == []  # type: ignore[union-attr]
    # Kueue admits two (16 GPUs): they count against the capacity from now on; admitted
    # or queued, no attempt is settled while it waits.
    for name in launched[:2]:
        admit(cluster, name)
    again = reconciler.reconcile(NS, "qs")
    assert again is not None and again.launched == [] and again.settled == {}


def test_with_a_queue_and_no_capacity_only_parallelism_bounds(
    cluster: FakeCluster, reconciler: Reconciler
) -> None:
    cluster.nodes = [node("gpu-1", 8)]
    cluster.add_sweep("qs", {**spec_with(queueName="team-a"), "parallelism": 3})
    first = reconciler.reconcile(NS, "qs")
    assert first is not None and len(first.launched) == 3
