"""The Ladder controller (`ladder controller`) against the real kube-apiserver, with the KubeRay
STAND-IN (tests/k8s/kuberay_standin.py, named as such) leaving what the real operator v1.6.2
and a real cluster leave (/work/shared/notes/real-cluster.md): RayClusters whose pods keep
their GPUs until ttlSecondsAfterFinished, worker pods the scheduler refuses, OOMKilled
workers that KubeRay deletes (only an Event remains) or a kubelet restarts, and RayJobs
suspended for Kueue. The stand-in writes the scheduler's and kubelet's part of pod status
itself, because nothing here schedules or runs a pod; tests/k8s/real/ runs the real ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.operator.kube import Kube
from tests.k8s.kuberay_standin import Behaviour, KubeRayStandIn
from tests.k8s.operator_harness import ControllerProcess, wait_for
from tests.k8s.test_operator import (
    SMALL,
    attempts,
    controller,
    diagnose,
    events,
    kube,
    namespace,
    rayjobs,
    submit,
    sweep_crd,
    sweep_status,
)

if TYPE_CHECKING:
    from tests.k8s.conftest import ControlPlane

pytestmark = pytest.mark.k8s
__all__ = ["controller", "kube", "namespace", "sweep_crd"]  # fixtures

INSUFFICIENT = ("0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2 "
                "nodes are available: 2 No preemption victims found for incoming pod.")
# One lane of two models, each trial 2 workers x 4 GPUs: a whole 8-GPU capacity.
GPU_SWEEP = """
apiVersion: ladder.dev/v1alpha1
kind: Sweep
metadata: {name: NAME}
spec:
  ladder: [ladder/t5-tiny-s, ladder/t5-tiny-m]
  methods: [full]
  training: {epochs: 1, precision: fp32, init: random}
  resources: {workers: 2, gpusPerWorker: 4}
  escalation: {onOOM: stop-lane, retries: 1}
  parallelism: 2
  execution: {outputDir: OUTPUT, EXECUTION}
"""


def gpu_sweep(execution: str) -> str:
    return GPU_SWEEP.replace("EXECUTION", execution)


@pytest.fixture
def cluster_standin(kube: Kube, namespace: str) -> Iterator[KubeRayStandIn]:
    """The KubeRay STAND-IN making each RayCluster's pods (and deleting them at the TTL)."""
    with KubeRayStandIn(kube.api_client, namespace, mode="none", poll_interval=0.2,
                        pods=True) as s:
        yield s


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_finished_clusters_gpus_are_used_until_kuberay_deletes_it(
    control_plane: ControlPlane, namespace: str, controller: ControllerProcess,
    cluster_standin: KubeRayStandIn, kube: Kube, tmp_path: Path,
) -> None:
    """Capacity 8 GPUs, each trial takes 8: the next model must not start while the finished
    trial's RayCluster still holds its GPUs (ttlSecondsAfterFinished: 5)."""
    cluster_standin.behave(lambda _: True, Behaviour(succeed=True, delay=0.5))
    submit(control_plane, namespace, "ttl", tmp_path,
           gpu_sweep("capacity: {gpus: 8}, ttlSecondsAfterFinished: 5"))
    why = diagnose(kube, namespace, "ttl", controller, cluster_standin)
    jobs = wait_for("both RayJobs", lambda: len(j := rayjobs(kube, namespace, "ttl")) == 2
                    and j, timeout=90, diagnose=why)
    by_model = {j["metadata"]["annotations"]["ladder.dev/model"]: j for j in jobs}
    first, second = by_model[SMALL], by_model["ladder/t5-tiny-m"]
    ended = _time(first["status"]["endTime"])
    created = _time(second["metadata"]["creationTimestamp"])
    # Timestamps have one-second resolution; without the accounting it starts within ~1 s.
    assert (created - ended).total_seconds() >= 4, why()
    gpu_pods = [p for p in kube.core.list_namespaced_pod(
        namespace, label_selector="ladder.dev/sweep=ttl").items
        if p.metadata.labels.get("ray.io/node-type") == "worker"]
    assert all(p.spec.containers[0].resources.limits["nvidia.com/gpu"] == "4"
               for p in gpu_pods)


