"""RayJob outcomes from the shapes the real KubeRay operator (v1.6.2) leaves, as observed on a
real cluster (/work/shared/notes/real-cluster.md): statuses with its real fields, and host OOMs
that survive only as KubeRay's `DeletedWorkerPod` Event or as the kubelet's restarted pod."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.operator.manifests import host_oom_events, outcome_from_rayjob, running_state

START = "2026-12-01T10:00:00Z"
CLUSTER = "qs-abc-1-x7k2p"
DASHBOARD = f"{CLUSTER}-head-svc.ml.svc.cluster.local:8265"
GRACE = ("The RayJob submitter finished at 2026-12-01 10:01:05 +0000 UTC but the ray job did "
         "not reach terminal state within 30s")
KUBERAY_OOM = (
    f"Deleted worker Pod ml/{CLUSTER}-workers-worker-q8zt4; Pod status: Failed; Pod restart "
    "policy: Never; Ray container terminated status: &ContainerStateTerminated{ExitCode:137,"
    "Signal:0,Reason:OOMKilled,Message:,StartedAt:2026-12-01 10:00:20 +0000 UTC,FinishedAt:"
    "2026-12-01 10:00:41 +0000 UTC,ContainerID:,}"
)


def status(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "qs-abc-1"},
            "spec": {}, "status": {"jobId": "qs-abc-1", "rayClusterName": CLUSTER,
                                   "startTime": START, **fields}}


# Statuses as KubeRay v1.6.2 writes them, from creation to the end.
INITIALIZING = status(jobDeploymentStatus="Initializing", jobStatus="",
                      rayClusterStatus={"desiredCPU": "3", "desiredGPU": "8", "state": ""})
RUNNING_PENDING = status(jobDeploymentStatus="Running", jobStatus="PENDING",
                         dashboardURL=DASHBOARD,
                         rayClusterStatus={"state": "ready", "readyWorkerReplicas": 8})
RUNNING = status(jobDeploymentStatus="Running", jobStatus="RUNNING", dashboardURL=DASHBOARD)
COMPLETE = status(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", succeeded=1, failed=0,
                  endTime="2026-12-01T10:05:00Z", message="Job finished successfully.",
                  dashboardURL=DASHBOARD)
APP_FAILED = status(jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
                    failed=1, succeeded=0,
                    message="Job entrypoint command failed with exit code 1, last available "
                            "logs (truncated to 20,000 chars):\nValueError: bad")
GRACE_EXCEEDED = status(jobDeploymentStatus="Failed", jobStatus="FAILED", failed=1,
                        reason="JobDeploymentStatusTransitionGracePeriodExceeded",
                        message=GRACE)
VALIDATION = status(jobDeploymentStatus="ValidationFailed", reason="ValidationFailed",
                    message="authOptions.mode is 'token' but minimum Ray version is 2.52.0, "
                            "got 2.49.0")
SUSPENDED = status(jobDeploymentStatus="Suspended", jobStatus="")


@pytest.mark.parametrize(("rayjob", "live"), [
    (INITIALIZING, TrialState.PENDING),
    (SUSPENDED, TrialState.PENDING),
    (status(jobDeploymentStatus="Suspending"), TrialState.PENDING),
    (status(jobDeploymentStatus="Retrying"), TrialState.PENDING),
    (RUNNING_PENDING, TrialState.RUNNING),
    (RUNNING, TrialState.RUNNING),
])
def test_live_statuses_are_not_outcomes(rayjob: dict[str, Any], live: TrialState) -> None:
    assert outcome_from_rayjob(rayjob) is None
    assert running_state(rayjob) is live


def test_complete() -> None:
    assert outcome_from_rayjob(COMPLETE) == (
        TrialState.SUCCEEDED, None, "Job finished successfully.")
    counted = status(jobDeploymentStatus="Complete", succeeded=1)
    assert outcome_from_rayjob(counted) is not None
    assert outcome_from_rayjob(counted)[0] is TrialState.SUCCEEDED  # type: ignore[index]


@pytest.mark.parametrize(("rayjob", "words"), [
    (APP_FAILED, "AppFailed; Job entrypoint command failed with exit code 1"),
    (GRACE_EXCEEDED, "JobDeploymentStatusTransitionGracePeriodExceeded; The RayJob submitter"),
    (VALIDATION, "ValidationFailed; authOptions.mode is 'token'"),
])
def test_failures_carry_kuberays_reason(rayjob: dict[str, Any], words: str) -> None:
    outcome = outcome_from_rayjob(rayjob)
    assert outcome is not None
    state, kind, reason = outcome
    assert (state, kind) == (TrialState.FAILED, None)
    assert reason.startswith(words)


# --- host OOMs as KubeRay and the kubelet leave them -------------------------------------------


def event(reason: str = "DeletedWorkerPod", message: str = KUBERAY_OOM,
          when: str = "2026-12-01T10:00:41Z") -> dict[str, Any]:
    return {"metadata": {"name": f"{CLUSTER}.18a2b", "namespace": "ml"},
            "involvedObject": {"kind": "RayCluster", "name": CLUSTER, "namespace": "ml"},
            "reason": reason, "message": message, "type": "Normal", "count": 1,
            "firstTimestamp": when, "lastTimestamp": when,
            "source": {"component": "raycluster-controller"}}


def test_kuberays_deleted_worker_pod_event_is_a_host_oom() -> None:
    """The worker pod is deleted and replaced within ~60 ms; only the Event remains."""
    outcome = outcome_from_rayjob(APP_FAILED, [], events=[event()])
    assert outcome is not None
    state, kind, reason = outcome
    assert (state, kind) == (TrialState.OOM, OOMKind.HOST)
    assert reason.startswith(f"pod {CLUSTER}-workers-worker-q8zt4 was OOMKilled (exit code "
                             "137); KubeRay deleted and replaced it; AppFailed")


def test_the_head_too() -> None:
    message = KUBERAY_OOM.replace("Deleted worker Pod", "Deleted head Pod")
    assert host_oom_events([event("DeletedHeadPod", message)]) is not None


@pytest.mark.parametrize("other", [
    event(message=KUBERAY_OOM.replace("OOMKilled", "Error").replace("137", "1")),
    event("CreatedWorkerPod", f"Created worker Pod ml/{CLUSTER}-workers-worker-zz"),
    event(message="Deleted pod ml/x"),  # scaled down, not killed
    event(when="2026-12-01T09:59:00Z"),  # before this attempt started (standing cluster)
])
def test_other_events_are_not_host_ooms(other: dict[str, Any]) -> None:
    outcome = outcome_from_rayjob(APP_FAILED, [], events=[other])
    assert outcome is not None and outcome[1] is None


def test_the_kubelets_restarted_pod_is_a_host_oom() -> None:
    """What a real node leaves: the pod Running, restartCount 1, lastState OOMKilled."""
    pod = {
        "metadata": {"name": f"{CLUSTER}-workers-worker-abcde",
                     "labels": {"ray.io/cluster": CLUSTER}},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "ray-worker", "ready": True, "restartCount": 1,
            "state": {"running": {"startedAt": "2026-12-01T10:00:43Z"}},
            "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                         "startedAt": "2026-12-01T10:00:20Z",
                                         "finishedAt": "2026-12-01T10:00:41Z"}},
        }]},
    }
    outcome = outcome_from_rayjob(APP_FAILED, [pod])
    assert outcome is not None and outcome[:2] == (TrialState.OOM, OOMKind.HOST)
    assert "was OOMKilled (exit code 137)" in outcome[2]
