"""Benchmark: one `plan` call over a 10,000-trial grid with 1,000 attempts in flight.

A benchmark, not a timed test: run it as a script and read the numbers.

    python tests/bench/bench_plan.py [--repeat 20] [--lanes 2500]

The grid is the paper's 25 lanes per axes point (full, then LoRA and QLoRA for 12 rank/alpha
pairs) times 100 axes points (5 DSS loss weights x 20 seeds), four models each: 2,500 lanes
and 10,000 trials. Lanes 0-999 have Small succeeded and Base running (1,000 in flight),
lanes 1000-1999 are capped at Large, the rest have not started; capacity leaves room for 100
more launches, and the XL trials of full fine-tuning are predicted to run out of memory.
"""

from __future__ import annotations

import argparse
import statistics
import time

from orchestrator.core.escalation import AttemptObservation
from orchestrator.core.grid import expand
from orchestrator.core.lifecycle import Method, OOMKind, TrialState
from orchestrator.core.plan import Observed, plan
from orchestrator.core.scheduler import Capacity
from orchestrator.core.spec import PAPER_LADDER, Sweep, SweepSpec

IN_FLIGHT = 1000
CAPPED = 1000


def build(lanes: int) -> tuple[Sweep, Observed]:
    points = -(-lanes // 25)  # axes points: 5 DSS loss weights x up to 32 seeds
    seeds = -(-points // 5)
    spec = SweepSpec(
        ladder=list(PAPER_LADDER),
        axes={"dssAlpha": [0.5, 0.6, 0.7, 0.8, 1.0], "seed": list(range(seeds))},
        resources={"workers": 1},
        parallelism=IN_FLIGHT + 100,
        max_trials=5 * seeds * 25 * len(PAPER_LADDER),
    )
    sweep = Sweep(name="bench", spec=spec)
    grid = expand(sweep)
    attempts: dict[str, list[AttemptObservation]] = {}
    for i, lane in enumerate(grid.lanes):
        small, base, large, _ = grid.trials[lane.name]
        if i < IN_FLIGHT:
            attempts[small.trial_id] = [
                AttemptObservation(small.trial_id, 1, TrialState.SUCCEEDED, best_eval_loss=0.2)
            ]
            attempts[base.trial_id] = [AttemptObservation(base.trial_id, 1, TrialState.RUNNING)]
        elif i < IN_FLIGHT + CAPPED:
            for trial in (small, base):
                attempts[trial.trial_id] = [
                    AttemptObservation(trial.trial_id, 1, TrialState.SUCCEEDED, best_eval_loss=0.1)
                ]
            attempts[large.trial_id] = [
                AttemptObservation(large.trial_id, 1, TrialState.OOM, oom_kind=OOMKind.GPU)
            ]
    predicted = frozenset(
        t.trial_id
        for t in grid.all_trials()
        if t.model == PAPER_LADDER[-1] and t.lane.method is Method.FULL
    )
    capacity = Capacity(gpus=IN_FLIGHT + 100, cpus=10 * (IN_FLIGHT + 100))
    return sweep, Observed(attempts=attempts, capacity=capacity, predicted_oom=predicted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--lanes", type=int, default=2500, help="rounded up to 125s")
    args = parser.parse_args()

    sweep, observed = build(args.lanes)
    start = time.perf_counter()
    grid = expand(sweep)
    expand_ms = (time.perf_counter() - start) * 1000
    trials = sum(len(t) for t in grid.trials.values())
    in_flight = sum(
        1 for obs in observed.attempts.values() for o in obs if not o.state.is_terminal
    )

    timings, cpu = [], []
    decided = None
    for _ in range(args.repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        decided = plan(grid, sweep.spec, observed)
        timings.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    assert decided is not None
    print(f"grid: {len(grid.lanes)} lanes, {trials} trials, {in_flight} attempts in flight")
    print(f"expand: {expand_ms:.1f} ms (once per spec change, not per plan)")
    print(
        f"plan: median {statistics.median(timings):.1f} ms, best {min(timings):.1f} ms, "
        f"worst {max(timings):.1f} ms over {args.repeat} calls "
        f"(CPU time: median {statistics.median(cpu):.1f} ms; wall time suffers on a busy machine)"
    )
    print(
        f"actions: {len(decided.launches)} launches, {len(decided.records)} records, "
        f"{len(decided.cancels)} cancels; phase {decided.status.phase.value}"
    )


if __name__ == "__main__":
    main()
