"""How a RayJob's attempt ended (orchestrator.operator.manifests.outcome_from_rayjob), over a
corpus of RayJob statuses shaped the way KubeRay v1.7 writes them, and pods of the job's
RayCluster (OOMKilled containers, memory evictions)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.operator.manifests import (
    cluster_name,
    host_oom,
    outcome_from_rayjob,
    running_state,
)

S, OOM, F, C = TrialState.SUCCEEDED, TrialState.OOM, TrialState.FAILED, TrialState.CANCELLED
START = "2025-11-23T10:00:00Z"
CUDA_OOM = (
    "Job entrypoint command failed with exit code 3, last available logs (truncated to "
    "20,000 chars):\n  File \"/app/worker/train.py\", line 212, in probe_step\n"
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
    "capacity of 79.15 GiB of which 1.12 GiB is free."
)
# The same OOM when the budget's memory fraction capped the allocator (torch says "allowed").
CUDA_OOM_CAPPED = CUDA_OOM.replace("is free.", "is free. 24.00 GiB allowed; Of the allocated "
                                   "memory 21.90 GiB is allocated by PyTorch.")


def rayjob(
    job: str | None = None,
    deployment: str | None = None,
    *,
    reason: str | None = None,
    message: str | None = None,
    cluster: str | None = "trial-abc-1-x7k2p",
) -> dict[str, Any]:
    status: dict[str, Any] = {"startTime": START}
    for key, value in (("jobStatus", job), ("jobDeploymentStatus", deployment),
                       ("reason", reason), ("message", message), ("rayClusterName", cluster)):
        if value is not None:
            status[key] = value
    return {"apiVersion": "ray.io/v1", "kind": "RayJob",
            "metadata": {"name": "trial-abc-1"}, "spec": {}, "status": status}


def pod(
    name: str = "trial-abc-1-x7k2p-workers-worker-abcde",
    *,
    reason: str | None = None,
    last: bool = False,
    finished: str = "2025-11-23T10:05:00Z",
    phase: str = "Running",
    pod_reason: str | None = None,
    pod_message: str | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "ray-worker", "ready": not reason,
                                 "state": {"running": {"startedAt": START}}}
    if reason is not None:
        terminated = {"reason": reason, "exitCode": 137, "finishedAt": finished}
        if last:
            container["lastState"] = {"terminated": terminated}
        else:
            container["state"] = {"terminated": terminated}
    status: dict[str, Any] = {"phase": phase, "containerStatuses": [container]}
    if pod_reason:
        status["reason"] = pod_reason
    if pod_message:
        status["message"] = pod_message
    return {"metadata": {"name": name, "labels": {"ray.io/cluster": "trial-abc-1-x7k2p"}},
            "status": status}


# (id, rayjob, pods, budget_set, expected state, expected oom kind, text in the reason)
CORPUS: list[tuple[str, dict[str, Any], list[dict[str, Any]], bool, Any, Any, str]] = [
    ("new", rayjob(), [], False, None, None, ""),
    ("initializing", rayjob(None, "Initializing"), [], False, None, None, ""),
    ("pending", rayjob("PENDING", "Running"), [], False, None, None, ""),
    ("running", rayjob("RUNNING", "Running"), [], False, None, None, ""),
    ("running-with-oomkilled-pod-is-still-running",
     rayjob("RUNNING", "Running"), [pod(reason="OOMKilled")], False, None, None, ""),
    ("succeeded", rayjob("SUCCEEDED", "Complete", message="Job finished successfully."),
     [], False, S, None, "finished successfully"),
    ("succeeded-before-deployment-catches-up", rayjob("SUCCEEDED", "Running"),
     [], False, S, None, ""),
    ("stopped", rayjob("STOPPED", "Complete", message="Job was intentionally stopped."),
     [], False, C, None, "stopped"),
    ("cuda-oom", rayjob("FAILED", "Failed", reason="AppFailed", message=CUDA_OOM),
     [], False, OOM, OOMKind.GPU, "CUDA out of memory"),
    ("cuda-oom-under-budget", rayjob("FAILED", "Failed", reason="AppFailed",
                                     message=CUDA_OOM_CAPPED),
     [], True, OOM, OOMKind.BUDGET, "CUDA out of memory"),
    # A budget above the card sets no fraction: the card ran out, not the budget.
    ("cuda-oom-budget-not-binding", rayjob("FAILED", "Failed", reason="AppFailed",
                                           message=CUDA_OOM),
     [], True, OOM, OOMKind.GPU, "CUDA out of memory"),
    ("budget-exception", rayjob("FAILED", "Failed", reason="AppFailed",
                                message="worker.memory.MemoryBudgetExceeded: peak 170Mi > 160Mi"),
     [], True, OOM, OOMKind.BUDGET, "MemoryBudgetExceeded"),
    ("ray-memory-monitor", rayjob("FAILED", "Failed", message=(
        "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on "
        "memory.")), [], False, OOM, OOMKind.HOST, "low on"),
    ("oomkilled-worker", rayjob("FAILED", "Failed", reason="AppFailed", message=(
        "Job entrypoint command failed with exit code 1: ActorDiedError: The actor died "
        "unexpectedly")), [pod(reason="OOMKilled")], False, OOM, OOMKind.HOST, "OOMKilled"),
    ("oomkilled-in-last-state", rayjob("FAILED", "Failed"),
     [pod(reason="OOMKilled", last=True)], False, OOM, OOMKind.HOST, "OOMKilled"),
    ("oomkilled-head-before-any-verdict",
     rayjob(None, "Failed", reason="JobDeploymentStatusTransitionGracePeriodExceeded",
            message="the head pod was lost"),
     [pod("trial-abc-1-x7k2p-head-qqqqq", reason="OOMKilled")], False, OOM, OOMKind.HOST,
     "head-qqqqq"),
    ("evicted-for-memory", rayjob("FAILED", "Failed"),
     [pod(phase="Failed", pod_reason="Evicted",
          pod_message="The node was low on resource: memory. Container ray-worker was using "
                      "70Gi, which exceeds its request of 16Gi.")],
     False, OOM, OOMKind.HOST, "evicted"),
    ("oomkill-older-than-the-job-is-ignored", rayjob("FAILED", "Failed", message="boom"),
     [pod(reason="OOMKilled", finished="2025-11-23T09:00:00Z")], False, F, None, "boom"),
    ("other-terminations-are-not-oom", rayjob("FAILED", "Failed", message="ValueError: bad"),
     [pod(reason="Error")], False, F, None, "ValueError"),
    ("plain-failure", rayjob("FAILED", "Failed", reason="AppFailed", message=(
        "Job entrypoint command failed with exit code 1, last available logs: KeyError: 'x'")),
     [], False, F, None, "KeyError"),
    ("oom-exit-code-without-text", rayjob("FAILED", "Failed", reason="AppFailed", message=(
        "Job entrypoint command failed with exit code 3, last available logs: (none)")),
     [], False, OOM, None, "exit code 3"),
    ("submission-failed", rayjob(None, "Failed", reason="SubmissionFailed",
                                 message="the submitter Job failed 1 time(s)"),
     [], False, F, None, "SubmissionFailed"),
    ("deadline-exceeded", rayjob("RUNNING", "Failed", reason="DeadlineExceeded",
                                 message="The RayJob has passed the activeDeadlineSeconds."),
     [], False, F, None, "DeadlineExceeded"),
    ("complete-without-verdict", rayjob(None, "Complete"), [], False, F, None, "Complete"),
    ("suspended-is-not-an-outcome", rayjob(None, "Suspended"), [], False, None, None, ""),
]


@pytest.mark.parametrize(
    ("job", "pods", "budget_set", "state", "kind", "text"),
    [case[1:] for case in CORPUS],
    ids=[case[0] for case in CORPUS],
)
def test_outcome(job: dict[str, Any], pods: list[dict[str, Any]], budget_set: bool,
                 state: TrialState | None, kind: OOMKind | None, text: str) -> None:
    outcome = outcome_from_rayjob(job, pods, budget_set=budget_set)
    if state is None:
        assert outcome is None
        return
    assert outcome is not None
    got_state, got_kind, reason = outcome
    assert (got_state, got_kind) == (state, kind)
    assert text in reason
    assert len(reason) <= 2100


def test_no_status_at_all() -> None:
    assert outcome_from_rayjob({"metadata": {"name": "x"}}, []) is None


def test_long_messages_are_cut_to_their_end() -> None:
    message = "x" * 10_000 + " CUDA out of memory"
    state, kind, reason = outcome_from_rayjob(rayjob("FAILED", "Failed", message=message), [])
    assert (state, kind) == (OOM, OOMKind.GPU)
    assert reason.endswith("CUDA out of memory") and len(reason) < 2100


def test_host_oom_names_pod_and_container() -> None:
    found = host_oom([pod("p1"), pod("p2", reason="OOMKilled")])
    assert found == "pod p2 container ray-worker was OOMKilled (exit code 137)"
    assert host_oom([pod("p1")]) is None


@pytest.mark.parametrize(("job", "state"), [
    (rayjob(), TrialState.PENDING),
    (rayjob(None, "Initializing"), TrialState.PENDING),
    (rayjob("PENDING", "Running"), TrialState.RUNNING),
    (rayjob("RUNNING", "Running"), TrialState.RUNNING),
])
def test_running_state(job: dict[str, Any], state: TrialState) -> None:
    assert running_state(job) is state


def test_cluster_name() -> None:
    assert cluster_name(rayjob()) == "trial-abc-1-x7k2p"
    selector = {"spec": {"clusterSelector": {"ray.io/cluster": "pool"}}, "status": {}}
    assert cluster_name(selector) == "pool"
    assert cluster_name({"spec": {}}) is None
