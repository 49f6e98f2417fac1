"""Pure builders and readers of the KubeRay objects the controller manages. No I/O.

In the manner of KubeRay's `controllers/ray/common/`: every function here turns values into
Kubernetes objects (plain dicts, as the API speaks them) or reads values out of them, so the
rules are unit-tested without a cluster.

How a trial attempt becomes a RayJob (`ray.io/v1`, KubeRay v1.7):

- name `<sweep>-<trial id>-<attempt>` (`rayjob_name`): deterministic, so creating twice is a
  409 and never a second job; the Ray job's submission id (`spec.jobId`) is the same name;
- labels `app.kubernetes.io/managed-by=ladder`, `ladder.dev/sweep`, `ladder.dev/lane`,
  `ladder.dev/trial`, `ladder.dev/attempt` on the RayJob and on its pods' templates; an
  owner reference to the Sweep (controller, blockOwnerDeletion);
- the entrypoint is the worker contract, `python -m worker run --trial FILE`. The trial JSON
  travels inline in the Ray job's runtime environment, as the env var `LADDER_TRIAL_JSON`
  (`runtimeEnvYAML`), and the entrypoint writes it to FILE first
  (`printenv LADDER_TRIAL_JSON > FILE`): no ConfigMap, no shared volume, no shell quoting of
  JSON, and the worker sees exactly the contract it has everywhere else;
- `LADDER_DB_URL` (the store, with its password) never goes into the RayJob: runtime envs
  are plain text. It is an env var with `valueFrom.secretKeyRef` on the head and worker
  containers (`execution.dbSecret`, or the controller's `--db-secret`). With
  `execution.clusterSelector` (a standing RayCluster) the pods are not ours, so that
  cluster's pods must carry `LADDER_DB_URL` themselves;
- the cluster is either a per-trial RayCluster built from `spec.execution` (image, head,
  one worker group of `resources.workers / k` pods with `k * gpusPerWorker` GPUs each, k the
  Ray Train workers per pod: 1, or a node's worth, `workers_per_pod`; volumes, ...),
  deleted when the job ends (`shutdownAfterJobFinishes`, `ttlSecondsAfterFinished`), or a
  standing one picked by `execution.clusterSelector`.

`ExecutionConfig` documents every `spec.execution` key the controller reads.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from orchestrator.core.classify import classify_text, excerpt
from orchestrator.core.execution import MAX_LABEL_VALUE, ControllerExecution
from orchestrator.core.grid import GridPoint
from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.core.names import (
    ANNOTATION_MODEL,
    DB_URL_ENV,
    LABEL_ATTEMPT,
    LABEL_LANE,
    LABEL_MANAGED_BY,
    LABEL_METHOD,
    LABEL_SWEEP,
    LABEL_TRIAL,
    MANAGED_BY,
    OOM_EXIT_CODE,
    TRIAL_JSON_ENV,
)
from orchestrator.core.scheduler import Capacity
from orchestrator.core.spec import (
    API_VERSION,
    KIND,
    SpecError,
    Sweep,
    validation_problems,
)
from orchestrator.core.worker_contract import WORKER_ENV, AttemptSpec

RAY_API_VERSION = "ray.io/v1"
RAYJOB_KIND = "RayJob"
RAY_GROUP, RAY_VERSION = RAY_API_VERSION.split("/")
RAYJOB_PLURAL = "rayjobs"

# KubeRay labels every pod of a RayCluster with the cluster's name.
LABEL_RAY_CLUSTER = "ray.io/cluster"

DEFAULT_IMAGE = "ghcr.io/ladder-dev/ladder-worker:0.1.0"
DEFAULT_OUTPUT_DIR = "/tmp/ladder/runs"
# KubeRay keeps a finished trial's RayCluster, and its GPUs, this long. The controller counts
# those GPUs as used until the pods are gone (operator.capacity.held_gpus), so a long TTL
# slows the sweep and idles GPUs on a shared cluster; a minute is left to look at the pods
# of a trial that just failed. The driver's log outlives it: KubeRay keeps the submitter Job
# (K8sJobMode) after deleting the cluster, and the store keeps the error with its log tail.
DEFAULT_TTL_SECONDS = 60
# The Ray release of Ladder's worker image (docker/worker.Dockerfile's base image), and so
# the `rayVersion` of every RayCluster Ladder builds unless `execution.rayVersion` says
# otherwise. KubeRay needs it: a RayJob without it stays Initializing forever (KubeRay v1.6.2
# logs "failed to parse Ray version"). The controller image has no Ray to ask, hence a
# constant; a unit test keeps it equal to the Dockerfile's and the chart's.
WORKER_RAY_VERSION = "2.60.0"
# Kueue's integration with KubeRay: a RayJob labelled with a LocalQueue and created suspended
# is admitted by Kueue (which unsuspends it) when the ClusterQueue's quota allows.
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
# Ray token authentication (KubeRay's `authOptions`): Ray 2.52 brought it, Ray 2.60 turns it
# on by default, and KubeRay accepts `mode: token` only with rayVersion >= 2.52.0.
AUTH_TOKEN, AUTH_DISABLED = "token", "disabled"
TOKEN_AUTH_SINCE = (2, 52, 0)
RAY_AUTH_MODE_ENV = "RAY_AUTH_MODE"
GPU_RESOURCE = "nvidia.com/gpu"
HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"
WORKER_GROUP = "workers"
# Without an explicit capacity the controller leaves packing to the cluster and only
# `parallelism` bounds how many trials run at once.
UNBOUNDED = Capacity(gpus=1_000_000, cpus=1_000_000)

MAX_NAME = 63  # a DNS-1123 label (RayJob names become Job, Service and label values)
# Matched with fullmatch: `$` would accept a trailing newline, which Kubernetes refuses.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
# What KubeRay's version.ParseGeneric takes: major.minor[.patch], then an optional suffix.
_RAY_VERSION = re.compile(r"^v?(\d+\.\d+(?:\.\d+)?)(?:[-+.][0-9A-Za-z.+-]*)?$")


# --- spec.execution -------------------------------------------------------------------------


class _Config(BaseModel):
    # Unknown keys are ignored, not refused: `execution` is shared with other backends.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class SecretRef(_Config):
    """A key of a Secret in the Sweep's namespace."""

    name: str = Field(min_length=1)
    key: str = Field("url", min_length=1)

    @classmethod
    def parse(cls, text: str) -> SecretRef:
        """`name` or `name/key` (the controller's `--db-secret`)."""
        name, _, key = text.partition("/")
        return cls(name=name, key=key or "url")


