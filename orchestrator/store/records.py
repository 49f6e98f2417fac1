"""Reading results back: one record per trial, the sweep a row was run with.

Shared by `ladder results`, `ladder status`, the metrics collector and `ladder report`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from orchestrator import store
from orchestrator.core import lifecycle
from orchestrator.core.spec import Sweep, SweepSpec

# The columns of `ladder results`, in order (issue: "one record per trial with at least").
RESULT_COLUMNS = (
    "sweep", "namespace", "trial_id", "lane", "model", "method", "rank", "alpha", "dss_alpha",
    "seed", "status", "oom_kind", "attempt", "best_eval_loss", "best_epoch", "selection_loss",
    "eval_label_loss", "eval_rationale_loss", "exact_match",
    "json_valid_rate", "baseline_eval_loss", "baseline_exact_match", "eval_loss_gain",
    "bleu", "chrf", "ter", "dsl_similarity", "samples_per_second",
    "end_to_end_samples_per_second", "peak_gpu_memory_bytes", "total_gpu_memory_bytes",
    "peak_host_memory_bytes", "estimated_memory_bytes", "wall_seconds",
    "time_to_first_step_seconds", "stopped_epoch", "stop_reason", "error",
)


def sweep_from_row(row: store.SweepRow) -> Sweep:
    """The Sweep a stored sweep row was run with."""
    spec = SweepSpec.model_validate(row.spec or {"ladder": ["unknown"]})
    return Sweep(name=row.name, namespace=row.namespace, spec=spec)


def result_record(row: store.AttemptRow) -> dict[str, Any]:
    """A flat, JSON-ready record of one attempt (snake_case keys)."""
    record = store.to_result(row, epochs=()).model_dump(mode="json", exclude={"epochs"})
    record["eval_loss_gain"] = eval_loss_gain(record)
    return {column: record.get(column) for column in RESULT_COLUMNS}


def eval_loss_gain(record: dict[str, Any]) -> float | None:
    """How much fine-tuning lowered the selected eval loss: the baseline's (epoch 0, the
    untuned model) minus the best epoch's; positive when it helped. None without both."""
    base, best = record.get("baseline_eval_loss"), record.get("best_eval_loss")
    if base is None or best is None:
        return None
    return float(base) - float(best)


class _Record:
    """A result record seen through its attempt number (for `lifecycle.latest_attempts`)."""

    __slots__ = ("values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    @property
    def attempt(self) -> int:
        return int(self.values["attempt"])


def latest_attempts(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only each trial's latest attempt, in the input order of first appearance."""
    rows = [_Record(record) for record in records]
    latest = lifecycle.latest_attempts(
        rows, key=lambda r: (r.values["namespace"], r.values["sweep"], r.values["trial_id"])
    )
    return [row.values for row in latest.values()]


def latest_rows(rows: Sequence[store.AttemptRow]) -> list[store.AttemptRow]:
    """Each trial's latest attempt row."""
    latest = lifecycle.latest_attempts(rows, key=lambda row: (row.sweep_id, row.trial_id))
    return list(latest.values())
