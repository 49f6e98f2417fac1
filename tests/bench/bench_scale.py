"""Benchmark: the controller's memory and pass time as the grid and the trials in flight grow.

A benchmark, not a timed test: run it as a script and read the numbers (docs/benchmarks.md,
"Controller memory and pass time as trials grow").

    python tests/bench/bench_scale.py [--trials 1000 10000 100000] [--in-flight 10 100 1000]
                                      [--repeat 3] [--json bench-results/scale.json] [--quick]
                                      [--plot PNG]

Each cell (potential trials x trials in flight) runs in a fresh Python process, so its memory
is its own. The sweep is the paper grid's 25 lanes per axes point times as many axes points
(DSS weights x seeds x learning rates) as the trial count needs, four models each, one GPU per
trial, `parallelism` = the trials in flight. In that process:

1. the controller's first pass (`Reconciler.reconcile`: the grid expanded and cached, the
   sweep stored, K RayJobs created, K attempts written) on an in-memory stand-in of the
   Kubernetes API (`FakeCluster` of tests/unit/operator, which deep-copies every object it
   returns, as a client parses them) and a SQLite store in a temporary folder;
2. every RayJob is marked running and one pass records that (K writes, not timed);
3. `--repeat` steady passes, timed (wall and CPU): read the Sweep and its RayJobs, read the
   store's attempts, `plan`, patch the status; nothing is launched (no room under
   `parallelism`);
4. one more steady pass under tracemalloc: its peak of Python allocations;
5. the process's RSS now, less its RSS after the imports: what the controller holds (the
   cached grid, the store's engine, the stand-in's K RayJobs);
6. `plan` alone over the same state (`--repeat` calls, median): the core's share of a pass.

A cell whose K exceeds the grid's lanes (a lane runs one trial at a time) is left out.
The history is only the K running attempts (a long-running sweep's store also holds its
finished attempts, which the store read of each pass returns).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_JSON = ROOT / "bench-results" / "scale.json"
LANES_PER_POINT = 25  # the paper grid: full, then LoRA and QLoRA for 12 rank/alpha pairs
DSS = (0.5, 0.6, 0.7, 0.8, 1.0)


def rss_mib() -> float:
    """This process's resident set now (Linux /proc), in MiB."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def axes_for(points: int) -> dict[str, Any]:
    """DSS weights x seeds x learning rates making `points` axes points (each list <= 32)."""
    dss = 5 if points % 5 == 0 else 1
    rest = points // dss
    seeds = min(20, rest)
    while rest % seeds:
        seeds -= 1
    rates = rest // seeds
    if rates > 32:
        raise ValueError(f"{points} axes points do not factor into the axes' limits")
    axes: dict[str, Any] = {"dssAlpha": list(DSS[:dss]), "seed": list(range(seeds))}
    if rates > 1:
        axes["learningRate"] = [round(1e-5 * (i + 1), 7) for i in range(rates)]
    return axes