# A Kubernetes resource quantity as the apiserver parses it (resource.Quantity): pods whose
# limits are not (non-negative) quantities are refused at create, so the Sweep is refused
# before that.
K8S_QUANTITY_RE = re.compile(r"\+?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
                             r"(?:[eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?")


def _k8s_quantity(value: str | int | None) -> str | int | None:
    if isinstance(value, str) and not K8S_QUANTITY_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity such as '2', '500m' or '4Gi'")
    return value


class PodShape(_Config):
    """Resources of the head pod, or of each Ray Train worker (CPU defaults to
    cpusPerWorker): a worker pod holding k workers asks for k times these."""

    cpu: str | int | None = None
    memory: str | None = None
    resources: dict[str, str | int] = Field(
        default_factory=dict, description="Extra limits, e.g. {'ephemeral-storage': '50Gi'}."
    )

    @field_validator("cpu", "memory")
    @classmethod
    def _quantities(cls, value: str | int | None) -> str | int | None:
        return _k8s_quantity(value)

    @field_validator("resources")
    @classmethod
    def _resource_quantities(cls, value: dict[str, str | int]) -> dict[str, str | int]:
        for item in value.values():
            _k8s_quantity(item)
        return value


PodShapeMode = Literal["auto", "worker", "node"]


def ray_release(version: str) -> tuple[int, ...]:
    """The numeric release of a Ray version ("2.60.0" -> (2, 60, 0); "2.52" -> (2, 52, 0))."""
    match = _RAY_VERSION.fullmatch(version)
    if match is None:
        raise ValueError(f"{version!r} is not a Ray version such as {WORKER_RAY_VERSION!r}")
    numbers = tuple(int(part) for part in match.group(1).split("."))
    return numbers + (0,) * (3 - len(numbers))


class AuthOptions(_Config):
    """How the trial's Ray head authenticates its clients (KubeRay's `authOptions`).

    - mode `token` (the default for Ray >= 2.52): KubeRay gives the head, the workers and
      its job submitter the same token, from `secretName` (a Secret with the key
      `auth_token`, no trailing newline) or, when that is unset, from a Secret it generates
      per RayCluster (owned by it, gone with it);
    - mode `disabled`: no token; Ladder also sets RAY_AUTH_MODE=disabled in the trial
      containers, because Ray 2.60 turns token auth on by default and KubeRay would then be
      refused by the dashboard ("Missing authentication token") and the RayJob would hang.
    Unset mode: token for Ray >= 2.52, nothing for older Ray (it has no token auth).
    """

    mode: Literal["token", "disabled"] | None = None
    secret_name: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _secret_needs_token(self) -> AuthOptions:
        if self.secret_name is not None and self.mode == AUTH_DISABLED:
            raise ValueError("secretName needs mode token, not disabled")
        return self


class ExecutionConfig(ControllerExecution):
    """The `spec.execution` keys the Kubernetes controller reads (all optional); the
    timeouts and the Kueue queue come from `core.execution.ControllerExecution`."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str | None = None
    image_pull_secrets: list[str] = Field(default_factory=list)
    service_account_name: str | None = None
    ray_version: str = Field(
        WORKER_RAY_VERSION, description="KubeRay's rayVersion: the Ray release of the image."
    )
    auth_options: AuthOptions = Field(
        AuthOptions(), description="Ray token authentication of trial clusters."
    )
    python: str = Field("python", description="The interpreter in the image.")
    cluster_selector: dict[str, str] | None = Field(
        None, description="Run on a standing RayCluster (e.g. {'ray.io/cluster': 'gpus'})."
    )
    # The chart's values (helm/ladder/values.yaml `execution`), so a controller run without the
    # chart builds the same pods; tests/unit/operator/test_gpu_pods.py keeps the two equal.
    head: PodShape = PodShape(cpu="2", memory="8Gi")
    worker: PodShape = PodShape(memory="160Gi", resources={"ephemeral-storage": "100Gi"})
    env: list[dict[str, Any]] = Field(default_factory=list, description="Extra container env.")
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    shared_memory: str | None = Field("32Gi", description="/dev/shm size (emptyDir, Memory).")
    output_dir: str = Field(DEFAULT_OUTPUT_DIR, description="Trial outputs inside the pods.")
    db_secret: SecretRef | None = Field(None, description="Secret holding LADDER_DB_URL.")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="More Ray runtime_env (pip, working_dir, env_vars)."
    )
    submission_mode: Literal["K8sJobMode", "HTTPMode"] = Field(
        "K8sJobMode", description="How KubeRay submits the Ray job: a submitter pod that runs "
        "`ray job submit` (K8sJobMode), or the operator posting to the head's dashboard "
        "itself (HTTPMode; no submitter pod).",
    )
    ttl_seconds_after_finished: int = Field(DEFAULT_TTL_SECONDS, ge=0)
    active_deadline_seconds: int | None = Field(None, ge=1)
    capacity: dict[str, int] | None = Field(
        None, description="GPUs and CPUs the sweep may use at once, e.g. {gpus: 8, cpus: 64}."
    )
    # -- pod shapes and the GPU network (docs/install.md, "Pod shapes"; all off by default) --
    gpus_per_node: int | None = Field(
        None, ge=0, description="GPUs on each GPU node (0 or unset: unknown). With it, a trial "
        "whose GPUs fill whole nodes runs node-sized pods (podShape auto): NCCL then stays on "
        "NVLink within a node.",
    )
    pod_shape: PodShapeMode = Field(
        "auto", description="worker: one Ray worker pod per Ray Train worker; node: as many "
        "workers per pod as a node holds (needs gpusPerNode); auto: node-sized pods when the "
        "trial fills whole nodes, else one pod per worker.",
    )
    nccl_env: dict[str, str] = Field(
        default_factory=dict, description="NCCL_* variables of the worker containers, e.g. "
        "{NCCL_SOCKET_IFNAME: eth0, NCCL_IB_HCA: mlx5, NCCL_DEBUG: WARN}.",
    )
    rdma_resources: dict[str, str | int] = Field(
        default_factory=dict, description="RDMA extended resources of each worker pod, e.g. "
        "{rdma/rdma_shared_device_a: 1} (per pod, whatever the pod's worker count).",
    )
    ipc_lock: bool = Field(
        False, description="Add the IPC_LOCK capability to worker containers (RDMA memory "
        "registration); a privilege, so it needs the installation's allowPrivilegedTrials.",
    )

    @field_validator("nccl_env")
    @classmethod
    def _nccl_names(cls, value: dict[str, str]) -> dict[str, str]:
        wrong = sorted(name for name in value if not name.startswith("NCCL_"))
        if wrong:
            raise ValueError(f"ncclEnv takes NCCL_* variables only, got {wrong}")
        return value

    @model_validator(mode="after")
    def _node_shape_needs_node_size(self) -> ExecutionConfig:
        if self.pod_shape == "node" and not self.gpus_per_node:
            raise ValueError("podShape: node needs gpusPerNode (the GPUs of one node)")
        return self

    @field_validator("ray_version")
    @classmethod
    def _ray_version(cls, value: str) -> str:
        ray_release(value)
        return value

    @model_validator(mode="after")
    def _token_needs_new_ray(self) -> ExecutionConfig:
        if self.auth_options.mode == AUTH_TOKEN and not token_auth_supported(self.ray_version):
            raise ValueError(
                f"authOptions.mode token needs rayVersion 2.52.0 or later (KubeRay refuses "
                f"it), got {self.ray_version}; use authOptions.mode disabled"
            )
        return self

    @model_validator(mode="after")
    def _kueue_needs_own_cluster(self) -> ExecutionConfig:
        if self.queue_name is not None and self.cluster_selector:
            raise ValueError("queueName (Kueue) cannot be used with clusterSelector: Kueue "
                             "admits RayJobs that create their own RayCluster")
        return self

    @property
    def auth_mode(self) -> str | None:
        """The Ray auth mode trial clusters run with (None: Ray too old to have one)."""
        if self.auth_options.mode is not None:
            return self.auth_options.mode
        return AUTH_TOKEN if token_auth_supported(self.ray_version) else None

    @field_validator("shared_memory")
    @classmethod
    def _shared_memory_quantity(cls, value: str | None) -> str | None:
        _k8s_quantity(value)
        return value

    @field_validator("capacity")
    @classmethod
    def _capacity_keys(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None and not set(value) <= {"gpus", "cpus"}:
            raise ValueError(f"capacity takes gpus and cpus, got {sorted(value)}")
        if value is not None and any(count < 0 for count in value.values()):
            raise ValueError(f"capacity counts are at least 0, got {value}")
        return value

    @field_validator("runtime_env")
    @classmethod
    def _runtime_env_shape(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Ray's `env_vars` is a mapping of names to strings (`runtime_env` merges ours in)."""
        env_vars = value.get("env_vars")
        if env_vars is None:
            return value
        if not isinstance(env_vars, Mapping):
            raise ValueError(
                f"runtimeEnv.env_vars must be a mapping of names to values, got "
                f"{type(env_vars).__name__}"
            )
        for key, item in env_vars.items():
            if not isinstance(item, str | int | float | bool):
                raise ValueError(
                    f"runtimeEnv.env_vars.{key} must be a string or a number, got "
                    f"{type(item).__name__}"
                )
        return value


