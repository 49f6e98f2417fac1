"""GPUs as the cluster really holds them, from Node and Pod objects (pure; no I/O).

The scheduler (`core.scheduler`) counts what this sweep's active attempts need. What a real
cluster holds besides them, the controller reads from pods:

- a finished trial's RayCluster keeps its pods, and their GPUs, until KubeRay deletes it
  `ttlSecondsAfterFinished` after the job ended ("TTL has not been met"); those GPUs are
  `held` until the pods are gone (`held_gpus`);
- with no `execution.capacity`, the capacity is the cluster's: allocatable `nvidia.com/gpu`
  of the schedulable nodes, and what every non-terminal pod other than this sweep's active
  attempts already requests is held (`cluster_gpus`);
- a pod that the scheduler keeps refusing (`PodScheduled=False`, reason `Unschedulable`)
  for longer than `execution.unschedulableTimeoutSeconds` makes its attempt requeued
  (`unschedulable_reason`);
- a RayJob created suspended for Kueue holds nothing until Kueue admits it (`queued`).

A pod's GPUs are its effective request, as the scheduler counts them: the larger of the sum
over its containers and the largest init container, each container's request defaulting to
its limit (extended resources may set limits only).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.operator.manifests import (
    GPU_RESOURCE,
    LABEL_SWEEP,
    attempt_of,
    label_value,
    parse_time,
)

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
UNSCHEDULABLE = "Unschedulable"


def _quantity(value: Any) -> int:
    """An extended-resource quantity (a whole number, e.g. "8") as an int; 0 when unreadable."""
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return 0


def container_gpus(container: Mapping[str, Any], resource: str = GPU_RESOURCE) -> int:
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    return _quantity(requests[resource] if resource in requests else limits.get(resource, 0))


def pod_gpus(pod: Mapping[str, Any], resource: str = GPU_RESOURCE) -> int:
    """The GPUs a pod requests (its effective request, as the scheduler counts it)."""
    spec = pod.get("spec") or {}
    app = sum(container_gpus(c, resource) for c in spec.get("containers") or [])
    init = max((container_gpus(c, resource) for c in spec.get("initContainers") or []),
               default=0)
    return max(app, init)


def holds_resources(pod: Mapping[str, Any]) -> bool:
    """Whether the pod still holds (or waits for) its resources: it is not terminal. A pod
    being deleted still holds them until it is gone."""
    return (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES


def tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """Whether one of the tolerations tolerates the taint (Kubernetes' matching rules)."""
    for toleration in tolerations:
        effect = toleration.get("effect")
        if effect and effect != taint.get("effect"):
            continue
        key = toleration.get("key")
        if toleration.get("operator") == "Exists":
            if not key or key == taint.get("key"):
                return True
        elif key == taint.get("key") and (toleration.get("value") or "") == (
            taint.get("value") or ""
        ):
            return True
    return False


def fits_node(
    node: Mapping[str, Any],
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any]] = (),
) -> bool:
    """Whether a trial pod with this node selector and these tolerations may land there."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    if any(labels.get(key) != value for key, value in (node_selector or {}).items()):
        return False
    return all(
        tolerates(tolerations, taint)
        for taint in (node.get("spec") or {}).get("taints") or []
        if taint.get("effect") in ("NoSchedule", "NoExecute")
    )


def allocatable_gpus(node: Mapping[str, Any], resource: str = GPU_RESOURCE) -> int:
    """A node's allocatable GPUs, usable now or not."""
    return _quantity(((node.get("status") or {}).get("allocatable") or {}).get(resource, 0))


def node_gpus(node: Mapping[str, Any], resource: str = GPU_RESOURCE) -> int:
    """Allocatable GPUs of a node new pods can land on now: 0 when cordoned or not Ready."""
    if (node.get("spec") or {}).get("unschedulable"):
        return 0
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("status") != "True":
            return 0
    return allocatable_gpus(node, resource)