def spec_for(trials: int, in_flight: int) -> dict[str, Any]:
    from orchestrator.core.spec import PAPER_LADDER

    per_point = LANES_PER_POINT * len(PAPER_LADDER)
    if trials % per_point:
        raise ValueError(f"--trials must be a multiple of {per_point}")
    return {
        "ladder": list(PAPER_LADDER),
        "axes": axes_for(trials // per_point),
        "resources": {"workers": 1},
        "parallelism": in_flight,
        "maxTrials": trials,
    }


def cell(trials: int, in_flight: int, repeat: int, *, freeze: bool = True) -> dict[str, Any]:
    """One measurement, in this process (see the module docstring)."""
    from orchestrator import store
    from orchestrator.core.escalation import AttemptObservation
    from orchestrator.core.grid import expand
    from orchestrator.core.lifecycle import TrialState
    from orchestrator.core.plan import Observed, plan
    from orchestrator.core.scheduler import Capacity
    from orchestrator.core.spec import Sweep, SweepSpec
    from orchestrator.operator import reconcile
    from orchestrator.operator.reconcile import Reconciler, keep_out_of_collections
    from tests.unit.operator.test_reconcile import NS, FakeCluster

    if not freeze:  # the controller as it was: its cached grid walked by full collections
        reconcile.FREEZE_GRID_TRIALS = 2**62
    gc.collect()
    baseline = rss_mib()
    spec = spec_for(trials, in_flight)
    out: dict[str, Any] = {"trials": trials, "in_flight": in_flight, "freeze": freeze}
    with tempfile.TemporaryDirectory() as folder:
        sessions = store.open_store(f"sqlite:///{Path(folder) / 'scale.db'}")
        cluster = FakeCluster()
        cluster.add_sweep("scale", spec)
        reconciler = Reconciler(cluster, sessions)
        started = time.perf_counter()
        first = reconciler.reconcile(NS, "scale")
        out["first_pass_s"] = time.perf_counter() - started
        assert first is not None and len(first.launched) == in_flight, first
        for job in cluster.rayjobs.values():
            job["status"] = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
        reconciler.reconcile(NS, "scale")  # records them running

        walls, cpus = [], []
        for _ in range(repeat):
            gc.collect()
            started, started_cpu = time.perf_counter(), time.process_time()
            result = reconciler.reconcile(NS, "scale")
            walls.append(time.perf_counter() - started)
            cpus.append(time.process_time() - started_cpu)
            assert result is not None and not result.launched
            assert result.plan is not None
            counts = result.plan.status.counts
            assert counts[TrialState.RUNNING] == in_flight, counts
        out["pass_ms"] = statistics.median(walls) * 1000
        out["pass_cpu_ms"] = statistics.median(cpus) * 1000
        gc.collect()
        tracemalloc.start()
        reconciler.reconcile(NS, "scale")
        out["pass_traced_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        gc.collect()
        out["held_rss_mib"] = rss_mib() - baseline
        out["rss_mib"] = rss_mib()

        # The core alone, over the same state: K lanes with their first rung running.
        sweep = Sweep(name="scale", spec=SweepSpec.model_validate(spec))
        grid = expand(sweep)
        if freeze:
            keep_out_of_collections(trials)  # as the controller does with its cached grid
        attempts = {}
        for lane in grid.lanes[:in_flight]:
            head = grid.trials[lane.name][0]
            attempts[head.trial_id] = [AttemptObservation(head.trial_id, 1, TrialState.RUNNING)]
        observed = Observed(attempts=attempts, capacity=Capacity(gpus=10**6, cpus=10**6))
        plans, plans_cpu = [], []
        for _ in range(repeat):
            started, started_cpu = time.perf_counter(), time.process_time()
            decided = plan(grid, sweep.spec, observed)
            plans.append(time.perf_counter() - started)
            plans_cpu.append(time.process_time() - started_cpu)
            assert not decided.launches and decided.status.counts[TrialState.RUNNING] == in_flight
        out["plan_ms"] = statistics.median(plans) * 1000
        out["plan_cpu_ms"] = statistics.median(plans_cpu) * 1000
        store.dispose_stores()
    return out


def machine() -> str:
    """`lscpu`'s model name, the CPU count and the load."""
    model = platform.processor() or platform.machine()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                      if line.startswith("Model name")), model)
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| potential trials | in flight | steady pass, wall (CPU) | "
             "`plan` alone, wall (CPU) | first pass (expand + K launches) | "
             "pass peak (tracemalloc) | held (RSS over imports) | process RSS |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        frozen = "" if r["freeze"] else " (grid not frozen)"
        lines.append(
            f"| {r['trials']:,}{frozen} | {r['in_flight']:,} | {r['pass_ms']:,.0f} ms "
            f"({r['pass_cpu_ms']:,.0f}) | {r['plan_ms']:,.1f} ms ({r['plan_cpu_ms']:,.1f}) | "
            f"{r['first_pass_s']:.2f} s | "
            f"{r['pass_traced_peak_mib']:.1f} MiB | {r['held_rss_mib']:.0f} MiB | "
            f"{r['rss_mib']:.0f} MiB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--in-flight", type=int, nargs="+", default=[10, 100, 1_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--quick", action="store_true", help="1k and 10k trials, 10 and 100")
    parser.add_argument("--plot", type=Path, default=None,
                        help="also draw pass CPU and memory against the trials as a PNG "
                             "(docs/img/controller-scale.png in docs/benchmarks.md)")
    parser.add_argument("--unfrozen", type=int, nargs="*", default=[100_000],
                        help="grid sizes also measured without the controller's gc.freeze "
                             "of its grid (reconcile.keep_out_of_collections), side by side")
    parser.add_argument("--cell", type=int, nargs=2, metavar=("TRIALS", "IN_FLIGHT"),
                        help=argparse.SUPPRESS)  # one cell, in this process (the children)
    parser.add_argument("--no-freeze", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        print(json.dumps(cell(*args.cell, args.repeat, freeze=not args.no_freeze)))
        return {}
    if args.quick:
        args.trials, args.in_flight = [1_000, 10_000], [10, 100]
    rows = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    for trials in args.trials:
        for in_flight in args.in_flight:
            if in_flight > trials // 4:
                print(f"{trials} trials, {in_flight} in flight: left out (more than the "
                      f"{trials // 4} lanes)", flush=True)
                continue
            for freeze in (True, False) if trials in args.unfrozen else (True,):
                done = subprocess.run(
                    [sys.executable, __file__, "--cell", str(trials), str(in_flight),
                     "--repeat", str(args.repeat), *([] if freeze else ["--no-freeze"])],
                    capture_output=True, text=True, env=env, check=False)
                if done.returncode:
                    raise SystemExit(f"cell {trials} x {in_flight} failed:\n"
                                     f"{done.stderr[-3000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{trials:>7} trials {in_flight:>5} in flight, freeze {freeze}: pass CPU "
                      f"{row['pass_cpu_ms']:.0f} ms, plan CPU {row['plan_cpu_ms']:.1f} ms, "
                      f"held {row['held_rss_mib']:.0f} MiB", flush=True)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    result = {"machine": machine(), "load_average_after": load, "repeat": args.repeat,
              "rows": rows}
    print(f"\n{result['machine']}; load average after: {load}\n")
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    if args.plot:
        from tests.bench.figures import scale_figure

        scale_figure(result, args.plot)
    return result


if __name__ == "__main__":
    main()