def token_auth_supported(ray_version: str) -> bool:
    return ray_release(ray_version) >= TOKEN_AUTH_SINCE


def merged_execution(defaults: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """The installation's execution defaults (the chart's `execution`, passed to the
    controller as LADDER_DEFAULT_EXECUTION) under a Sweep's own `spec.execution`.

    Mappings merge key by key, so a Sweep that sets `worker.memory` keeps the default
    `worker.cpu`; anything else (lists included) is replaced whole by the Sweep's value.
    """
    merged = dict(defaults)
    for key, value in own.items():
        base = merged.get(key)
        if isinstance(base, Mapping) and isinstance(value, Mapping):
            merged[key] = merged_execution(base, value)
        else:
            merged[key] = value
    return merged


def execution_config(
    sweep: Sweep, defaults: Mapping[str, Any] | None = None
) -> ExecutionConfig:
    """The controller's view of `spec.execution` over the installation's defaults
    (raises pydantic's ValidationError)."""
    return ExecutionConfig.model_validate(merged_execution(defaults or {}, sweep.spec.execution))


def checked_execution_config(
    sweep: Sweep, defaults: Mapping[str, Any] | None = None
) -> ExecutionConfig:
    """`execution_config`, raising SpecError naming each bad `spec.execution` field (what
    `ladder validate`, `ladder submit` and the controller all report)."""
    try:
        return execution_config(sweep, defaults)
    except ValidationError as error:
        problems = validation_problems(error, "spec.execution")
        raise SpecError(sweep.name, problems) from None


# --- what a Sweep may give its pods ------------------------------------------------------------

# Volume kinds any Sweep may use: they reach neither the node, nor the network, nor Secrets.
PLAIN_VOLUMES = frozenset({"emptyDir", "configMap", "persistentVolumeClaim", "downwardAPI",
                           "ephemeral"})
PLAIN_PROJECTIONS = frozenset({"configMap", "downwardAPI", "clusterTrustBundle"})
ANY_SECRET = "*"


@dataclass(frozen=True)
class TrialPodPolicy:
    """What a Sweep's own `spec.execution` may give its trial pods. Each is refused unless the
    installation permits it (chart values, docs/security.md); the store's Secret is always
    allowed. The installation's execution defaults are its own choice: `widened_by` admits
    exactly what they hold."""

    host_paths: bool = False  # allowPrivilegedTrials: hostPath volumes (the node's files)
    service_account: bool = False  # trialPods.allowServiceAccountName: any name
    service_accounts: frozenset[str] = frozenset()  # names admitted one by one (the defaults')
    secrets: frozenset[str] = frozenset()  # trialPods.allowedSecrets; "*": any Secret
    projected_tokens: bool = False  # trialPods.allowProjectedTokens
    network_volumes: bool = False  # trialPods.allowNetworkVolumes: nfs, iscsi, cephfs, csi...
    volumes: frozenset[str] = frozenset()  # whole volumes admitted as written (the defaults')
    store_secret: str | None = None  # the controller's --db-secret

    def widened_by(self, defaults: Mapping[str, Any]) -> TrialPodPolicy:
        """This policy, also admitting what the installation's execution defaults hold."""
        extra = {name for path, name in _secret_names(defaults, "") if name}
        account = defaults.get("serviceAccountName")
        return replace(
            self,
            service_accounts=self.service_accounts | ({account} if account else set()),
            secrets=self.secrets | extra,
            volumes=self.volumes | {_canonical(v) for v in defaults.get("volumes") or []},
        )

    def secret_allowed(self, name: str) -> bool:
        return name == self.store_secret or name in self.secrets or ANY_SECRET in self.secrets


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _secret_names(execution: Mapping[str, Any], prefix: str) -> list[tuple[str, str]]:
    """Every Secret a pod built from `execution` would read: (field path, Secret name)."""
    found: list[tuple[str, str]] = []
    db = execution.get("dbSecret")
    if isinstance(db, Mapping):
        found.append((f"{prefix}dbSecret.name", str(db.get("name") or "")))
    for i, volume in enumerate(_list(execution.get("volumes"))):
        secret = volume.get("secret")
        if isinstance(secret, Mapping):
            found.append((f"{prefix}volumes[{i}].secret.secretName",
                          str(secret.get("secretName") or "")))
        projected = volume.get("projected")
        for j, source in enumerate(_list((projected or {}).get("sources")
                                         if isinstance(projected, Mapping) else None)):
            if isinstance(source.get("secret"), Mapping):
                found.append((f"{prefix}volumes[{i}].projected.sources[{j}].secret.name",
                              str(source["secret"].get("name") or "")))
    for i, item in enumerate(_list(execution.get("env"))):
        ref = (item.get("valueFrom") or {}) if isinstance(item.get("valueFrom"), Mapping) else {}
        if isinstance(ref.get("secretKeyRef"), Mapping):
            found.append((f"{prefix}env[{i}].valueFrom.secretKeyRef.name",
                          str(ref["secretKeyRef"].get("name") or "")))
    return found


def _list(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _volume_kind(volume: Mapping[str, Any]) -> str:
    kinds = [key for key in volume if key != "name"]
    return kinds[0] if len(kinds) == 1 else "+".join(sorted(kinds)) or "(none)"


def pod_policy_problems(
    execution: Mapping[str, Any], policy: TrialPodPolicy, prefix: str = "spec.execution."
) -> list[tuple[str, str]]:
    """What `execution` (a Sweep's own, or a built pod's serviceAccountName / volumes / env)
    would give trial pods that `policy` does not permit: (field path, why), one per item."""
    problems: list[tuple[str, str]] = []
    if execution.get("ipcLock") is True and not policy.host_paths:
        problems.append((f"{prefix}ipcLock",
                         "the IPC_LOCK capability is not allowed in this installation "
                         "(the chart's allowPrivilegedTrials is false)"))
    account = execution.get("serviceAccountName")
    if account and not policy.service_account and account not in policy.service_accounts:
        problems.append((f"{prefix}serviceAccountName",
                         "a Sweep cannot choose its pods' service account in this installation "
                         "(the chart's trialPods.allowServiceAccountName is false)"))
    for i, volume in enumerate(_list(execution.get("volumes"))):
        if _canonical(volume) in policy.volumes:
            continue
        kind, where = _volume_kind(volume), f"{prefix}volumes[{i}]"
        if kind == "hostPath":
            if not policy.host_paths:
                problems.append((f"{where}.hostPath",
                                 "host access is not allowed in this installation "
                                 "(the chart's allowPrivilegedTrials is false)"))
        elif kind == "projected":
            sources = _list((volume.get("projected") or {}).get("sources"))
            for j, source in enumerate(sources):
                for key in source:
                    if key == "serviceAccountToken" and not policy.projected_tokens:
                        problems.append((f"{where}.projected.sources[{j}].serviceAccountToken",
                                         "projected service-account tokens are not allowed in "
                                         "this installation (the chart's "
                                         "trialPods.allowProjectedTokens is false)"))
                    elif key not in PLAIN_PROJECTIONS | {"secret", "serviceAccountToken"}:
                        problems.append((f"{where}.projected.sources[{j}].{key}",
                                         "is not a projection this installation allows"))
        elif kind not in PLAIN_VOLUMES | {"secret"} and not policy.network_volumes:
            problems.append((f"{where}.{kind}",
                             f"{kind} is a network or node volume, not allowed in this "
                             "installation (the chart's trialPods.allowNetworkVolumes is false; "
                             f"allowed: {', '.join(sorted(PLAIN_VOLUMES))})"))
    volumes_ok = {_canonical(v) for v in _list(execution.get("volumes"))} & policy.volumes
    for path, name in _secret_names(execution, prefix):
        if policy.secret_allowed(name):
            continue
        index = re.match(rf"{re.escape(prefix)}volumes\[(\d+)\]", path)
        if index and _canonical(_list(execution.get("volumes"))[int(index[1])]) in volumes_ok:
            continue
        problems.append((path, f"Secret {name!r} is not the store's, and this installation does "
                               "not let Sweeps mount it (the chart's trialPods.allowedSecrets)"))
    return problems


def built_pod_problems(pod: Mapping[str, Any], policy: TrialPodPolicy) -> list[tuple[str, str]]:
    """The same rules over a pod spec the builders made (defence in depth)."""
    env = [item for container in _list(pod.get("containers")) for item in _list(
        container.get("env"))]
    return pod_policy_problems({"serviceAccountName": pod.get("serviceAccountName"),
                                "volumes": pod.get("volumes") or [], "env": env},
                               policy, prefix="pod.")


class PodPolicyError(ValueError):
    """A built pod would hold what the installation does not permit."""


# Volume kinds whose files live on one pod or one node: nothing the head and every worker pod
# share. Anything else (persistentVolumeClaim, nfs, csi, cephfs, ...) is taken as shared; a
# claim must still be ReadWriteMany (docs/install.md), which is the cluster's to enforce.
POD_LOCAL_VOLUMES = frozenset({
    "emptyDir", "hostPath", "configMap", "secret", "downwardAPI", "projected", "ephemeral",
    "image", "gitRepo",
})


def unshared_outputs(sweep: Sweep, config: ExecutionConfig) -> list[tuple[str, str]]:
    """(field, reason) for each thing a trial writes on a rank's pod that would be lost.

    A per-trial RayCluster runs the driver on the head and the ranks on worker pods, so
    `<outputDir>` is a different disk on each. Trial results need no shared storage (rank 0
    hands its summary to the driver through Ray, worker/train.py); the trained weights do:
    `training.saveModel` best/final is refused unless `execution.outputDir` lies on a volume
    mounted on every Ray pod (the builder mounts `execution.volumes` on head and workers
    alike) that is not pod- or node-local. A standing cluster (`clusterSelector`) is not
    ours to inspect: its pods must mount shared storage there (docs/install.md).
    """
    from orchestrator.core.spec import SaveModel

    if sweep.spec.training.save_model is SaveModel.NONE or config.cluster_selector:
        return []
    volumes = {str(v.get("name")): v for v in config.volumes}
    output = config.output_dir.rstrip("/") + "/"
    for mount in config.volume_mounts:
        path = str(mount.get("mountPath", "")).rstrip("/") + "/"
        volume = volumes.get(str(mount.get("name")))
        if volume is None or not output.startswith(path) or mount.get("subPathExpr"):
            continue
        if not POD_LOCAL_VOLUMES.intersection(volume):
            return []
    return [("spec.training.saveModel",
             f"{sweep.spec.training.save_model.value} keeps the weights on rank 0's pod, "
             f"which is not the head's; mount shared storage (a ReadWriteMany volume) over "
             f"spec.execution.outputDir ({config.output_dir}) with spec.execution.volumes "
             f"and volumeMounts, or set saveModel: none")]


def sweep_capacity(config: ExecutionConfig) -> Capacity:
    """`execution.capacity`, else unbounded (only `parallelism` limits the sweep)."""
    if config.capacity is None:
        return UNBOUNDED
    return Capacity(
        gpus=config.capacity.get("gpus", UNBOUNDED.gpus),
        cpus=config.capacity.get("cpus", UNBOUNDED.cpus),
    )


# --- names and labels ------------------------------------------------------------------------


def _digest(text: str, length: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def rayjob_name(sweep: str, trial_id: str, attempt: int) -> str:
    """`<sweep>-<trial id>-<attempt>`: deterministic, a DNS-1123 label, at most 63 characters.

    Sweep names are at most 40 characters (the CRD enforces it), so the plain form always
    fits; a longer name (not admitted by the CRD) is shortened with a hash of the whole, so
    the result stays unique and deterministic.
    """
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    suffix = f"-{trial_id}-{attempt}"
    name = f"{sweep}{suffix}"
    if len(name) <= MAX_NAME:
        return name
    keep = MAX_NAME - len(suffix) - 7
    return f"{sweep[:keep].rstrip('-')}-{_digest(name)}{suffix}"


def is_dns_label(name: str) -> bool:
    return len(name) <= MAX_NAME and bool(_DNS_LABEL.fullmatch(name))


def label_value(value: str) -> str:
    """A valid label value for `value`: itself when it is one, else a sanitized, hashed form."""
    if len(value) <= MAX_LABEL_VALUE and _LABEL_VALUE.fullmatch(value):
        return value
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", value).strip("-_.")
    keep = MAX_LABEL_VALUE - 7
    return f"{cleaned[:keep].rstrip('-_.')}-{_digest(value)}".lstrip("-")


def sweep_labels(sweep: str) -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_SWEEP: label_value(sweep)}


def sweep_selector(sweep: str) -> str:
    """The label selector of everything Ladder created for a sweep."""
    return ",".join(f"{key}={value}" for key, value in sweep_labels(sweep).items())


def trial_labels(sweep: str, trial: GridPoint, attempt: int) -> dict[str, str]:
    return {
        **sweep_labels(sweep),
        LABEL_LANE: label_value(trial.lane.name),
        LABEL_TRIAL: trial.trial_id,
        LABEL_ATTEMPT: str(attempt),
        LABEL_METHOD: trial.lane.method.value,
    }


def owner_reference(sweep: str, owner_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": sweep,
        "uid": owner_uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def attempt_of(rayjob: Mapping[str, Any]) -> tuple[str, int] | None:
    """(trial id, attempt) from a RayJob's labels; None when they are missing or malformed."""
    labels = (rayjob.get("metadata") or {}).get("labels") or {}
    trial_id, attempt = labels.get(LABEL_TRIAL), labels.get(LABEL_ATTEMPT)
    if not trial_id or not attempt or not str(attempt).isdigit() or int(attempt) < 1:
        return None
    return trial_id, int(attempt)


def owned_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid for ref in refs)


# --- the RayJob ------------------------------------------------------------------------------


def trial_output_dir(config: ExecutionConfig, sweep: str, trial_id: str, attempt: int) -> str:
    """Where the worker writes inside the pod (trial file, logs, checkpoints)."""
    return f"{config.output_dir.rstrip('/')}/{sweep}/{trial_id}/{attempt}"


def entrypoint(spec: AttemptSpec, config: ExecutionConfig) -> str:
    """The worker contract, after writing the inline trial JSON to the trial file."""
    trial_file = f"{spec.output_dir.rstrip('/')}/trial.json"
    return (
        f"mkdir -p {shlex.quote(spec.output_dir)} && "
        f"printenv {TRIAL_JSON_ENV} > {shlex.quote(trial_file)} && "
        f"{shlex.join([config.python, '-m', 'worker', 'run', '--trial', trial_file])}"
    )


def runtime_env(spec: AttemptSpec, config: ExecutionConfig) -> dict[str, Any]:
    """The Ray job's runtime env: the trial JSON inline, the worker environment
    (`trial.WORKER_ENV`, unless `execution.env` or `execution.runtimeEnv` sets the variable),
    plus `execution.runtimeEnv`."""
    extra = dict(config.runtime_env)
    container = {str(item.get("name")) for item in config.env}
    env_vars = {k: v for k, v in WORKER_ENV.items() if k not in container}
    env_vars.update({str(k): str(v) for k, v in (extra.pop("env_vars", None) or {}).items()})
    env_vars.update({
        TRIAL_JSON_ENV: spec.model_dump_json(by_alias=True),
        "PYTHONUNBUFFERED": "1",
    })
    return {**extra, "env_vars": env_vars}


def _quantity(value: str | int) -> str:
    return str(value)


def _resources(cpu: str | int | None, memory: str | None, extra: Mapping[str, Any],
               gpus: int = 0) -> dict[str, dict[str, str]]:
    requests: dict[str, str] = {}
    if cpu is not None:
        requests["cpu"] = _quantity(cpu)
    if memory is not None:
        requests["memory"] = memory
    limits = dict(requests)
    limits.update({k: _quantity(v) for k, v in extra.items()})
    if gpus > 0:
        limits[GPU_RESOURCE] = str(gpus)  # extended resources: requests default to limits
    out: dict[str, dict[str, str]] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


# Trial pods get the restricted Pod Security profile's settings that any Ray image runs with
# (KubeRay's pod-security sample sets the same): no privilege escalation, no Linux
# capabilities, the runtime's seccomp profile. `spec.execution` has no key that loosens them.
# (`runAsNonRoot` is left out: images whose USER is a name, such as rayproject/ray's `ray`,
# cannot be verified as non-root by the kubelet and would not start; Ladder's worker image
# runs as a numeric non-root user.)
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
POD_SECURITY: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}


def _container_env(config: ExecutionConfig, db_secret: SecretRef | None) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if db_secret is not None:
        env.append({
            "name": DB_URL_ENV,
            "valueFrom": {"secretKeyRef": {"name": db_secret.name, "key": db_secret.key}},
        })
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
    if config.auth_mode == AUTH_DISABLED:
        # Ray 2.60 turns token auth on by default; KubeRay sets nothing for `disabled`.
        env.append({"name": RAY_AUTH_MODE_ENV, "value": AUTH_DISABLED})
    names = {item["name"] for item in env}
    env += [dict(item) for item in config.env if item.get("name") not in names]
    return env


def _pod_template(
    container: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    config: ExecutionConfig,
    db_secret: SecretRef | None,
    resources: dict[str, dict[str, str]],
    gpu_network: bool = False,
) -> dict[str, Any]:
    mounts = [dict(m) for m in config.volume_mounts]
    volumes = [dict(v) for v in config.volumes]
    if config.shared_memory:
        volumes.append(
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shared_memory}}
        )
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    body: dict[str, Any] = {"name": container, "image": config.image}
    if config.image_pull_policy:
        body["imagePullPolicy"] = config.image_pull_policy
    body["env"] = _container_env(config, db_secret)
    body["securityContext"] = copy.deepcopy(CONTAINER_SECURITY)
    if gpu_network:
        _add_gpu_network(body, config)
    if resources:
        body["resources"] = resources
    if mounts:
        body["volumeMounts"] = mounts
    pod: dict[str, Any] = {"containers": [body], "securityContext": copy.deepcopy(POD_SECURITY)}
    if volumes:
        pod["volumes"] = volumes
    if config.service_account_name:
        pod["serviceAccountName"] = config.service_account_name
    else:
        # Trials need no Kubernetes API: the namespace's default service account's token is
        # not mounted (a service account chosen by the installation keeps its own default).
        pod["automountServiceAccountToken"] = False
    if config.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in config.image_pull_secrets]
    if config.node_selector:
        pod["nodeSelector"] = dict(config.node_selector)
    if config.tolerations:
        pod["tolerations"] = [dict(t) for t in config.tolerations]
    return {"metadata": {"labels": dict(labels), "annotations": dict(annotations)}, "spec": pod}


