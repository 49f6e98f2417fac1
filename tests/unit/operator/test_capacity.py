"""GPUs as the cluster holds them (orchestrator.operator.capacity), from Node and Pod objects
shaped as the API server returns them: effective pod requests, finished clusters that keep
their GPUs, node-derived capacity on a shared cluster, unschedulable pods, Kueue-suspended
RayJobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.operator.capacity import (
    GpuPool,
    cluster_gpus,
    held_gpus,
    node_gpus,
    pod_gpus,
    queued,
    unschedulable_reason,
)

NS, SWEEP = "ml", "qs"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
GPU = "nvidia.com/gpu"


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def node(name: str, gpus: int, *, ready: str = "True", cordoned: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {"allocatable": {"cpu": "96", "memory": "1Ti", "pods": "110", GPU: str(gpus)},
                   "capacity": {GPU: str(gpus)},
                   "conditions": [{"type": "Ready", "status": ready}]},
    }


def pod(name: str, gpus: int = 1, *, phase: str = "Running", node_name: str | None = "n1",
        trial: str | None = None, attempt: int = 1, sweep: str = SWEEP, namespace: str = NS,
        limits_only: bool = True, conditions: list[dict[str, Any]] | None = None
        ) -> dict[str, Any]:
    labels = {"ray.io/cluster": f"{name}-c", "ray.io/node-type": "worker"}
    if trial is not None:
        labels.update({"app.kubernetes.io/managed-by": "ladder", "ladder.dev/sweep": sweep,
                       "ladder.dev/trial": trial, "ladder.dev/attempt": str(attempt)})
    resources: dict[str, Any] = {"limits": {"cpu": "4", GPU: str(gpus)}}
    if not limits_only:
        resources["requests"] = {"cpu": "4", GPU: str(gpus)}
    spec: dict[str, Any] = {"containers": [{"name": "ray-worker", "resources": resources}]}
    if node_name:
        spec["nodeName"] = node_name
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": spec, "status": {"phase": phase, "conditions": conditions or []}}


class TestPodGpus:
    def test_limits_only_and_requests(self) -> None:
        assert pod_gpus(pod("a", 2)) == 2
        assert pod_gpus(pod("a", 3, limits_only=False)) == 3

    def test_containers_sum_and_init_containers_take_the_max(self) -> None:
        body = pod("a", 1)
        body["spec"]["containers"].append({"name": "side", "resources": {"limits": {GPU: "2"}}})
        assert pod_gpus(body) == 3
        body["spec"]["initContainers"] = [{"name": "i", "resources": {"limits": {GPU: "4"}}}]
        assert pod_gpus(body) == 4

    def test_no_gpu(self) -> None:
        assert pod_gpus({"spec": {"containers": [{"name": "head"}]}}) == 0


class TestNodes:
    @pytest.mark.parametrize(("body", "gpus"), [
        (node("n", 4), 4),
        (node("n", 4, ready="False"), 0),
        (node("n", 4, ready="Unknown"), 0),
        (node("n", 4, cordoned=True), 0),
        ({"metadata": {"name": "cpu"}, "status": {"allocatable": {"cpu": "8"}}}, 0),
    ])
    def test_allocatable_of_schedulable_nodes(self, body: dict[str, Any], gpus: int) -> None:
        assert node_gpus(body) == gpus


class TestHeld:
    def test_finished_clusters_hold_their_gpus_until_their_pods_are_gone(self) -> None:
        pods = [
            pod("done-w1", 8, trial="t1"),  # finished attempt, cluster kept for the TTL
            pod("done-w2", 8, trial="t2", phase="Pending", node_name=None),
            pod("live-w", 8, trial="t3"),  # active: counted by the scheduler
            pod("old-w", 8, trial="t4", phase="Succeeded"),  # terminal: holds nothing
            pod("other", 8, trial="t1", sweep="another"),  # not this sweep
            pod("elsewhere", 8, trial="t1", namespace="team-b"),
            pod("theirs", 8),  # not Ladder's
        ]
        assert held_gpus(pods, NS, SWEEP, active={("t3", 1)}) == 16

    def test_an_older_attempt_of_an_active_trial_still_holds(self) -> None:
        pods = [pod("a1", 4, trial="t1", attempt=1), pod("a2", 4, trial="t1", attempt=2)]
        assert held_gpus(pods, NS, SWEEP, active={("t1", 2)}) == 4


class TestClusterGpus:
    def test_allocatable_minus_what_pods_request(self) -> None:
        nodes = [node("n1", 8), node("n2", 8), node("n3", 8, cordoned=True)]
        pods = [
            pod("tenant", 4, node_name="n1"),
            pod("queued", 2, phase="Pending", node_name=None),  # waits for GPUs: counts
            pod("done", 8, phase="Failed", node_name="n2"),
            pod("on-cordoned", 8, node_name="n3"),  # its node is not counted either
            pod("ours-live", 8, trial="t1", node_name="n2"),
            pod("ours-finished", 1, trial="t0", node_name="n2"),
        ]
        pool = cluster_gpus(nodes, pods, NS, SWEEP, active={("t1", 1)})
        assert pool == GpuPool(total=24, allocatable=16, held=7, nodes=3)
        assert pool.free == 9
        assert pool.unavailable == 15  # 7 held + the cordoned node's 8

    def test_no_nodes(self) -> None:
        assert cluster_gpus([], [], NS, SWEEP, active=()) == GpuPool(0, 0, 0, 0)


class TestUnschedulable:
    @staticmethod
    def pending(since: datetime, reason: str = "Unschedulable") -> dict[str, Any]:
        return pod("w", 8, phase="Pending", node_name=None, trial="t1", conditions=[{
            "type": "PodScheduled", "status": "False", "reason": reason,
            "lastTransitionTime": stamp(since),
            "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: "
                       "0/2 nodes are available: 2 No preemption victims found for incoming "
                       "pod.",
        }])

    def test_after_the_timeout_with_the_schedulers_message(self) -> None:
        pods = [pod("head", 0, trial="t1"), self.pending(NOW - timedelta(seconds=301))]
        reason = unschedulable_reason(pods, NOW, 300)
        assert reason is not None
        assert reason.startswith("pod w unschedulable for 301 s: 0/2 nodes are available: "
                                 "2 Insufficient nvidia.com/gpu")

    def test_not_before_the_timeout(self) -> None:
        assert unschedulable_reason([self.pending(NOW - timedelta(seconds=299))], NOW,
                                    300) is None

    def test_scheduled_or_other_reasons_are_not_unschedulable(self) -> None:
        long_ago = NOW - timedelta(hours=1)
        assert unschedulable_reason([self.pending(long_ago, "SchedulingGated")], NOW,
                                    300) is None
        bound = self.pending(long_ago)
        bound["spec"]["nodeName"] = "n1"
        assert unschedulable_reason([bound, pod("ok", trial="t1")], NOW, 300) is None


def test_suspended_rayjobs_are_queued() -> None:
    assert queued({"spec": {"suspend": True}})
    assert not queued({"spec": {"suspend": False}})
    assert not queued({"spec": {}})


class TestNodeFit:
    GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}

    def gpu_node(self, name: str, gpus: int, **labels: str) -> dict[str, Any]:
        body = node(name, gpus)
        body["metadata"]["labels"] = {"nvidia.com/gpu.present": "true", **labels}
        body["spec"]["taints"] = [self.GPU_TAINT]
        return body

    def test_only_nodes_the_trial_pods_may_land_on(self) -> None:
        nodes = [self.gpu_node("a", 4), self.gpu_node("b", 4, pool="h100"),
                 node("unlabelled", 8)]
        tolerate = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        selector = {"nvidia.com/gpu.present": "true"}
        pool = cluster_gpus(nodes, [], NS, SWEEP, (), node_selector=selector,
                            tolerations=tolerate)
        assert pool.allocatable == 8
        assert cluster_gpus(nodes, [], NS, SWEEP, (), node_selector={"pool": "h100"},
                            tolerations=tolerate).allocatable == 4
        # Without the toleration the tainted GPU nodes are out.
        assert cluster_gpus(nodes, [], NS, SWEEP, ()).allocatable == 8  # the untainted one

    @pytest.mark.parametrize(("toleration", "ok"), [
        ({"operator": "Exists"}, True),
        ({"key": "nvidia.com/gpu", "operator": "Exists"}, True),
        ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}, True),
        ({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}, True),
        ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "other"}, False),
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "other", "operator": "Exists"}, False),
    ])
    def test_tolerations(self, toleration: dict[str, Any], ok: bool) -> None:
        body = self.gpu_node("a", 4)
        assert (cluster_gpus([body], [], NS, SWEEP, (), tolerations=[toleration])
                .allocatable == 4) is ok
