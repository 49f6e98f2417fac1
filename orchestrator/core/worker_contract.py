"""The worker contract: what a worker is given (`AttemptSpec`) and what it returns
(`AttemptResult`, with its `EpochRecord`s), both as JSON.

`python -m worker run --trial FILE` reads exactly an `AttemptSpec` (docs/architecture.md, "The
worker contract"). Everything one attempt of a trial needs is resolved there (axes applied to
the training recipe, per-model resources, the memory budget in bytes), so the worker never sees
the grid. The JSON field names (camelCase) are the on-disk contract and do not change with the
Python names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from orchestrator.core.lifecycle import Method, OOMKind, TrialState
from orchestrator.core.names import IDENTITY_FIELDS, SWEEP_FIELDS
from orchestrator.core.spec import Dataset, ResourceShape, SelectionLoss, Training
from orchestrator.core.stopping import StopReason


@dataclass(frozen=True, slots=True)
class AttemptKey:
    """What names one trial attempt in the store: its sweep, the trial and the attempt."""

    namespace: str
    sweep: str
    trial_id: str
    attempt: int


class AttemptSpec(BaseModel):
    """What the worker is given: one attempt of one trial, everything resolved."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    sweep: str
    namespace: str = ""
    trial_id: str
    lane: str
    attempt: int = Field(1, ge=1)
    model: str
    model_index: int = Field(0, ge=0)
    method: Method
    rank: int | None = None
    alpha: int | None = None
    dss_alpha: float = Field(0.5, ge=0, le=1)
    seed: int = 0
    training: Training = Training()
    dataset: Dataset = Dataset()
    resources: ResourceShape = ResourceShape(workers=1, gpus_per_worker=0, cpus_per_worker=1)
    memory_budget_bytes: int | None = Field(None, ge=1)
    output_dir: str = "runs/trial"
    db_url: str | None = Field(
        None, description="Store URL; LADDER_DB_URL in the environment takes precedence."
    )

    @property
    def key(self) -> AttemptKey:
        return AttemptKey(self.namespace, self.sweep, self.trial_id, self.attempt)