def workers_per_pod(shape: Any, config: ExecutionConfig) -> int:
    """Ray Train workers per worker pod (`execution.podShape`, docs/install.md).

    One per pod, unless the GPUs of a node are known (`gpusPerNode`) and either the trial
    fills whole nodes (auto: its workers are a multiple of a node's) or `podShape: node` asks
    for packing (as many as a node holds, evenly: every pod of a worker group is alike).
    Workers in one pod are one Ray node: Ray Train gives them the pod's GPUs and NCCL joins
    them over NVLink. CPU-only trials keep one worker per pod.
    """
    if config.pod_shape == "worker" or shape.gpus_per_worker != 1 or not config.gpus_per_node:
        # Workers of several GPUs each never share a pod (`spec.workers_sharing_gpus`).
        return 1
    per_node = max(1, config.gpus_per_node // shape.gpus_per_worker)
    if config.pod_shape == "auto":
        fills = shape.workers >= per_node and shape.workers % per_node == 0
        return per_node if fills else 1
    per_pod = min(shape.workers, per_node)
    while shape.workers % per_pod:
        per_pod -= 1
    return per_pod


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)$")


def scale_quantity(value: str | int, factor: int) -> str:
    """A Kubernetes quantity times `factor` in its own unit ('16' x 4 = '64', '160Gi' x 4 =
    '640Gi', '500m' x 4 = '2000m'): a pod of k workers asks for k workers' resources."""
    text = str(value)
    if factor == 1:
        return text
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"cannot scale the quantity {text!r}")
    number = float(match.group(1)) * factor
    shown = str(int(number)) if number.is_integer() else f"{number:g}"
    return f"{shown}{match.group(2)}"


