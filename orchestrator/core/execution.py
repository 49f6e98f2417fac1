"""The `spec.execution` keys the Kubernetes controller acts on by itself (pure).

`spec.execution` stays an open mapping (other backends read other keys); the controller's
whole view of it is `operator.manifests.ExecutionConfig`, which extends this model. These
few keys are also typed in the Sweep CRD (`orchestrator.crd`), so `kubectl apply` refuses a
bad value; their defaults live here only (a default in the CRD would be stored into every
Sweep and override the installation's execution defaults).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# A trial whose pods the scheduler keeps refusing is requeued after this long (a shared
# cluster's GPUs were taken by someone else, a node pool is gone): long enough for a cluster
# autoscaler to add a node, short enough that a stuck head pod does not sit on its CPUs.
DEFAULT_UNSCHEDULABLE_TIMEOUT_SECONDS = 600.0
# A Kubernetes label value (Kueue's queue name becomes one).
MAX_LABEL_VALUE = 63
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


class ControllerExecution(BaseModel):
    """The typed `spec.execution` keys (camelCase in YAML; unknown keys ignored)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    stall_timeout_seconds: float | None = Field(
        None, gt=0, description="Stop a running trial that shows no progress (no new epoch "
        "in the store) for this long, and record the attempt as failed ('stalled: no "
        "progress for N s'); it then retries like any failure. Unset: never.",
    )
    unschedulable_timeout_seconds: float = Field(
        DEFAULT_UNSCHEDULABLE_TIMEOUT_SECONDS, gt=0, description="Requeue a trial whose pods "
        "the scheduler has refused (PodScheduled=False, Unschedulable) for this long: its "
        "RayJob is deleted and the attempt recorded as cancelled with the scheduler's "
        "message; the trial runs again as a new attempt once capacity allows (not a failure). "
        "Default 600 s.",
    )
    queue_name: str | None = Field(
        None, min_length=1, max_length=MAX_LABEL_VALUE, pattern=LABEL_VALUE_PATTERN,
        description="A Kueue LocalQueue: RayJobs are labelled kueue.x-k8s.io/queue-name and "
        "created suspended for Kueue to admit; they hold no GPUs until admitted.",
    )
