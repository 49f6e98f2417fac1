"""Which ready lane heads to launch now: greedy packing into free capacity, in priority order.

docs/architecture.md, "The plan loop": scheduling packs lane heads into free capacity
(GPUs or CPU slots), in priority order (`launch_priority`), up to `parallelism`. The paper ran
one trial at a time on all eight GPUs; most models fit on one, so small trials go side by side.

The priority is the lane with the most rungs left to climb first, then the paper's order
(lane index): the critical-path rule (Hu's "highest level first" for chains). A lane is a chain
of trials that must run one after another and its upper rungs cost the most, so the lane with
the most rungs left has the longest remaining chain; starting it first keeps every lane's
climb moving, and the sweep ends on its top rungs (often whole-node or whole-cluster trials,
which then run back to back) rather than on one lane climbing alone while the cluster idles.
On the paper grid this cuts the idle GPU time of the simulated sweep from 2.5 % to 0.7 % of
the makespan (docs/benchmarks.md, "Makespan against its lower bound"). With one trial at a
time (`parallelism: 1`) the order cannot change the makespan, and the paper's order is kept:
lane by lane, as the paper ran them, so whole lanes finish first.

The policy is first-fit in priority order with backfill: each candidate that fits in what is
still free is taken; one that does not fit is passed over, and later, smaller candidates may
use the room. A large trial therefore never blocks small ones; the price is that it waits
until enough capacity is free at once (it is first in line whenever it fits). Capacity is a
pool (GPUs and CPUs summed over the cluster); node boundaries are left to Ray.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from orchestrator.core.grid import GridPoint


@dataclass(frozen=True, slots=True)
class Capacity:
    """GPUs and CPUs: a pool's size, what is in use, or what one trial needs."""

    gpus: int
    cpus: int

    def fits(self, other: Capacity) -> bool:
        """Whether this demand fits within `other` (a pool or what is free of it)."""
        return self.gpus <= other.gpus and self.cpus <= other.cpus

    def plus(self, other: Capacity) -> Capacity:
        return Capacity(gpus=self.gpus + other.gpus, cpus=self.cpus + other.cpus)

    def minus(self, other: Capacity) -> Capacity:
        """What is left of this after `other` is taken (negative when over-committed)."""
        return Capacity(gpus=self.gpus - other.gpus, cpus=self.cpus - other.cpus)

    @property
    def is_empty(self) -> bool:
        return self.gpus <= 0 and self.cpus <= 0

    @classmethod
    def total(cls, capacities: Iterable[Capacity]) -> Capacity:
        gpus = cpus = 0
        for capacity in capacities:
            gpus += capacity.gpus
            cpus += capacity.cpus
        return cls(gpus=gpus, cpus=cpus)


# Nothing free: what a status computed from the store alone plans with (it launches nothing).
NO_CAPACITY = Capacity(gpus=0, cpus=0)


def demand(trial: GridPoint) -> Capacity:
    """What one trial holds while it runs: all its workers' GPUs and CPUs."""
    return Capacity(gpus=trial.resources.gpus, cpus=trial.resources.cpus)


def unschedulable(trial: GridPoint, total: Capacity) -> bool:
    """Whether the trial needs more than the whole capacity, so it can never start."""
    return not demand(trial).fits(total)


def launch_priority(trial: GridPoint, rungs: int, parallelism: int) -> tuple[int, int]:
    """The sort key of a ready lane head (smallest first): see the module docstring.

    `rungs` is the length of the trial's lane (its ladder); `trial.model_index` is how far up
    the lane has climbed.
    """
    if parallelism <= 1:
        return (0, trial.lane.index)
    return (trial.model_index - rungs, trial.lane.index)


def select_launches(
    candidates: Sequence[GridPoint],
    *,
    total: Capacity,
    in_use: Capacity,
    running: int,
    parallelism: int,
) -> list[GridPoint]:
    """The candidates to launch now, in their given (priority) order.

    `candidates` are lane heads ready to launch, highest priority first; `in_use` and
    `running` describe the attempts already pending or running. Each candidate that fits in
    the free capacity is taken while fewer than `parallelism` trials would run in all; one that
    does not fit is passed over (later, smaller candidates may backfill). A trial id given
    twice is taken at most once.
    """
    slots = parallelism - running
    chosen: list[GridPoint] = []
    if slots <= 0:
        return chosen
    free = total.minus(in_use)
    seen: set[str] = set()
    for trial in candidates:
        if trial.trial_id in seen:
            continue
        need = demand(trial)
        if need.fits(free):
            chosen.append(trial)
            seen.add(trial.trial_id)
            free = free.minus(need)
            if len(chosen) >= slots:
                break
    return chosen