def _add_gpu_network(body: dict[str, Any], config: ExecutionConfig) -> None:
    """NCCL's environment and IPC_LOCK on a worker container, as `execution` asks."""
    if config.nccl_env:
        names = {item["name"] for item in body["env"]}
        body["env"] += [{"name": k, "value": str(v)} for k, v in sorted(config.nccl_env.items())
                        if k not in names]
    if config.ipc_lock:
        body["securityContext"]["capabilities"]["add"] = ["IPC_LOCK"]


def auth_options(config: ExecutionConfig) -> dict[str, str] | None:
    """The RayCluster's `authOptions` (None for a Ray release without token auth)."""
    mode = config.auth_mode
    if mode is None:
        return None
    out = {"mode": mode}
    if mode == AUTH_TOKEN and config.auth_options.secret_name:
        out["secretName"] = config.auth_options.secret_name
    return out


def ray_cluster_spec(
    trial: GridPoint,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    config: ExecutionConfig,
    db_secret: SecretRef | None,
    policy: TrialPodPolicy | None = None,
) -> dict[str, Any]:
    """A RayCluster for one trial: a head, and worker pods of `workers_per_pod` Ray Train
    workers each (one per worker, or node-sized)."""
    shape = trial.resources
    head = config.head
    head_resources = _resources(head.cpu, head.memory, head.resources)
    worker = config.worker
    per_pod = workers_per_pod(shape, config)
    worker_cpu = worker.cpu if worker.cpu is not None else shape.cpus_per_worker
    worker_resources = _resources(
        scale_quantity(worker_cpu, per_pod),
        None if worker.memory is None else scale_quantity(worker.memory, per_pod),
        {**{k: scale_quantity(v, per_pod) for k, v in worker.resources.items()},
         **config.rdma_resources},
        gpus=shape.gpus_per_worker * per_pod,
    )
    cluster: dict[str, Any] = {"rayVersion": config.ray_version}
    auth = auth_options(config)
    if auth is not None:
        cluster["authOptions"] = auth
    cluster["headGroupSpec"] = {
        # The head runs the driver only; GPUs are on the workers.
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-gpus": "0"},
        "template": _pod_template(
            HEAD_CONTAINER, labels, annotations, config, db_secret, head_resources
        ),
    }
    cluster["workerGroupSpecs"] = [
        {
            "groupName": WORKER_GROUP,
            "replicas": shape.workers // per_pod,
            "minReplicas": shape.workers // per_pod,
            "maxReplicas": shape.workers // per_pod,
            "rayStartParams": {},
            "template": _pod_template(
                WORKER_CONTAINER, labels, annotations, config, db_secret, worker_resources,
                gpu_network=True,
            ),
        }
    ]
    if policy is not None:
        for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
            problems = built_pod_problems(group["template"]["spec"], policy)
            if problems:
                raise PodPolicyError("; ".join(f"{path}: {why}" for path, why in problems))
    return cluster


