"""A STAND-IN for the KubeRay operator, for tests against the local kube-apiserver.

THIS IS NOT KUBERAY. The test control plane has no kubelet, scheduler or KubeRay operator,
so nothing would ever run a RayJob. This stand-in plays KubeRay's part (docs/architecture.md,
"What runs for real in tests, and what stands in"): it watches RayJobs in one namespace and,
for each,

1. resolves the environment a KubeRay pod would give the job: the runtime env's `env_vars`
   (`spec.runtimeEnvYAML`) and the head container's `env`, `valueFrom.secretKeyRef` read
   from the real Secret;
2. runs `spec.entrypoint` as a Ray job on a LOCAL Ray runtime (mode "ray", what KubeRay
   would submit to the RayCluster's head), or as a plain `sh -c` subprocess (mode
   "subprocess"), or not at all (behaviours `hold`, `fail_message`, `pod_oom`);
3. writes the RayJob's status through the status subresource with the fields the real
   KubeRay operator v1.6.2 writes (observed on a real cluster, /work/shared/notes/
   real-cluster.md): `jobDeploymentStatus` Initializing (`jobStatus` empty) -> Running
   (`jobStatus` PENDING -> RUNNING, `dashboardURL` the head Service's in-cluster name,
   `rayClusterStatus`) -> Complete (SUCCEEDED, STOPPED) or Failed (FAILED, reason
   AppFailed), the `succeeded`/`failed` counters, `startTime`, `endTime`, `rayClusterName`
   (`<rayjob>-<5 random chars>`), `jobId`, `message` (Ray's job message, e.g. "Job
   entrypoint command failed with exit code 3, ...");
4. refuses what the real operator refuses, the same way: a RayJob whose rayClusterSpec has
   no `rayVersion` stays Initializing forever (KubeRay logs "failed to parse Ray version");
   `authOptions.mode: token` with a Ray before 2.52.0 is `ValidationFailed`; a Ray 2.60 head
   without `authOptions` (and without RAY_AUTH_MODE=disabled) answers KubeRay with 401, so
   the RayJob stays Running with no job status, forever;
5. leaves a RayJob created with `spec.suspend: true` (Kueue) `Suspended`, running nothing,
   until `spec.suspend` turns false (what Kueue does when it admits it);
6. with `pods=True`, makes the RayCluster's head and worker pods from the templates (with
   KubeRay's `ray.io/*` labels and the templates' own; Running through pods/status) and, as
   KubeRay does, keeps them `ttlSecondsAfterFinished` after the job ended, then deletes them;
7. stops the Ray job when its RayJob is deleted (KubeRay deletes the RayCluster with it).

Behaviours let a test inject what a real cluster would produce: a Ray job whose message
reports a CUDA OOM; a worker pod OOMKilled, either as KubeRay leaves it (the pod deleted and
replaced at once, only a `DeletedWorkerPod ... OOMKilled` Event on the RayCluster) or as a
kubelet leaves it (the pod Running, restartCount 1, lastState OOMKilled); worker pods the
scheduler refuses (`PodScheduled=False`, Unschedulable, its message), the RayJob staying
Initializing. The stand-in writes the scheduler's part of pod status itself: there is no
scheduler or kubelet here (tests/k8s/real/ runs the real ones).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from orchestrator.backends.ray_head import RayHead, start_head

log = logging.getLogger("kuberay-standin")

REPO_ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
MERGE_PATCH = "application/merge-patch+json"
RAY_FAILED_MESSAGE = (
    "Job entrypoint command failed with exit code {code}, last available logs "
    "(truncated to 20,000 chars):\n{logs}"
)


def _release(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def validation_error(spec: Mapping[str, Any]) -> str | None:
    """What KubeRay v1.6.2's validation (utils/validation.go) says of a RayJob's cluster spec
    with token auth, or None."""
    cluster = spec.get("rayClusterSpec") or {}
    if (cluster.get("authOptions") or {}).get("mode") != "token":
        return None
    version = cluster.get("rayVersion") or ""
    if not version:
        return ("authOptions.mode is 'token' but RayVersion was not specified. Ray version "
                "2.52.0 or later is required")
    if _release(version) < (2, 52, 0):
        return f"authOptions.mode is 'token' but minimum Ray version is 2.52.0, got {version}"
    return None


# Measured with a Ray 2.60 head: token auth is on unless RAY_AUTH_MODE says otherwise.
TOKEN_AUTH_BY_DEFAULT_SINCE = (2, 60, 0)


def head_accepts_kuberay(cluster: Mapping[str, Any]) -> bool:
    """Whether KubeRay can talk to the head's dashboard: the head runs without token auth,
    or with the token KubeRay holds (authOptions mode token)."""
    mode = (cluster.get("authOptions") or {}).get("mode")
    if mode == "token":
        return True
    head = (((cluster.get("headGroupSpec") or {}).get("template") or {}).get("spec") or {})
    env = {item.get("name"): item.get("value")
           for c in head.get("containers") or [] for item in c.get("env") or []}
    if env.get("RAY_AUTH_MODE") == "disabled":
        return True
    if env.get("RAY_AUTH_MODE") == "token":
        return False
    return _release(str(cluster.get("rayVersion") or "0")) < TOKEN_AUTH_BY_DEFAULT_SINCE


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Behaviour:
    """What the stand-in does with a matching RayJob instead of (or besides) running it.

    - `hold`: report Running forever (until the RayJob is deleted); nothing runs.
    - `fail_message`: fail at once with this Ray job message (e.g. a CUDA OOM traceback).
    - `pod_oom`: a RayCluster worker pod OOMKilled (`oom_shape` "kuberay": deleted and
      replaced, a DeletedWorkerPod Event left; "kubelet": Running, restartCount 1, lastState
      OOMKilled), then fail the job the way Ray reports a dead actor.
    - `succeed`: end SUCCEEDED (nothing runs).
    - `unschedulable`: the scheduler's message for worker pods it refuses; the RayJob stays
      Initializing (needs `pods=True`).
    - `delay`: seconds to stay Running before the above.
    """

    hold: bool = False
    fail_message: str | None = None
    pod_oom: bool = False
    oom_shape: str = "kuberay"  # or "kubelet"
    succeed: bool = False
    unschedulable: str | None = None
    delay: float = 0.5


@dataclass
class _Job:
    name: str
    uid: str
    cluster: str
    job_id: str
    behaviour: Behaviour | None
    started: float = field(default_factory=time.monotonic)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    done: bool = False
    stuck: bool = False  # refused the way KubeRay refuses it: never progresses
    ttl: float = 0.0
    ended: float | None = None
    pods: list[str] = field(default_factory=list)


class KubeRayStandIn:
    """A stand-in for the KubeRay operator (see the module docstring). Not KubeRay."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        *,
        mode: str = "ray",
        python: str = sys.executable,
        poll_interval: float = 0.3,
        ray_cpus: int = 4,
        pods: bool = False,
    ) -> None:
        from kubernetes import client

        if mode not in ("ray", "subprocess", "none"):
            raise ValueError(f"mode must be ray, subprocess or none, not {mode!r}")
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.mode = mode
        self.python = python
        self.poll_interval = poll_interval
        self.ray_cpus = ray_cpus
        self.make_pods = pods
        self.behaviours: list[tuple[Callable[[dict[str, Any]], bool], Behaviour]] = []
        self.jobs: dict[str, _Job] = {}
        self.seen: list[str] = []  # every RayJob name ever picked up, in order
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ray_client: Any = None
        self._head: RayHead | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="kuberay-standin-"))

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> KubeRayStandIn:
        if self.mode == "ray":
            try:
                self._start_ray()
            except BaseException:
                self.stop()
                raise
        self._thread = threading.Thread(target=self._loop, name="kuberay-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for job in list(self.jobs.values()):
            self._kill(job)
        self._stop_ray()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> KubeRayStandIn:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _start_ray(self) -> None:
        """A local Ray head of our own: the local backend's (ray_head.start_head, on free
        loopback ports: the machine may run other Ray runtimes), with token auth off. Jobs
        inherit its environment, so the worker joins it the same way (no token)."""
        from ray.job_submission import JobSubmissionClient

        self._head = start_head(num_cpus=self.ray_cpus, num_gpus=0,
                                object_store_bytes=256 * 2**20, auth=False)
        self._ray_client = JobSubmissionClient(self._head.dashboard_url)

    def _stop_ray(self) -> None:
        if self._head is not None:
            self._head.stop()
            self._head = None

    # --- test hooks -----------------------------------------------------------------------
    def behave(self, match: Callable[[dict[str, Any]], bool], behaviour: Behaviour) -> None:
        """The first matching behaviour applies to each new RayJob."""
        self.behaviours.append((match, behaviour))

    @staticmethod
    def for_model(model: str) -> Callable[[dict[str, Any]], bool]:
        return lambda rayjob: (rayjob["metadata"].get("annotations") or {}).get(
            "ladder.dev/model") == model

    # --- the loop -------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as error:  # keep standing in; tests read `errors`
                log.exception("stand-in tick failed")
                self.errors.append(repr(error))
            self._stop.wait(self.poll_interval)

    def _tick(self) -> None:
        items = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL
        ).get("items", [])
        live = {item["metadata"]["name"]: item for item in items}
        for name, job in list(self.jobs.items()):
            rayjob = live.get(name)
            if rayjob is None or rayjob["metadata"]["uid"] != job.uid:
                self._kill(job)  # KubeRay deletes the RayCluster: the job dies with it
                self._delete_pods(job)
                del self.jobs[name]
            elif job.ended is not None and job.pods and (
                time.monotonic() - job.ended >= job.ttl
            ):
                self._delete_pods(job)  # "TTL has not been met" no more: the cluster goes
        for name, rayjob in live.items():
            if rayjob["metadata"].get("deletionTimestamp"):
                continue
            job = self.jobs.get(name)
            if job is None:
                deployment = (rayjob.get("status") or {}).get("jobDeploymentStatus")
                if deployment in ("Complete", "Failed", "ValidationFailed"):
                    continue  # finished before we (re)started
                if (rayjob.get("spec") or {}).get("suspend"):
                    if deployment != "Suspended":  # waits for Kueue to admit it
                        self._patch_status(name, {"jobDeploymentStatus": "Suspended",
                                                  "jobStatus": ""})
                    continue
                self._begin(rayjob)
            elif not job.done and not job.stuck:
                self._progress(job, rayjob)

    def _patch_status(self, name: str, status: Mapping[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, name, {"status": dict(status)},
                _content_type=MERGE_PATCH,
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def _behaviour(self, rayjob: dict[str, Any]) -> Behaviour | None:
        for match, behaviour in self.behaviours:
            if match(rayjob):
                return behaviour
        return None

    def _begin(self, rayjob: dict[str, Any]) -> None:
        name = rayjob["metadata"]["name"]
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        spec = rayjob.get("spec") or {}
        selector = spec.get("clusterSelector") or {}
        cluster = selector.get("ray.io/cluster") or f"{name}-{suffix}"
        job = _Job(name=name, uid=rayjob["metadata"]["uid"], cluster=cluster,
                   job_id=spec.get("jobId") or f"{name}-{suffix}",
                   behaviour=self._behaviour(rayjob),
                   ttl=float(spec.get("ttlSecondsAfterFinished") or 0))
        self.jobs[name] = job
        self.seen.append(name)
        refused = validation_error(spec)
        if refused is not None:  # KubeRay's validation: nothing is created
            job.stuck = True
            self._patch_status(name, {"jobDeploymentStatus": "ValidationFailed",
                                      "reason": "ValidationFailed", "message": refused})
            return
        self._patch_status(name, {
            "jobDeploymentStatus": "Initializing", "startTime": now(), "jobStatus": "",
            "rayClusterName": cluster, "jobId": job.job_id,
            "rayClusterStatus": {"state": "ready" if selector else ""},
        })
        cluster_spec = spec.get("rayClusterSpec") or {}
        if cluster_spec and spec.get("metadata") and not cluster_spec.get("rayVersion"):
            job.stuck = True  # "failed to parse Ray version: : invalid semantic version"
            return
        behaviour = job.behaviour
        if self.make_pods and cluster_spec:
            self._create_pods(job, rayjob, behaviour)
        if behaviour is not None and behaviour.unschedulable:
            job.stuck = True  # its workers never start: Initializing until deleted
            return
        dashboard = f"{cluster}-head-svc.{self.namespace}.svc.cluster.local:8265"
        if cluster_spec and not head_accepts_kuberay(cluster_spec):
            # The Ray 2.60 head wants a token KubeRay does not have: 401 on every call.
            job.stuck = True
            self._patch_status(name, {"jobDeploymentStatus": "Running",
                                      "dashboardURL": dashboard})
            return
        if behaviour is None and self.mode != "none":
            self._submit(job, rayjob)
        workers = sum(int(g.get("replicas") or 0)
                      for g in cluster_spec.get("workerGroupSpecs") or [])
        self._patch_status(name, {
            "jobDeploymentStatus": "Running", "jobStatus": "PENDING",
            "dashboardURL": dashboard,
            "rayClusterStatus": {"state": "ready", "readyWorkerReplicas": workers,
                                 "availableWorkerReplicas": workers},
        })

    # --- running the entrypoint -------------------------------------------------------------
    def _environment(self, rayjob: dict[str, Any]) -> dict[str, str]:
        """What a KubeRay pod's Ray job would see: the head container's env (Secrets
        resolved) and the runtime env's env_vars; plus this checkout on PYTHONPATH and the
        test interpreter as `python` (the worker image's part)."""
        spec = rayjob.get("spec") or {}
        env: dict[str, str] = {}
        head = (((spec.get("rayClusterSpec") or {}).get("headGroupSpec") or {})
                .get("template") or {}).get("spec") or {}
        for container in head.get("containers") or []:
            for item in container.get("env") or []:
                if "value" in item:
                    env[item["name"]] = str(item["value"])
                elif "secretKeyRef" in (item.get("valueFrom") or {}):
                    ref = item["valueFrom"]["secretKeyRef"]
                    secret = self.core.read_namespaced_secret(ref["name"], self.namespace)
                    env[item["name"]] = base64.b64decode(secret.data[ref["key"]]).decode()
        runtime = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
        env.update({k: str(v) for k, v in (runtime.get("env_vars") or {}).items()})
        bin_dir = str(Path(self.python).parent)
        env["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        return env

    def _submit(self, job: _Job, rayjob: dict[str, Any]) -> None:
        entrypoint = rayjob["spec"]["entrypoint"]
        env = self._environment(rayjob)
        if self.mode == "ray":
            self._ray_client.submit_job(
                entrypoint=entrypoint, submission_id=job.job_id,
                runtime_env={"env_vars": env}, entrypoint_num_cpus=0,
            )
            return
        job.log_path = self._tmp / f"{job.name}.log"
        with job.log_path.open("wb") as out:
            job.process = subprocess.Popen(
                ["/bin/sh", "-c", entrypoint], stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **env}, start_new_session=True, cwd=self._tmp,
            )

    def _progress(self, job: _Job, rayjob: dict[str, Any]) -> None:
        behaviour = job.behaviour
        if behaviour is not None:
            if (rayjob.get("status") or {}).get("jobStatus") != "RUNNING":
                self._patch_status(job.name, {"jobStatus": "RUNNING"})
            if behaviour.hold or time.monotonic() - job.started < behaviour.delay:
                return
            if behaviour.succeed:
                self._finish(job, "SUCCEEDED", "Job finished successfully.")
            elif behaviour.pod_oom:
                if behaviour.oom_shape == "kubelet":
                    self.restarted_oom_pod(job.cluster)
                else:
                    self.kuberay_replaced_oom_pod(job.cluster)
                self._finish(job, "FAILED", RAY_FAILED_MESSAGE.format(
                    code=1, logs="ray.exceptions.ActorDiedError: The actor died unexpectedly "
                    "before finishing this task (the worker's node was lost)."))
            else:
                self._finish(job, "FAILED", behaviour.fail_message or "failed")
            return
        if self.mode == "none":
            return
        if self.mode == "ray":
            info = self._ray_client.get_job_info(job.job_id)
            status = str(info.status.value if hasattr(info.status, "value") else info.status)
            if status == "RUNNING" and (rayjob.get("status") or {}).get("jobStatus") != status:
                self._patch_status(job.name, {"jobStatus": "RUNNING"})
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                self._finish(job, status, info.message or "")
            return
        assert job.process is not None and job.log_path is not None
        code = job.process.poll()
        if code is None:
            if (rayjob.get("status") or {}).get("jobStatus") != "RUNNING":
                self._patch_status(job.name, {"jobStatus": "RUNNING"})
            return
        if code == 0:
            self._finish(job, "SUCCEEDED", "Job finished successfully.")
        else:
            logs = job.log_path.read_text(errors="replace")[-20_000:]
            self._finish(job, "FAILED", RAY_FAILED_MESSAGE.format(code=code, logs=logs))

    def _finish(self, job: _Job, job_status: str, message: str) -> None:
        job.done = True
        job.ended = time.monotonic()
        deployment = "Failed" if job_status == "FAILED" else "Complete"
        status: dict[str, Any] = {
            "jobStatus": job_status, "jobDeploymentStatus": deployment, "endTime": now(),
            "message": message,
            "rayJobInfo": {"endTime": now()},
            "succeeded": 1 if job_status == "SUCCEEDED" else 0,
            "failed": 1 if job_status == "FAILED" else 0,
        }
        if job_status == "FAILED":
            status["reason"] = "AppFailed"
        self._patch_status(job.name, status)

    def _kill(self, job: _Job) -> None:
        if job.done:
            return
        if self.mode == "ray" and self._ray_client is not None and job.behaviour is None:
            try:
                self._ray_client.stop_job(job.job_id)
            except Exception as error:
                log.debug("stop_job %s: %s", job.job_id, error)
        if job.process is not None and job.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.process.pid, signal.SIGKILL)
            job.process.wait(timeout=30)
        job.done = True

    # --- pods --------------------------------------------------------------------------------
    def _create_pods(self, job: _Job, rayjob: dict[str, Any],
                     behaviour: Behaviour | None) -> None:
        """The RayCluster's pods, as KubeRay makes them from the templates; Running, or the
        workers refused by the scheduler (`behaviour.unschedulable`)."""
        spec = rayjob["spec"]["rayClusterSpec"]
        groups = [("head", "headgroup", spec["headGroupSpec"], 1)] + [
            ("worker", g.get("groupName", "workers"), g, int(g.get("replicas") or 0))
            for g in spec.get("workerGroupSpecs") or []
        ]
        for role, group_name, group, replicas in groups:
            for _ in range(replicas):
                template = group.get("template") or {}
                labels = {**((template.get("metadata") or {}).get("labels") or {}),
                          "ray.io/cluster": job.cluster, "ray.io/node-type": role,
                          "ray.io/group": group_name, "ray.io/is-ray-node": "yes",
                          "app.kubernetes.io/created-by": "kuberay-standin"}
                suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
                name = f"{job.cluster}-{group_name}-{role}-{suffix}"[:63].rstrip("-")
                pod_spec = {k: v for k, v in (template.get("spec") or {}).items()
                            if k in ("containers", "volumes", "securityContext",
                                     "nodeSelector", "tolerations")}
                self.core.create_namespaced_pod(self.namespace, {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "labels": labels},
                    "spec": {**pod_spec, "restartPolicy": "Always"},
                })
                job.pods.append(name)
                refused = behaviour is not None and behaviour.unschedulable and role == "worker"
                if refused:
                    status: dict[str, Any] = {"phase": "Pending", "conditions": [{
                        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": behaviour.unschedulable,  # type: ignore[union-attr]
                        "lastTransitionTime": now()}]}
                else:
                    status = {"phase": "Running", "conditions": [
                        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()},
                        {"type": "Ready", "status": "True", "lastTransitionTime": now()}]}
                self.core.patch_namespaced_pod_status(name, self.namespace, {"status": status})

    def _delete_pods(self, job: _Job) -> None:
        from kubernetes.client.exceptions import ApiException

        for name in job.pods:
            try:
                self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
            except ApiException as error:
                if error.status != 404:
                    raise
        job.pods = []

    def kuberay_replaced_oom_pod(self, cluster: str) -> str:
        """What KubeRay v1.6.2 leaves of an OOMKilled worker: the pod deleted within ~60 ms
        and replaced, and a `DeletedWorkerPod` Event on the RayCluster. Returns the pod name."""
        name = self.oomkilled_pod(cluster)
        self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
        stamp = now()
        self.core.create_namespaced_event(self.namespace, {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{cluster}."},
            "involvedObject": {"apiVersion": "ray.io/v1", "kind": "RayCluster",
                               "name": cluster, "namespace": self.namespace},
            "reason": "DeletedWorkerPod", "type": "Normal",
            "message": (f"Deleted worker Pod {self.namespace}/{name}; Pod status: Failed; Pod "
                        "restart policy: Never; Ray container terminated status: "
                        "&ContainerStateTerminated{ExitCode:137,Signal:0,Reason:OOMKilled,"
                        f"Message:,StartedAt:{stamp},FinishedAt:{stamp},ContainerID:,}}"),
            "source": {"component": "raycluster-controller"},
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        })
        self._pod(cluster, "worker")  # the replacement, healthy
        return name

    def restarted_oom_pod(self, cluster: str) -> str:
        """What a kubelet leaves when it restarts an OOMKilled container: the pod Running,
        restartCount 1, lastState terminated OOMKilled."""
        name = self._pod(cluster, "worker")
        stamp = now()
        self.core.patch_namespaced_pod_status(name, self.namespace, {"status": {
            "phase": "Running",
            "containerStatuses": [{
                "name": "ray-worker", "image": "rayproject/ray:2.60.0", "imageID": "",
                "ready": True, "restartCount": 1,
                "state": {"running": {"startedAt": stamp}},
                "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                             "startedAt": stamp, "finishedAt": stamp}},
            }],
        }})
        return name

    def _pod(self, cluster: str, role: str) -> str:
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        name = f"{cluster}-{role}-{suffix}"[:63].rstrip("-")
        container = "ray-head" if role == "head" else "ray-worker"
        self.core.create_namespaced_pod(self.namespace, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {
                "ray.io/cluster": cluster, "ray.io/node-type": role,
                "app.kubernetes.io/created-by": "kuberay-standin"}},
            "spec": {"containers": [{"name": container, "image": "rayproject/ray:2.60.0"}]},
        })
        return name

    def oomkilled_pod(self, cluster: str, *, role: str = "worker") -> str:
        """A pod of `cluster` whose container was OOMKilled (exit 137), as a kubelet reports
        it; written through the pods/status subresource. Returns the pod name."""
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        name = f"{cluster}-{role}-{suffix}"[:63].rstrip("-")
        container = "ray-head" if role == "head" else "ray-worker"
        self.core.create_namespaced_pod(self.namespace, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {
                "ray.io/cluster": cluster, "ray.io/node-type": role,
                "app.kubernetes.io/created-by": "kuberay-standin"}},
            "spec": {"containers": [{"name": container, "image": "rayproject/ray:2.49.0"}]},
        })
        stamp = now()
        self.core.patch_namespaced_pod_status(name, self.namespace, {"status": {
            "phase": "Failed",
            "containerStatuses": [{
                "name": container, "image": "rayproject/ray:2.49.0", "imageID": "",
                "ready": False, "restartCount": 0,
                "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                         "startedAt": stamp, "finishedAt": stamp}},
            }],
        }})
        return name