def own_attempt(pod: Mapping[str, Any], namespace: str, sweep: str) -> tuple[str, int] | None:
    """(trial id, attempt) when the pod belongs to an attempt of this sweep."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    if meta.get("namespace", namespace) != namespace:
        return None
    if labels.get(LABEL_SWEEP) != label_value(sweep):
        return None
    return attempt_of(pod)


def held_gpus(
    pods: Iterable[Mapping[str, Any]],
    namespace: str,
    sweep: str,
    active: Collection[tuple[str, int]],
) -> int:
    """GPUs this sweep's pods hold outside its active attempts: the clusters of finished
    attempts that are not gone yet (the active ones are counted by the scheduler)."""
    total = 0
    for pod in pods:
        key = own_attempt(pod, namespace, sweep)
        if key is not None and key not in active and holds_resources(pod):
            total += pod_gpus(pod)
    return total


@dataclass(frozen=True, slots=True)
class GpuPool:
    """The cluster's GPUs for a sweep's pods: `total` on every node they fit (a node that is
    NotReady or cordoned for a while still counts: a trial is never recorded unschedulable
    for that), `allocatable` on those usable now, `held` there by pods already."""

    total: int
    allocatable: int
    held: int
    nodes: int

    @property
    def free(self) -> int:
        return self.allocatable - self.held

    @property
    def unavailable(self) -> int:
        """What is not free besides the sweep's own active attempts: held by pods, or on
        nodes not usable now."""
        return self.total - self.free


def cluster_gpus(
    nodes: Sequence[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    namespace: str,
    sweep: str,
    active: Collection[tuple[str, int]],
    *,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any]] = (),
) -> GpuPool:
    """The cluster's GPU pool, for a sweep without `execution.capacity`.

    `allocatable` sums the nodes the sweep's pods may land on (`execution.nodeSelector`
    and `tolerations` against the nodes' labels and taints; schedulable and Ready). `held`
    is what every non-terminal pod on those nodes (or not bound yet) requests, except the
    pods of this sweep's active attempts: the scheduler counts those from their demand,
    whether their pods exist yet or not.
    """
    fitting = [n for n in nodes if fits_node(n, node_selector, tolerations)]
    counted = {(n.get("metadata") or {}).get("name"): node_gpus(n) for n in fitting}
    counted = {name: gpus for name, gpus in counted.items() if gpus > 0}
    held = 0
    for pod in pods:
        if not holds_resources(pod):
            continue
        node = (pod.get("spec") or {}).get("nodeName")
        if node and node not in counted:
            continue
        key = own_attempt(pod, namespace, sweep)
        if key is not None and key in active:
            continue
        held += pod_gpus(pod)
    return GpuPool(total=sum(allocatable_gpus(n) for n in fitting),
                   allocatable=sum(counted.values()), held=held, nodes=len(nodes))


def unschedulable_reason(
    pods: Iterable[Mapping[str, Any]], now: datetime, timeout_seconds: float
) -> str | None:
    """Why an attempt's pods cannot start, once one of them has been refused by the
    scheduler (`PodScheduled=False`, reason Unschedulable) for `timeout_seconds` or more;
    the scheduler's own message says why ("0/2 nodes are available: 2 Insufficient
    nvidia.com/gpu")."""
    for pod in pods:
        if not holds_resources(pod) or (pod.get("spec") or {}).get("nodeName"):
            continue
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if (condition.get("type") != "PodScheduled" or condition.get("status") != "False"
                    or condition.get("reason") != UNSCHEDULABLE):
                continue
            since = parse_time(condition.get("lastTransitionTime"))
            if since is None:
                continue
            waited = (now - since).total_seconds()
            if waited >= timeout_seconds:
                name = (pod.get("metadata") or {}).get("name", "?")
                message = condition.get("message") or "no node fits it"
                return f"pod {name} unschedulable for {waited:.0f} s: {message}"
    return None


def queued(rayjob: Mapping[str, Any]) -> bool:
    """A RayJob waiting for admission (created with `spec.suspend: true` for Kueue, not yet
    admitted): KubeRay creates no RayCluster for it, so it holds no GPUs."""
    return bool((rayjob.get("spec") or {}).get("suspend"))