def rayjob_manifest(
    sweep: Sweep,
    trial: GridPoint,
    spec: AttemptSpec,
    *,
    owner_uid: str,
    db_url_secret: SecretRef | None = None,
    config: ExecutionConfig | None = None,
    policy: TrialPodPolicy | None = None,
) -> dict[str, Any]:
    """The RayJob that runs one attempt of one trial (`spec` is its resolved payload).

    `db_url_secret` is the controller's default Secret for `LADDER_DB_URL`;
    `execution.dbSecret` overrides it per sweep. With a `policy`, a pod that would hold what
    it does not permit raises PodPolicyError (the reconciler refuses such Sweeps first).
    """
    config = config if config is not None else execution_config(sweep)
    db_secret = config.db_secret or db_url_secret
    name = rayjob_name(sweep.name, trial.trial_id, spec.attempt)
    labels = trial_labels(sweep.name, trial, spec.attempt)
    annotations = {ANNOTATION_MODEL: trial.model}
    metadata: dict[str, Any] = {
        "name": name,
        "labels": labels,
        "annotations": annotations,
        "ownerReferences": [owner_reference(sweep.name, owner_uid)],
    }
    if sweep.namespace:
        metadata["namespace"] = sweep.namespace
    if config.queue_name:
        metadata["labels"] = {**labels, LABEL_KUEUE_QUEUE: config.queue_name}
    body: dict[str, Any] = {
        "entrypoint": entrypoint(spec, config),
        "runtimeEnvYAML": yaml.safe_dump(runtime_env(spec, config), sort_keys=True, width=10**6),
        "jobId": name,
        "submissionMode": config.submission_mode,
        "backoffLimit": 0,  # Ladder retries (escalation.retries) as new attempts
        "metadata": {
            LABEL_SWEEP: sweep.name,
            LABEL_TRIAL: trial.trial_id,
            LABEL_ATTEMPT: str(spec.attempt),
            ANNOTATION_MODEL: trial.model,
        },
    }
    if config.queue_name:
        body["suspend"] = True  # Kueue admits it by setting suspend to false
    if config.active_deadline_seconds is not None:
        body["activeDeadlineSeconds"] = config.active_deadline_seconds
    if config.cluster_selector:
        # A standing cluster: KubeRay refuses shutdownAfterJobFinishes with a selector.
        body["clusterSelector"] = dict(config.cluster_selector)
    else:
        body["shutdownAfterJobFinishes"] = True
        body["ttlSecondsAfterFinished"] = config.ttl_seconds_after_finished
        body["rayClusterSpec"] = ray_cluster_spec(trial, labels, annotations, config, db_secret,
                                                  policy)
    return {"apiVersion": RAY_API_VERSION, "kind": RAYJOB_KIND, "metadata": metadata, "spec": body}