class EpochRecord(BaseModel):
    """One epoch of one trial attempt, as the worker measured it."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    epoch: int = Field(ge=0)  # 0: the baseline, the untuned model (training.baseline)
    train_loss: float | None = None  # None at epoch 0 only (nothing trained yet)
    train_label_loss: float | None = None
    train_rationale_loss: float | None = None  # None when dssAlpha = 1 (rationales ignored)
    eval_loss: float  # the selection loss (training.selectionLoss): best epoch, LR plateau
    eval_label_loss: float | None = None  # the `predict:` task alone (the authors' eval loss)
    eval_rationale_loss: float | None = None  # None when dssAlpha = 1 and it is not selected
    eval_dss_loss: float | None = None  # a * label + (1 - a) * rationale
    learning_rate: float
    samples_per_second: float | None = None  # training samples/s; None at epoch 0
    wall_seconds: float
    peak_gpu_memory_bytes: int | None = None  # max over devices, NVML used, this epoch's own
    peak_host_memory_bytes: int | None = None  # max over workers, peak RSS of the run so far
    exact_match: float | None = None  # generation metrics, recorded at epoch 0 (the baseline)
    json_valid_rate: float | None = None

    @property
    def is_baseline(self) -> bool:
        return self.epoch == BASELINE_EPOCH


def selected_loss(
    selection: SelectionLoss, *, label: float, rationale: float | None, dss: float
) -> float:
    """The evaluation loss `training.selectionLoss` names (it picks the best epoch and drives
    the LR plateau). The rationale loss is None only when it was not computed (dssAlpha = 1
    and another loss selected), so asking for it then is a bug, not a user error."""
    if selection is SelectionLoss.LABEL:
        return label
    if selection is SelectionLoss.DSS:
        return dss
    if rationale is None:
        raise ValueError("selectionLoss 'rationale' needs the eval rationale loss")
    return rationale


BASELINE_EPOCH = 0  # the untuned model's evaluation, stored as epoch 0 (training.baseline)


def trained_epochs(epochs: Iterable[EpochRecord]) -> list[EpochRecord]:
    """The epochs that trained (the baseline, epoch 0, left out)."""
    return [r for r in epochs if r.epoch != BASELINE_EPOCH]


def baseline_of(epochs: Iterable[EpochRecord]) -> EpochRecord | None:
    return next((r for r in epochs if r.epoch == BASELINE_EPOCH), None)


def best_record(epochs: Iterable[EpochRecord]) -> EpochRecord | None:
    """The trained epoch with the lowest finite selection loss (`eval_loss`), the earliest of
    equals; the baseline (epoch 0) is never the best epoch."""
    finite = [r for r in trained_epochs(epochs) if math.isfinite(r.eval_loss)]
    return min(finite, key=lambda r: (r.eval_loss, r.epoch), default=None)


class AttemptResult(BaseModel):
    """What one trial attempt produced: success or a classified failure.

    The worker prints it as one JSON line on stdout and writes it to the store; backends read
    it back from either. Memory: `peak_gpu_memory_bytes` is the largest per-device peak,
    `total_gpu_memory_bytes` the sum over devices (as the paper reports it), both NVML's
    "used", which includes the CUDA context and library workspaces; `peak_torch_allocated_bytes`
    and `peak_torch_reserved_bytes` are the caching allocator's own peaks (tensors, and what it
    held), without them (worker/telemetry.py).
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    sweep: str
    namespace: str = ""
    trial_id: str
    lane: str
    attempt: int = 1
    model: str
    model_index: int = 0
    method: Method
    rank: int | None = None
    alpha: int | None = None
    dss_alpha: float = 0.5
    seed: int = 0
    status: TrialState
    oom_kind: OOMKind | None = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    wall_seconds: float | None = None
    time_to_first_step_seconds: float | None = None
    samples_per_second: float | None = None  # training samples/s summed over workers
    # Trained samples over the whole epoch loop (training, evaluation, generation, saves).
    end_to_end_samples_per_second: float | None = None
    peak_gpu_memory_bytes: int | None = None
    total_gpu_memory_bytes: int | None = None
    gpu_memory_per_device: list[int] = Field(default_factory=list)
    peak_torch_allocated_bytes: int | None = None
    peak_torch_reserved_bytes: int | None = None
    peak_host_memory_bytes: int | None = None
    estimated_memory_bytes: int | None = None
    best_eval_loss: float | None = None  # the selection loss at the best epoch
    best_epoch: int | None = None
    selection_loss: SelectionLoss | None = None  # which loss best_eval_loss is
    eval_label_loss: float | None = None  # at the best epoch
    eval_rationale_loss: float | None = None  # at the best epoch
    exact_match: float | None = None
    json_valid_rate: float | None = None
    # Generated labels against the references (worker.generation): corpus BLEU, chrF and TER
    # (sacrebleu, 0-100; TER lower is better) and the mean leaf-path similarity of the JSON.
    bleu: float | None = None
    chrf: float | None = None
    ter: float | None = None
    dsl_similarity: float | None = None
    epochs_completed: int = 0
    stopped_epoch: int | None = None  # the last epoch trained, when training ended normally
    stop_reason: StopReason | None = None  # why it ended there (core/stopping.py)
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    # The untuned model (epoch 0, training.baseline): the selection loss and exact match.
    baseline_eval_loss: float | None = None
    baseline_exact_match: float | None = None
    baseline_json_valid_rate: float | None = None
    epochs: list[EpochRecord] = Field(default_factory=list)

    @classmethod
    def for_trial(cls, trial: AttemptSpec, **fields: object) -> AttemptResult:
        """A result carrying the trial's identity, plus the given fields."""
        identity = trial.model_dump(include={*SWEEP_FIELDS, *IDENTITY_FIELDS})
        return cls(**identity, **fields)

    def json_line(self) -> str:
        return RESULT_PREFIX + self.model_dump_json(by_alias=True)

    @classmethod
    def from_output(cls, text: str) -> AttemptResult | None:
        """The last result line in a worker's output (stdout or Ray job logs), if any."""
        for line in reversed(text.splitlines()):
            if line.startswith(RESULT_PREFIX):
                return cls.model_validate_json(line[len(RESULT_PREFIX):])
        return None


# The worker's one structured stdout line starts with this, so log lines never parse as one.
RESULT_PREFIX = "LADDER_RESULT "

# Environment every trial's processes get (the Kubernetes RayJob's runtime env, the local
# backend's Ray jobs, a worker's own Ray runtime), unless the user set the variable already.
# Batch shapes change every step, so with fixed segments the caching allocator's reserve can
# fragment past the probe step's peak and run out of memory mid-run; expandable segments grow
# in place instead.
WORKER_ENV: dict[str, str] = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


def single_cpu_rank(spec: AttemptSpec) -> bool:
    """One worker and no GPU: the local backend lets such a trial train in its job's driver
    process instead of a Ray Train worker group (names.RANK_IN_DRIVER_ENV)."""
    return spec.resources.workers == 1 and spec.resources.gpus_per_worker == 0
