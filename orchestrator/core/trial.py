"""The worker contract's payload: one fully resolved trial, written as JSON for the worker.

`python -m worker run --trial FILE` reads exactly this model (docs/architecture.md, "The worker
contract"). Everything a trial needs is resolved here (axes applied to the training recipe,
per-model resources, the memory budget in bytes), so the worker never sees the grid.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from orchestrator.core.lifecycle import Method, OOMKind, TrialState
from orchestrator.core.names import IDENTITY_FIELDS, SWEEP_FIELDS
from orchestrator.core.spec import Dataset, ResourceShape, Training


class TrialSpec(BaseModel):
    """One trial attempt, everything resolved."""

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

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(by_alias=True, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: str | Path) -> TrialSpec:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


class EpochRecord(BaseModel):
    """One epoch of one trial attempt, as the worker measured it."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    epoch: int = Field(ge=1)
    train_loss: float
    train_label_loss: float
    train_rationale_loss: float | None = None  # None when dssAlpha = 1 (rationales ignored)
    eval_loss: float
    learning_rate: float
    samples_per_second: float
    wall_seconds: float
    peak_gpu_memory_bytes: int | None = None  # max over devices, NVML
    peak_host_memory_bytes: int | None = None  # max over workers, RSS


class TrialResult(BaseModel):
    """What one trial attempt produced: success or a classified failure.

    The worker prints it as one JSON line on stdout and writes it to the store; backends read
    it back from either. Memory: `peak_gpu_memory_bytes` is the largest per-device peak,
    `total_gpu_memory_bytes` the sum over devices (as the paper reports it).
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
    peak_gpu_memory_bytes: int | None = None
    total_gpu_memory_bytes: int | None = None
    gpu_memory_per_device: list[int] = Field(default_factory=list)
    peak_torch_allocated_bytes: int | None = None
    peak_torch_reserved_bytes: int | None = None
    peak_host_memory_bytes: int | None = None
    estimated_memory_bytes: int | None = None
    best_eval_loss: float | None = None
    best_epoch: int | None = None
    exact_match: float | None = None
    json_valid_rate: float | None = None
    epochs_completed: int = 0
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    epochs: list[EpochRecord] = Field(default_factory=list)

    @classmethod
    def for_trial(cls, trial: TrialSpec, **fields: object) -> TrialResult:
        """A result carrying the trial's identity, plus the given fields."""
        identity = trial.model_dump(include={*SWEEP_FIELDS, *IDENTITY_FIELDS})
        return cls(**identity, **fields)

    def json_line(self) -> str:
        return RESULT_PREFIX + self.model_dump_json(by_alias=True)

    @classmethod
    def from_output(cls, text: str) -> TrialResult | None:
        """The last result line in a worker's output (stdout or Ray job logs), if any."""
        for line in reversed(text.splitlines()):
            if line.startswith(RESULT_PREFIX):
                return cls.model_validate_json(line[len(RESULT_PREFIX):])
        return None


# The worker's one structured stdout line starts with this, so log lines never parse as one.
RESULT_PREFIX = "LADDER_RESULT "
