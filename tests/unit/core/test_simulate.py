"""The makespan simulator (tests/bench/simulate.py): the real plan on simulated time."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core.grid import GridPoint, expand
from orchestrator.core.lifecycle import Method
from orchestrator.core.scheduler import demand
from orchestrator.core.spec import PAPER_LADDER, OnOOM, Sweep, SweepSpec
from orchestrator.files import load_sweep
from tests.bench.simulate import (
    LADDER_RECIPE,
    PAPER_RECIPE,
    Cluster,
    CostModel,
    Simulation,
    TrialCost,
    fitted_resources,
    ladder_procedure,
    lower_bound,
    paper_procedure,
    simulate,
)

PAPER_GRID = Path(__file__).resolve().parents[3] / "k8s/examples/paper-grid.yaml"
SWEEP = load_sweep(PAPER_GRID)
COST = CostModel(recipe=LADDER_RECIPE)


def gpus_in_use(sim: Simulation) -> int:
    """The most GPUs held at once over the simulation."""
    events = sorted([(t.start, t.gpus) for t in sim.trials if t.gpus]
                    + [(t.end, -t.gpus) for t in sim.trials if t.gpus],
                    key=lambda e: (e[0], e[1]))
    held = peak = 0
    for _, delta in events:
        held += delta
        peak = max(peak, held)
    return peak


def test_every_trial_is_accounted_for() -> None:
    for procedure in (paper_procedure(SWEEP.spec), ladder_procedure(SWEEP.spec)):
        sim = simulate(SWEEP, procedure, COST)
        assert len({t.trial_id for t in sim.trials}) == SWEEP.spec.potential_trials == 100
        assert sim.makespan_seconds > 0


def test_the_paper_procedure_runs_one_trial_at_a_time_on_all_gpus() -> None:
    sim = simulate(SWEEP, paper_procedure(SWEEP.spec), COST)
    launched = sorted((t for t in sim.trials if t.gpus), key=lambda t: t.start)
    assert all(t.gpus == 8 for t in launched)
    assert all(a.end <= b.start for a, b in itertools.pairwise(launched))
    assert sim.makespan_seconds == sum(t.end - t.start for t in launched)


def test_ladder_packs_within_the_cluster_and_finishes_sooner() -> None:
    paper = simulate(SWEEP, paper_procedure(SWEEP.spec), COST)
    ladder = simulate(SWEEP, ladder_procedure(SWEEP.spec), COST)
    assert gpus_in_use(ladder) <= 8
    assert ladder.makespan_seconds < paper.makespan_seconds
    small = [t for t in ladder.trials if t.model == PAPER_LADDER[0] and t.gpus]
    assert all(t.gpus == 1 for t in small)
    # The same per-trial costs: the XL trials (8 GPUs in both) take the same GPU time.
    xl = [sum(t.end - t.start for t in s.trials if t.model == PAPER_LADDER[-1] and t.gpus)
          for s in (paper, ladder)]
    assert abs(xl[0] - xl[1]) / xl[0] < 0.05


def test_predicted_ooms_cost_nothing_and_probes_are_fast() -> None:
    # A 40 GiB card: the large end is predicted, or found by the probe in minutes.
    spec = SWEEP.spec.model_copy(update={"escalation": SWEEP.spec.escalation.model_copy(
        update={"device_memory": "40Gi"})})
    small_card = CostModel(recipe=LADDER_RECIPE, cluster=COST.cluster.__class__(
        device_bytes=40 * 2**30))
    sim = simulate(Sweep(name="small-card", spec=spec), ladder_procedure(spec), small_card)
    predicted = [t for t in sim.trials if t.state == "predicted"]
    assert predicted and all(t.gpus == 0 and t.end == t.start for t in predicted)
    for t in sim.trials:
        if t.state == "oom":
            assert t.end - t.start < 15 * 60


def test_deterministic() -> None:
    a = simulate(SWEEP, ladder_procedure(SWEEP.spec), COST)
    b = simulate(SWEEP, ladder_procedure(SWEEP.spec), COST)
    assert a == b


def test_fitted_resources_take_the_fewest_gpus_that_fit() -> None:
    fitted = fitted_resources(SWEEP.spec, CostModel(recipe=PAPER_RECIPE))
    workers = {m: o.workers for m, o in fitted.resources.overrides.items()}
    assert workers[PAPER_LADDER[0]] == 1
    assert workers[PAPER_LADDER[0]] <= workers[PAPER_LADDER[1]] <= workers[PAPER_LADDER[2]]
    grid = expand(Sweep(name="fit", spec=fitted))
    cost = CostModel(recipe=PAPER_RECIPE)
    for trial in grid.all_trials():
        if trial.model != PAPER_LADDER[-1] and trial.lane.method is not Method.QLORA:
            assert cost.cost(fitted, trial).fits


# -- the schedule against its limits, on drawn sweeps ------------------------------------------


@dataclass(frozen=True)
class DrawnCosts:
    """A stand-in cost model for drawn sweeps: each (lane, rung) has a drawn duration, and the
    rungs in `oom` do not fit the device (the probe finds it in 7 % of the duration)."""

    cluster: Cluster
    seconds: dict[tuple[int, int], float]
    oom: frozenset[tuple[int, int]]

    def cost(self, spec: SweepSpec, trial: GridPoint) -> TrialCost:
        run = self.seconds[(trial.lane.index, trial.model_index)]
        fits = (trial.lane.index, trial.model_index) not in self.oom
        return TrialCost(fits, 0, run_seconds=run, step_seconds=run / 100,
                         epoch_seconds=run / 10, startup_seconds=run / 20)


@st.composite
def drawn_sweeps(draw: st.DrawFn) -> tuple[Sweep, DrawnCosts]:
    rungs = draw(st.integers(1, 4))
    lanes = draw(st.integers(1, 8))
    cluster = Cluster(nodes=draw(st.integers(1, 2)), gpus_per_node=draw(st.sampled_from([2, 4, 8])),
                      cpus_per_node=draw(st.integers(2, 16)))
    workers = [draw(st.sampled_from([1, 2, 4, 8, 16])) for _ in range(rungs)]
    ladder = list(PAPER_LADDER[:rungs])
    spec = SweepSpec.model_validate({
        "ladder": ladder, "methods": ["lora"], "adapters": [{"rank": 8, "alphas": [16]}],
        "axes": {"seed": list(range(lanes))},
        "resources": {"workers": workers[-1], "cpusPerWorker": draw(st.integers(1, 2)),
                      "overrides": {m: {"workers": w} for m, w in zip(ladder, workers,
                                                                       strict=True)}},
        "parallelism": draw(st.integers(1, 12)),
        "escalation": {"onOOM": draw(st.sampled_from(["stop-lane", "continue"])),
                       "predictOOM": False},
    })
    cells = [(lane, rung) for lane in range(lanes) for rung in range(rungs)]
    seconds = {cell: float(draw(st.integers(1, 1000))) for cell in cells}
    oom = frozenset(cell for cell in cells if draw(st.integers(0, 3)) == 0)
    return Sweep(name="drawn", spec=spec), DrawnCosts(cluster, seconds, oom)


def must_run(sweep: Sweep, costs: DrawnCosts) -> set[tuple[int, int]]:
    """The (lane, rung) cells the escalation rules launch, worked out by hand."""
    total = costs.cluster.capacity
    stop = sweep.spec.escalation.on_oom is OnOOM.STOP_LANE
    cells: set[tuple[int, int]] = set()
    for lane in expand(sweep).lanes:
        for trial in expand(sweep).trials[lane.name]:
            if not demand(trial).fits(total):
                break  # unschedulable: the lane fails
            cells.add((lane.index, trial.model_index))
            if stop and (lane.index, trial.model_index) in costs.oom:
                break
    return cells


@settings(max_examples=60, deadline=None)
@given(drawn_sweeps())
def test_the_schedule_stays_within_capacity_and_never_climbs_past_an_oom(
    drawn: tuple[Sweep, DrawnCosts],
) -> None:
    sweep, costs = drawn
    sim = simulate(sweep, ladder_procedure(sweep.spec), costs)
    launched = [t for t in sim.trials if t.state in ("succeeded", "oom")]
    lane_index = {lane.name: lane.index for lane in expand(sweep).lanes}
    cells = [(lane_index[t.lane], t.model_index) for t in launched]
    # Each trial that must run is launched once; none past its lane's first OOM (stop-lane).
    assert sorted(cells) == sorted(must_run(sweep, costs))
    # At no moment more GPUs, CPUs or trials than the cluster and `parallelism` allow
    # (an end at the same instant as a start frees its capacity first).
    events = sorted([(t.start, 1, t) for t in launched] + [(t.end, -1, t) for t in launched],
                    key=lambda e: (e[0], e[1]))
    total = costs.cluster.capacity
    gpus = cpus = running = 0
    for _, sign, t in events:
        gpus, cpus, running = gpus + sign * t.gpus, cpus + sign * t.cpus, running + sign
        assert gpus <= total.gpus and cpus <= total.cpus
        assert running <= sweep.spec.parallelism
    # No schedule beats the physical limit, and the bound counts the same trials.
    bound = lower_bound(sweep, ladder_procedure(sweep.spec), costs)
    assert bound.must_run == len(launched)
    assert sim.makespan_seconds >= bound.seconds * (1 - 1e-9)


def test_the_bound_is_tight_on_a_sweep_with_one_schedule() -> None:
    """Two lanes of one-GPU rungs on one GPU: the work term is exactly the makespan."""
    spec = SweepSpec.model_validate({
        "ladder": list(PAPER_LADDER[:2]), "methods": ["lora"],
        "adapters": [{"rank": 8, "alphas": [16]}], "axes": {"seed": [0, 1]},
        "resources": {"workers": 1}, "parallelism": 4,
        "escalation": {"predictOOM": False},
    })
    sweep = Sweep(name="one-gpu", spec=spec)
    costs = DrawnCosts(Cluster(nodes=1, gpus_per_node=1),
                       {(0, 0): 10.0, (0, 1): 20.0, (1, 0): 30.0, (1, 1): 40.0},
                       frozenset({(1, 1)}))
    bound = lower_bound(sweep, ladder_procedure(spec), costs)
    # Lane 1's second rung is its OOM: found by the probe (startup + 2 steps = 2.8 s).
    assert bound.must_run == 4 and bound.exclusive == 4
    assert bound.work_seconds == pytest.approx(10 + 20 + 30 + 2.8)
    assert bound.chain_seconds == pytest.approx(bound.work_seconds)  # all exclusive
    assert simulate(sweep, ladder_procedure(spec), costs).makespan_seconds == pytest.approx(
        bound.seconds)


def test_ladder_climbs_the_paper_grid_within_ten_percent_of_its_limit() -> None:
    """Issue 16's goal on the paper grid (docs/benchmarks.md has the 500-lane figure)."""
    for cost in (COST, CostModel(recipe=PAPER_RECIPE)):
        spec = SWEEP.spec if cost is COST else fitted_resources(SWEEP.spec, cost)
        sweep = Sweep(name=SWEEP.name, spec=spec)
        sim = simulate(sweep, ladder_procedure(spec), cost)
        bound = lower_bound(sweep, ladder_procedure(spec), cost)
        assert bound.seconds <= sim.makespan_seconds <= 1.10 * bound.seconds