def test_pods_refused_by_the_scheduler_requeue_the_trial(
    control_plane: ControlPlane, namespace: str, controller: ControllerProcess,
    cluster_standin: KubeRayStandIn, kube: Kube, tmp_path: Path, db_url: str,
) -> None:
    cluster_standin.behave(lambda _: True, Behaviour(unschedulable=INSUFFICIENT))
    submit(control_plane, namespace, "unsched", tmp_path,
           gpu_sweep("unschedulableTimeoutSeconds: 2"))
    why = diagnose(kube, namespace, "unsched", controller, cluster_standin)
    wait_for("attempt 2", lambda: any(j["metadata"]["labels"]["ladder.dev/attempt"] == "2"
                                      for j in rayjobs(kube, namespace, "unsched")),
             timeout=60, diagnose=why)
    rows = {(r.model, r.attempt): r for r in attempts(db_url, namespace, "unsched")}
    first = rows[(SMALL, 1)]
    assert first.status == TrialState.CANCELLED
    assert "unschedulable for" in (first.error or "") and INSUFFICIENT in (first.error or "")
    assert first.rayjob_name not in [j["metadata"]["name"]
                                     for j in rayjobs(kube, namespace, "unsched")]
    assert any(reason == "TrialUnschedulable" and INSUFFICIENT in message
               for reason, message in events(kube, namespace))
    lanes = sweep_status(kube, namespace, "unsched").get("lanes") or []
    assert all(lane["state"] != "failed" for lane in lanes)


def test_an_oomkilled_worker_the_kubelet_restarted_is_a_host_oom(
    control_plane: ControlPlane, namespace: str, controller: ControllerProcess,
    kube: Kube, tmp_path: Path, db_url: str,
) -> None:
    with KubeRayStandIn(kube.api_client, namespace, mode="none", poll_interval=0.2) as standin:
        standin.behave(KubeRayStandIn.for_model(SMALL),
                       Behaviour(pod_oom=True, oom_shape="kubelet"))
        submit(control_plane, namespace, "kubelet", tmp_path,
               gpu_sweep("ttlSecondsAfterFinished: 0"))
        why = diagnose(kube, namespace, "kubelet", controller, standin)
        wait_for("the lane capped", lambda: (s := sweep_status(kube, namespace, "kubelet"))
                 .get("lanes") and s["lanes"][0]["state"] == "capped", diagnose=why)
    rows = {r.model: r for r in attempts(db_url, namespace, "kubelet")}
    assert (rows[SMALL].status, rows[SMALL].oom_kind) == (TrialState.OOM, OOMKind.HOST)


def test_kueue_suspended_rayjobs_wait_for_admission(
    control_plane: ControlPlane, namespace: str, controller: ControllerProcess,
    kube: Kube, tmp_path: Path, db_url: str,
) -> None:
    """With execution.queueName the RayJobs are created suspended and labelled for Kueue;
    the stand-in leaves them Suspended (as KubeRay does) until someone playing Kueue admits
    one by setting spec.suspend to false."""
    with KubeRayStandIn(kube.api_client, namespace, mode="none", poll_interval=0.2) as standin:
        text = gpu_sweep("queueName: team-a").replace(
            "methods: [full]", "methods: [full, lora]\n  adapters: [{rank: 8, alphas: [16]}]")
        submit(control_plane, namespace, "kueue", tmp_path, text)
        why = diagnose(kube, namespace, "kueue", controller, standin)
        jobs = wait_for("two suspended RayJobs", lambda: len(
            j := [x for x in rayjobs(kube, namespace, "kueue")
                  if (x.get("status") or {}).get("jobDeploymentStatus") == "Suspended"]
        ) == 2 and j, diagnose=why)
        for job in jobs:
            assert job["spec"]["suspend"] is True
            assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        admitted = jobs[0]["metadata"]["name"]
        kube.custom.patch_namespaced_custom_object(
            "ray.io", "v1", namespace, "rayjobs", admitted, {"spec": {"suspend": False}})
        wait_for("the admitted trial running", lambda: any(
            r.rayjob_name == admitted and r.status == TrialState.RUNNING
            for r in attempts(db_url, namespace, "kueue")), diagnose=why)
        rows = {r.rayjob_name: r for r in attempts(db_url, namespace, "kueue")}
        waiting = jobs[1]["metadata"]["name"]
        assert rows[waiting].status == TrialState.PENDING
        assert standin.seen == [admitted]  # nothing ran for the suspended one