def decode_trial(rayjob: Mapping[str, Any]) -> AttemptSpec | None:
    """The AttemptSpec a RayJob carries (from its runtimeEnvYAML), if it is one of ours."""
    text = (rayjob.get("spec") or {}).get("runtimeEnvYAML")
    if not text:
        return None
    try:
        env = yaml.safe_load(text) or {}
        payload = (env.get("env_vars") or {}).get(TRIAL_JSON_ENV)
        return None if payload is None else AttemptSpec.model_validate(json.loads(payload))
    except (yaml.YAMLError, ValueError, AttributeError):
        return None


# --- reading a RayJob's outcome -------------------------------------------------------------

JOB_SUCCEEDED, JOB_FAILED, JOB_STOPPED, JOB_RUNNING = "SUCCEEDED", "FAILED", "STOPPED", "RUNNING"
DEPLOYMENT_COMPLETE, DEPLOYMENT_FAILED = "Complete", "Failed"
# KubeRay v1.3+: the RayJob's spec was refused (e.g. authOptions token with an old Ray);
# reason ValidationFailed, KubeRay's message says which field. Nothing will ever run.
DEPLOYMENT_VALIDATION_FAILED = "ValidationFailed"
DEPLOYMENT_RUNNING = "Running"
_EXIT_CODE = re.compile(r"exit(?:ed with)? code:? (-?\d+)", re.IGNORECASE)


def cluster_name(rayjob: Mapping[str, Any]) -> str | None:
    """The RayCluster the job runs on (KubeRay's status, or the selector's cluster)."""
    status = rayjob.get("status") or {}
    if status.get("rayClusterName"):
        return str(status["rayClusterName"])
    selector = (rayjob.get("spec") or {}).get("clusterSelector") or {}
    return selector.get(LABEL_RAY_CLUSTER)


