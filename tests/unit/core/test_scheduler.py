"""Packing lane heads into free capacity (orchestrator.core.scheduler)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core.grid import GridPoint, Lane, expand
from orchestrator.core.lifecycle import Method
from orchestrator.core.scheduler import (
    Capacity,
    demand,
    launch_priority,
    select_launches,
    unschedulable,
)
from orchestrator.core.spec import PAPER_LADDER, ResourceShape, Sweep, SweepSpec

LANE = Lane(index=0, name="full-dss0.5-seed0", method=Method.FULL, rank=None, alpha=None,
            dss_alpha=0.5, seed=0)
# The paper's cluster: two nodes, each with 4 H100s and 2 x 56-core Xeon 8480+.
PAPER_CLUSTER = Capacity(gpus=8, cpus=224)


def make_trial(name: str, gpus: int = 1, cpus: int = 1, workers: int = 1) -> GridPoint:
    shape = ResourceShape(workers=workers, gpus_per_worker=gpus, cpus_per_worker=cpus)
    return GridPoint(
        trial_id=name, lane=LANE, model=f"model-{name}", model_index=0, resources=shape
    )


def names(trials: Sequence[GridPoint]) -> list[str]:
    return [t.trial_id for t in trials]


# -- capacity arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("need", "pool", "fits"),
    [
        pytest.param(Capacity(1, 1), Capacity(1, 1), True, id="exactly"),
        pytest.param(Capacity(0, 4), Capacity(0, 4), True, id="cpu-only"),
        pytest.param(Capacity(2, 1), Capacity(1, 8), False, id="too-many-gpus"),
        pytest.param(Capacity(1, 9), Capacity(8, 8), False, id="too-many-cpus"),
        pytest.param(Capacity(0, 1), Capacity(-1, 8), False, id="over-committed-pool"),
    ],
)
def test_fits(need: Capacity, pool: Capacity, fits: bool) -> None:
    assert need.fits(pool) is fits


def test_arithmetic() -> None:
    assert Capacity(8, 16).minus(Capacity(3, 4)) == Capacity(5, 12)
    assert Capacity(1, 2).plus(Capacity(3, 4)) == Capacity(4, 6)
    assert Capacity.total([Capacity(1, 2), Capacity(3, 4)]) == Capacity(4, 6)
    assert Capacity.total([]) == Capacity(0, 0)
    assert Capacity(0, 0).is_empty and not Capacity(0, 1).is_empty


@pytest.mark.parametrize(
    ("workers", "gpus", "cpus", "expected"),
    [
        pytest.param(8, 1, 1, Capacity(8, 8), id="paper-8-workers"),
        pytest.param(1, 1, 4, Capacity(1, 4), id="one-gpu-worker"),
        pytest.param(2, 0, 3, Capacity(0, 6), id="cpu-workers"),
    ],
)
def test_demand_sums_the_workers(workers: int, gpus: int, cpus: int, expected: Capacity) -> None:
    assert demand(make_trial("t", gpus=gpus, cpus=cpus, workers=workers)) == expected


@pytest.mark.parametrize(
    ("trial", "total", "expected"),
    [
        pytest.param(make_trial("a", workers=8), PAPER_CLUSTER, False, id="whole-cluster"),
        pytest.param(make_trial("b", workers=16), PAPER_CLUSTER, True, id="more-gpus-than-exist"),
        pytest.param(make_trial("c", gpus=0, cpus=4), Capacity(0, 2), True, id="cpu-short"),
        pytest.param(make_trial("d", gpus=0, cpus=2), Capacity(0, 2), False, id="cpu-fits"),
    ],
)
def test_unschedulable(trial: GridPoint, total: Capacity, expected: bool) -> None:
    assert unschedulable(trial, total) is expected


# -- selection -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidates", "total", "in_use", "running", "parallelism", "chosen"),
    [
        pytest.param(
            [make_trial("a"), make_trial("b"), make_trial("c")],
            Capacity(2, 8), Capacity(0, 0), 0, 10, ["a", "b"],
            id="in-order-until-full",
        ),
        pytest.param(
            [make_trial("big", workers=8), make_trial("s1"), make_trial("s2")],
            Capacity(8, 16), Capacity(4, 4), 1, 10, ["s1", "s2"],
            id="backfill-past-a-big-trial",
        ),
        pytest.param(
            [make_trial("big", workers=8), make_trial("s1")],
            Capacity(8, 16), Capacity(0, 0), 0, 10, ["big"],
            id="big-first-when-it-fits",
        ),
        pytest.param(
            [make_trial("a"), make_trial("b"), make_trial("c")],
            Capacity(8, 8), Capacity(1, 1), 1, 2, ["a"],
            id="parallelism-counts-running",
        ),
        pytest.param(
            [make_trial("a")], Capacity(8, 8), Capacity(0, 0), 3, 2, [],
            id="already-over-parallelism",
        ),
        pytest.param(
            [make_trial("a"), make_trial("a"), make_trial("b")],
            Capacity(8, 8), Capacity(0, 0), 0, 10, ["a", "b"],
            id="duplicates-once",
        ),
        pytest.param(
            [make_trial("a", gpus=0)], Capacity(1, 1), Capacity(2, 2), 0, 10, [],
            id="over-committed",
        ),
        pytest.param(
            [make_trial("a", gpus=0, cpus=2), make_trial("b", gpus=0, cpus=2),
             make_trial("c", gpus=0, cpus=1)],
            Capacity(0, 5), Capacity(0, 0), 0, 10, ["a", "b", "c"],
            id="cpu-slots",
        ),
        pytest.param([], Capacity(8, 8), Capacity(0, 0), 0, 10, [], id="nothing-ready"),
    ],
)
def test_select_launches(
    candidates: list[GridPoint],
    total: Capacity,
    in_use: Capacity,
    running: int,
    parallelism: int,
    chosen: list[str],
) -> None:
    selected = select_launches(
        candidates, total=total, in_use=in_use, running=running, parallelism=parallelism
    )
    assert names(selected) == chosen


def paper_sweep(**resources: object) -> Sweep:
    spec = SweepSpec(ladder=list(PAPER_LADDER), resources=resources or {})
    return Sweep(name="paper-grid", spec=spec)


def lane_heads(sweep: Sweep) -> list[GridPoint]:
    grid = expand(sweep)
    return [grid.trials[lane.name][0] for lane in grid.lanes]


def test_paper_cluster_packs_eight_one_gpu_trials_side_by_side() -> None:
    one_gpu = {"workers": 1}
    sweep = paper_sweep(
        workers=8,
        overrides={m: one_gpu for m in PAPER_LADDER[:3]},  # XL keeps all 8 GPUs
    )
    heads = lane_heads(sweep)
    assert len(heads) == 25
    selected = select_launches(
        heads, total=PAPER_CLUSTER, in_use=Capacity(0, 0), running=0, parallelism=25
    )
    assert names(selected) == names(heads[:8])  # the first 8 lanes, in the paper's order
    assert Capacity.total(demand(t) for t in selected) == Capacity(8, 8)


def test_paper_setup_runs_one_trial_at_a_time() -> None:
    """Eight one-GPU workers per trial, as the paper did: one trial holds the whole cluster."""
    heads = lane_heads(paper_sweep())
    selected = select_launches(
        heads, total=PAPER_CLUSTER, in_use=Capacity(0, 0), running=0, parallelism=25
    )
    assert names(selected) == names(heads[:1])


def test_a_waiting_eight_gpu_trial_does_not_block_one_gpu_trials() -> None:
    xl = make_trial("xl", workers=8)
    small = [make_trial(f"s{i}") for i in range(6)]
    selected = select_launches(
        [xl, *small], total=PAPER_CLUSTER, in_use=Capacity(3, 3), running=3, parallelism=8
    )
    assert names(selected) == ["s0", "s1", "s2", "s3", "s4"]


# -- properties --------------------------------------------------------------------------------


@st.composite
def candidate_lists(draw: st.DrawFn) -> list[GridPoint]:
    count = draw(st.integers(0, 12))
    trials = []
    for i in range(count):
        name = f"t{draw(st.integers(0, count))}" if draw(st.booleans()) else f"u{i}"
        trials.append(
            make_trial(
                name,
                gpus=draw(st.integers(0, 2)),
                cpus=draw(st.integers(1, 4)),
                workers=draw(st.integers(1, 8)),
            )
        )
    return trials


CAPACITIES = st.builds(Capacity, gpus=st.integers(0, 16), cpus=st.integers(0, 64))


@settings(max_examples=500)
@given(
    candidates=candidate_lists(),
    total=CAPACITIES,
    in_use=CAPACITIES,
    running=st.integers(0, 6),
    parallelism=st.integers(1, 8),
)
def test_selection_properties(
    candidates: list[GridPoint], total: Capacity, in_use: Capacity, running: int, parallelism: int
) -> None:
    kwargs = {"total": total, "in_use": in_use, "running": running, "parallelism": parallelism}
    selected = select_launches(candidates, **kwargs)

    # deterministic, and pure (the candidates are untouched)
    assert select_launches(list(candidates), **kwargs) == selected
    # never a trial twice
    assert len(set(names(selected))) == len(selected)
    # order respected: the selection is a subsequence of the candidates
    positions = iter(range(len(candidates)))
    for trial in selected:
        assert any(candidates[i] is trial for i in positions)
    # never beyond parallelism
    assert running + len(selected) <= max(parallelism, running)
    if running >= parallelism:
        assert selected == []
    # never beyond capacity
    free = total.minus(in_use)
    used = Capacity.total(demand(t) for t in selected)
    assert used.fits(free) or not selected
    # greedy and backfilling: with slots left, nothing passed over would still fit
    left = free.minus(used)
    if running + len(selected) < parallelism:
        chosen = set(names(selected))
        for trial in candidates:
            if trial.trial_id not in chosen:
                assert not demand(trial).fits(left)


# -- priority ----------------------------------------------------------------------------------


def test_the_lane_with_most_rungs_left_goes_first_then_the_papers_order() -> None:
    grid = expand(paper_sweep(workers=1))
    lanes = grid.lanes
    heads = [grid.trials[lanes[0].name][2], grid.trials[lanes[1].name][0],
             grid.trials[lanes[2].name][1], grid.trials[lanes[3].name][0]]
    ordered = sorted(heads, key=lambda t: launch_priority(t, 4, parallelism=8))
    assert [(t.lane.index, t.model_index) for t in ordered] == [(1, 0), (3, 0), (2, 1), (0, 2)]
    # One trial at a time: the paper's order, lane by lane, whatever the rung.
    ordered = sorted(heads, key=lambda t: launch_priority(t, 4, parallelism=1))
    assert [t.lane.index for t in ordered] == [0, 1, 2, 3]
