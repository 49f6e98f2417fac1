"""The makespan simulator (tests/bench/simulate.py): the real plan on simulated time."""

from __future__ import annotations

import itertools
from pathlib import Path

from orchestrator.core.grid import expand
from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import PAPER_LADDER, Sweep, load_sweep
from tests.bench.simulate import (
    LADDER_RECIPE,
    PAPER_RECIPE,
    CostModel,
    Simulation,
    fitted_resources,
    ladder_procedure,
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
