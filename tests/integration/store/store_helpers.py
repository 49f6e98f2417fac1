"""Builders of the store tests: a small real sweep, its trials, and complete results."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.core.grid import attempt_spec, expand
from orchestrator.core.lifecycle import Method, OOMKind, TrialState
from orchestrator.core.spec import AdapterSet, SelectionLoss, Sweep, SweepSpec
from orchestrator.core.worker_contract import AttemptResult, AttemptSpec, EpochRecord
from orchestrator.store import (
    Base,
    create_store_engine,
    current_revision,
    migrate,
    open_store,
    record_result,
    save_with_retry,
)

T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def make_sweep(name: str = "paper-grid", namespace: str = "", **spec: object) -> Sweep:
    body = {
        "ladder": ["google/flan-t5-small", "google/flan-t5-base"],
        "methods": [Method.FULL, Method.LORA],
        "adapters": [AdapterSet(rank=32, alphas=[32, 64])],
        **spec,
    }
    return Sweep(name=name, namespace=namespace, spec=SweepSpec.model_validate(body))


def trial_specs(sweep: Sweep, attempt: int = 1) -> list[AttemptSpec]:
    """Every trial of the sweep's grid, as the scheduler would resolve it."""
    return [
        attempt_spec(sweep, trial, attempt=attempt, output_dir=f"runs/{trial.trial_id}")
        for trial in expand(sweep).all_trials()
    ]


def epoch(number: int, **fields: object) -> EpochRecord:
    values: dict[str, object] = {
        "epoch": number,
        "train_loss": 2.0 / number,
        "train_label_loss": 1.5 / number,
        "train_rationale_loss": 0.5 / number,
        "eval_loss": 2.5 / number,
        "eval_label_loss": 2.5 / number,
        "eval_rationale_loss": 3.5 / number,
        "eval_dss_loss": 3.0 / number,
        "learning_rate": 5e-5,
        "samples_per_second": 12.25,
        "wall_seconds": 3.5,
        "peak_gpu_memory_bytes": 3 * 2**30,
        "peak_host_memory_bytes": 5 * 2**30,
    }
    values.update(fields)
    return EpochRecord.model_validate(values)


def succeeded(spec: AttemptSpec, epoch_count: int = 3, **fields: object) -> AttemptResult:
    """A complete successful result, every field set (large values exercise BIGINT)."""
    values: dict[str, object] = {
        "status": TrialState.SUCCEEDED,
        "started_at": T0,
        "finished_at": T0 + timedelta(minutes=5),
        "wall_seconds": 300.25,
        "time_to_first_step_seconds": 4.5,
        "samples_per_second": 11.75,
        "peak_gpu_memory_bytes": 70 * 2**30,
        "total_gpu_memory_bytes": 8 * 70 * 2**30,
        "gpu_memory_per_device": [70 * 2**30] * 8,
        "peak_torch_allocated_bytes": 60 * 2**30,
        "peak_torch_reserved_bytes": 65 * 2**30,
        "peak_host_memory_bytes": 100 * 2**30,
        "estimated_memory_bytes": 64 * 2**30,
        "best_eval_loss": 2.5 / epoch_count,
        "best_epoch": epoch_count,
        "selection_loss": SelectionLoss.LABEL,
        "eval_label_loss": 2.5 / epoch_count,
        "eval_rationale_loss": 3.5 / epoch_count,
        "exact_match": 0.625,
        "json_valid_rate": 0.875,
        "bleu": 41.5,
        "chrf": 63.25,
        "ter": 37.75,
        "dsl_similarity": 0.8125,
        "end_to_end_samples_per_second": 9.5,
        "epochs_completed": epoch_count,
        "trainable_parameters": 3_000_000_000,
        "total_parameters": 2**40,
        "epochs": [epoch(n) for n in range(1, epoch_count + 1)],
    }
    values.update(fields)
    return AttemptResult.for_trial(spec, **values)


def failed(spec: AttemptSpec, status: TrialState, **fields: object) -> AttemptResult:
    """A terminal, unsuccessful result (an OOM carries its kind)."""
    values: dict[str, object] = {
        "status": status,
        "started_at": T0,
        "finished_at": T0 + timedelta(seconds=30),
        "error": f"{status.value}: something went wrong",
    }
    if status is TrialState.OOM:
        values["oom_kind"] = OOMKind.GPU
    values.update(fields)
    return AttemptResult.for_trial(spec, **values)


def snapshot(session: Session) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every store table, as stored: "the same rows" means equal snapshots."""
    tables: dict[str, list[tuple[Any, ...]]] = {}
    for table in Base.metadata.sorted_tables:
        rows = session.execute(sa.select(table).order_by(*table.primary_key.columns))
        tables[table.name] = [tuple(row) for row in rows]
    return tables


# Targets of the multi-process tests. They live here, in an importable module, because a
# spawned process unpickles a function by importing its module by name.


def migrate_after(barrier: Barrier, url: str) -> str | None:
    """Wait until every process is ready, migrate, and report the revision reached."""
    barrier.wait(timeout=60)  # every process starts its upgrade at the same moment
    migrate(url)
    engine = create_store_engine(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def record_after(barrier: Barrier, url: str, result_json: str) -> str:
    """Wait until every process is ready, record a result, and report the stored status."""
    result = AttemptResult.model_validate_json(result_json)
    factory = open_store(url)
    barrier.wait(timeout=60)
    row = save_with_retry(factory, lambda session: record_result(session, result))
    return str(row.status)
