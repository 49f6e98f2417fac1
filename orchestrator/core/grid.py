"""Spec -> lanes -> trials: pure, deterministic, with stable ids.

A *lane* is one point of everything but the ladder (method, rank, alpha, axes); a *trial* is
(lane, model). Lanes come in the paper's order: for each axes point, full fine-tuning first,
then each (rank, alpha) pair with every adapter method. The trial id hashes the sweep, the
lane and the model, so the same spec always yields the same ids and every create is
idempotent.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import Axes, ResourceShape, Sweep, Training
from orchestrator.core.worker_contract import AttemptSpec

TRIAL_ID_LENGTH = 10
LONG_TRIAL_ID_LENGTH = 16  # the store's trial_id column holds 16 characters
# Axes that override a field of `training`; dssAlpha and seed are trial fields of their own.
_TRAINING_AXES = ("learning_rate", "batch_size", "lora_dropout")
_AXIS_TAGS = {"learning_rate": "lr", "batch_size": "bs", "lora_dropout": "do"}


@dataclass(frozen=True, slots=True)
class Lane:
    """One climb up the ladder."""

    index: int
    name: str
    method: Method
    rank: int | None
    alpha: int | None
    dss_alpha: float
    seed: int
    training_overrides: tuple[tuple[str, Any], ...] = ()

    def training(self, base: Training) -> Training:
        if not self.training_overrides:
            return base
        return base.model_copy(update=dict(self.training_overrides))


@dataclass(frozen=True, slots=True)
class GridPoint:
    """One trial: a (lane, model) point of the grid. Its attempts share its `trial_id`; each
    attempt is resolved into an `AttemptSpec` for the worker (`attempt_spec`)."""

    trial_id: str
    lane: Lane
    model: str
    model_index: int
    resources: ResourceShape = field(compare=False)


@dataclass(frozen=True, slots=True)
class Grid:
    """The expanded sweep: lanes in order, each with its trials smallest model first."""

    lanes: tuple[Lane, ...]
    trials: dict[str, tuple[GridPoint, ...]]  # lane name -> trials in ladder order

    def all_trials(self) -> list[GridPoint]:
        return [t for lane in self.lanes for t in self.trials[lane.name]]

    def trial(self, trial_id: str) -> GridPoint:
        for trial in self.all_trials():
            if trial.trial_id == trial_id:
                return trial
        raise KeyError(trial_id)


@functools.lru_cache(maxsize=4096)  # a grid has at most 5 x 32 distinct axis values
def _format_number(value: float) -> str:
    """`value` in the fewest characters that read back as exactly `value`: `{:g}` (six
    significant digits, the names of existing sweeps) when it round-trips, else `repr`, so two
    different values never share a name (lane names, and so trial ids, are injective)."""
    value = value + 0.0  # -0.0 is 0.0 (the axes refuse both as a repeat)
    text = f"{value:g}"
    return text if float(text) == value else repr(value)


def lane_name(
    method: Method, rank: int | None, alpha: int | None, point: dict[str, Any]
) -> str:
    """Readable, label-safe lane name, e.g. `lora-r32-a64-dss0.5-seed0`."""
    parts = [method.value]
    if rank is not None:
        parts += [f"r{rank}", f"a{alpha}"]
    parts += [f"dss{_format_number(point['dss_alpha'])}", f"seed{point['seed']}"]
    for axis in _TRAINING_AXES:
        if axis in point:
            parts.append(f"{_AXIS_TAGS[axis]}{_format_number(point[axis])}")
    return "-".join(parts)


def trial_id(sweep: Sweep, lane: str, model: str, length: int = TRIAL_ID_LENGTH) -> str:
    digest = hashlib.sha256(f"{sweep.namespace}/{sweep.name}/{lane}/{model}".encode())
    return digest.hexdigest()[:length]


def _unique_ids(sweep: Sweep, keys: list[tuple[str, str]]) -> list[str]:
    """The trial ids of (lane, model) pairs, in order. 40 bits collide with a chance of about
    one in 200 in a grid of MAX_TRIALS: a later pair whose id is taken gets the longer
    `LONG_TRIAL_ID_LENGTH` form, so ids stay unique and deterministic (ids that never
    collide, all of them in practice, keep the short form)."""
    ids: list[str] = []
    taken: set[str] = set()
    for lane, model in keys:
        found = trial_id(sweep, lane, model)
        if found in taken:
            found = trial_id(sweep, lane, model, LONG_TRIAL_ID_LENGTH)
        taken.add(found)
        ids.append(found)
    return ids


def _axes_points(axes: Axes) -> list[dict[str, Any]]:
    names = [name for name in Axes.model_fields if getattr(axes, name) is not None]
    values = [getattr(axes, name) for name in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def expand(sweep: Sweep) -> Grid:
    """All lanes and potential trials of a sweep, in the paper's order."""
    spec = sweep.spec
    lanes: list[Lane] = []
    for point in _axes_points(spec.axes):
        overrides = tuple((k, point[k]) for k in _TRAINING_AXES if k in point)
        combos: list[tuple[Method, int | None, int | None]] = []
        if Method.FULL in spec.methods:
            combos.append((Method.FULL, None, None))
        for adapter in spec.adapters:
            for alpha in adapter.alphas:
                combos += [(m, adapter.rank, alpha) for m in spec.methods if m.uses_adapters]
        qlora = spec.training.qlora_overrides
        qlora_items = qlora.as_overrides() if qlora else ()
        for method, rank, alpha in combos:
            lanes.append(
                Lane(
                    index=len(lanes),
                    name=lane_name(method, rank, alpha, point),
                    method=method,
                    rank=rank,
                    alpha=alpha,
                    dss_alpha=point["dss_alpha"],
                    seed=point["seed"],
                    training_overrides=overrides + (qlora_items if method is Method.QLORA else ()),
                )
            )
    names = {lane.name for lane in lanes}
    if len(names) != len(lanes):  # _format_number is injective; this guards the invariant
        raise ValueError("two lanes of the grid have the same name")
    shapes = [spec.resources.for_model(model) for model in spec.ladder]
    ids = iter(_unique_ids(sweep, [(lane.name, model) for lane in lanes for model in spec.ladder]))
    trials = {
        lane.name: tuple(
            GridPoint(
                trial_id=next(ids),
                lane=lane,
                model=model,
                model_index=index,
                resources=shapes[index],
            )
            for index, model in enumerate(spec.ladder)
        )
        for lane in lanes
    }
    return Grid(lanes=tuple(lanes), trials=trials)


def attempt_spec(
    sweep: Sweep, trial: GridPoint, *, attempt: int, output_dir: str, db_url: str | None = None
) -> AttemptSpec:
    """The worker's payload for one attempt of a trial."""
    lane = trial.lane
    return AttemptSpec(
        sweep=sweep.name,
        namespace=sweep.namespace,
        trial_id=trial.trial_id,
        lane=lane.name,
        attempt=attempt,
        model=trial.model,
        model_index=trial.model_index,
        method=lane.method,
        rank=lane.rank,
        alpha=lane.alpha,
        dss_alpha=lane.dss_alpha,
        seed=lane.seed,
        training=lane.training(sweep.spec.training),
        dataset=sweep.spec.dataset,
        resources=trial.resources,
        memory_budget_bytes=sweep.spec.escalation.memory_budget_bytes,
        output_dir=output_dir,
        db_url=db_url,
    )