def parse_time(value: Any) -> datetime | None:
    """A Kubernetes timestamp (RFC 3339, `Z` for UTC), or None when absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _terminations(pod: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    status = pod.get("status") or {}
    found = []
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            for state_key in ("state", "lastState"):
                terminated = (container.get(state_key) or {}).get("terminated")
                if terminated:
                    found.append((str(container.get("name", "?")), terminated))
    return found


def host_oom(pods: Sequence[Mapping[str, Any]], since: datetime | None = None) -> str | None:
    """Why a pod of the job's cluster ran out of host memory, if one did (after `since`).

    A container terminated (now or in its last state) with reason OOMKilled, or a pod
    evicted for memory pressure. `since` (the RayJob's start) ignores older kills on a
    standing cluster.
    """
    for pod in pods:
        pod_name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        for container, terminated in _terminations(pod):
            if terminated.get("reason") != "OOMKilled":
                continue
            finished = parse_time(terminated.get("finishedAt"))
            if since is not None and finished is not None and finished < since:
                continue
            code = terminated.get("exitCode")
            tail = f" (exit code {code})" if code is not None else ""
            return f"pod {pod_name} container {container} was OOMKilled{tail}"
        if status.get("reason") == "Evicted" and "memory" in str(status.get("message", "")):
            return f"pod {pod_name} was evicted: {status.get('message')}"
    return None


# KubeRay deletes a Ray pod whose container terminated (a worker OOMKilled under restart
# policy Never, or Failed) and makes a new one within ~60 ms: the pod is gone, and the Event
# it posts on the RayCluster is what is left: reason DeletedWorkerPod (DeletedHeadPod for
# the head), message "Deleted worker Pod NS/NAME; Pod status: Failed; Pod restart policy:
# Never; Ray container terminated status: &ContainerStateTerminated{ExitCode:137,Signal:0,
# Reason:OOMKilled,...}" (KubeRay v1.6.2, raycluster_controller.go).
KUBERAY_DELETED_POD_EVENTS = frozenset({"DeletedWorkerPod", "DeletedHeadPod"})
_DELETED_POD = re.compile(r"Deleted (?:worker|head) Pod ([^;\s]+)", re.IGNORECASE)
_TERMINATED_EXIT = re.compile(r"ExitCode:(-?\d+)")


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        found = parse_time(event.get(key))
        if found is not None:
            return found
    return parse_time((event.get("metadata") or {}).get("creationTimestamp"))


def host_oom_events(
    events: Sequence[Mapping[str, Any]], since: datetime | None = None
) -> str | None:
    """Why a pod of the job's cluster ran out of host memory, from KubeRay's Events on the
    RayCluster (the pod itself is already deleted and replaced), if one did (after `since`)."""
    for event in events:
        if event.get("reason") not in KUBERAY_DELETED_POD_EVENTS:
            continue
        message = str(event.get("message") or "")
        if "OOMKilled" not in message:
            continue
        when = _event_time(event)
        if since is not None and when is not None and when < since:
            continue
        pod = _DELETED_POD.search(message)
        code = _TERMINATED_EXIT.search(message)
        name = pod.group(1).rsplit("/", 1)[-1] if pod else "?"
        tail = f" (exit code {code.group(1)})" if code else ""
        return f"pod {name} was OOMKilled{tail}; KubeRay deleted and replaced it"
    return None


def outcome_from_rayjob(
    rayjob: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]] = (),
    *,
    budget_set: bool = False,
    events: Sequence[Mapping[str, Any]] = (),
) -> tuple[TrialState, OOMKind | None, str] | None:
    """How a RayJob's attempt ended, from KubeRay's status and its cluster's pods.

    Read from the fields KubeRay v1.6.2 really writes: `jobStatus` (empty while
    Initializing), `jobDeploymentStatus` (Initializing, Running, Complete, Failed,
    ValidationFailed, Suspending, Suspended, Retrying, Waiting), `reason`, `message`,
    `startTime`, and the `succeeded`/`failed` counters. None while the job is still going
    (any deployment status but Complete, Failed and ValidationFailed). Otherwise
    (state, oom kind, reason):
    - `jobStatus` SUCCEEDED (or Complete with `succeeded` >= 1): succeeded;
    - STOPPED: cancelled (someone stopped the Ray job);
    - FAILED, or `jobDeploymentStatus` Failed (AppFailed, SubmissionFailed,
      DeadlineExceeded, JobDeploymentStatusTransitionGracePeriodExceeded: the submitter
      ended and the Ray job never reached a terminal state within 30 s) or
      ValidationFailed (KubeRay refused the spec):
      a host OOM when a pod of the cluster was OOMKilled (now, or in its last state: the
      kubelet restarted it) or evicted for memory, or KubeRay's Event says it deleted an
      OOMKilled pod (`host_oom_events`), else the
      status message is classified (`classify.classify_text`: a CUDA OOM is `oom/gpu`, our
      budget exception `oom/budget`), else the worker's exit code 3 means an OOM of unknown
      kind, else failed.
    The worker's own result (in the store) is more precise and is read before this.
    """
    status = rayjob.get("status") or {}
    job_status = str(status.get("jobStatus") or "")
    deployment = str(status.get("jobDeploymentStatus") or "")
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "")
    text = "; ".join(part for part in (reason, message) if part)

    succeeded = job_status == JOB_SUCCEEDED or (
        # Complete, and KubeRay's own counter says the job succeeded (jobStatus not copied).
        not job_status and deployment == DEPLOYMENT_COMPLETE
        and _count(status.get("succeeded")) > 0
    )
    if succeeded:
        return TrialState.SUCCEEDED, None, message or "the Ray job succeeded"
    if job_status == JOB_STOPPED:
        return TrialState.CANCELLED, None, excerpt(text or "the Ray job was stopped")
    failed = job_status == JOB_FAILED or deployment in (
        DEPLOYMENT_FAILED, DEPLOYMENT_VALIDATION_FAILED
    )
    if not failed and deployment == DEPLOYMENT_COMPLETE:
        # Complete without a terminal job status: the submitter ended without a verdict.
        failed = True
    if not failed:
        return None
    since = parse_time(status.get("startTime"))
    killed = host_oom(pods, since) or host_oom_events(events, since)
    if killed is not None:
        return TrialState.OOM, OOMKind.HOST, excerpt(f"{killed}; {text}" if text else killed)
    state, kind = classify_text(text, budget_set=budget_set)
    if state is TrialState.FAILED:
        match = _EXIT_CODE.search(text)
        if match is not None and int(match.group(1)) == OOM_EXIT_CODE:
            state = TrialState.OOM  # the worker's exit code for any OOM; kind unknown
    return state, kind, excerpt(text or f"the RayJob failed ({deployment or job_status})")


def _count(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def running_state(rayjob: Mapping[str, Any]) -> TrialState:
    """A live RayJob as a trial state: running once the Ray job runs, else pending."""
    status = rayjob.get("status") or {}
    if status.get("jobStatus") == JOB_RUNNING or status.get("jobDeploymentStatus") == (
        DEPLOYMENT_RUNNING
    ):
        return TrialState.RUNNING
    return TrialState.PENDING
