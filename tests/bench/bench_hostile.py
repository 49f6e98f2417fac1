"""Benchmark: validate, expand, `plan` and one reconcile pass at the ceiling, 100,000 trials.

A benchmark, not a timed test: run it as a script and read the numbers (docs/benchmarks.md,
"Bounds at the maxTrials ceiling").

    python tests/bench/bench_hostile.py [--repeat 3]

The sweep is the largest a Sweep may be (`maxTrials` = MAX_TRIALS = 100,000): the paper's 25
lanes per axes point (full, then LoRA and QLoRA for its 12 rank/alpha pairs) times 1,000 axes
points (5 DSS loss weights x 20 seeds x 10 learning rates), four models each. Each step is
timed (wall, best of --repeat) and its peak Python allocation measured with tracemalloc (a
separate run, as tracing slows the code down):

- validate: `load_sweep_text` of the manifest (what `ladder validate` does);
- expand: `grid.expand` (lanes and trials, trial ids hashed);
- plan: `plan(grid, spec, observed)` with nothing run yet (every lane head decided);
- reconcile: the controller's first pass (fake cluster, SQLite store in a temp dir;
  parallelism 8, so 8 RayJobs) and a second pass with nothing new (the steady state).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from orchestrator import store  # noqa: E402
from orchestrator.core.grid import expand  # noqa: E402
from orchestrator.core.plan import Observed, plan  # noqa: E402
from orchestrator.core.scheduler import Capacity  # noqa: E402
from orchestrator.core.spec import MAX_TRIALS, PAPER_LADDER, load_sweep_text  # noqa: E402
from orchestrator.operator.reconcile import Reconciler  # noqa: E402
from tests.unit.operator.test_reconcile import NS, FakeCluster  # noqa: E402

SPEC: dict[str, Any] = {
    "ladder": list(PAPER_LADDER),
    "axes": {"dssAlpha": [0.5, 0.6, 0.7, 0.8, 1.0], "seed": list(range(20)),
             "learningRate": [round(1e-5 * (i + 1), 7) for i in range(10)]},
    "resources": {"workers": 1},
    "parallelism": 8,
    "maxTrials": MAX_TRIALS,
}
MANIFEST = yaml.safe_dump({"apiVersion": "ladder.dev/v1alpha1", "kind": "Sweep",
                           "metadata": {"name": "ceiling"}, "spec": SPEC})


def measure(step: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """(best wall seconds, peak traced MiB) of `step`."""
    times = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    gc.collect()
    tracemalloc.start()
    step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return min(times), peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    sweep = load_sweep_text(MANIFEST)
    grid = expand(sweep)
    assert len(grid.all_trials()) == sweep.spec.potential_trials == MAX_TRIALS
    observed = Observed(attempts={}, capacity=Capacity(gpus=10**6, cpus=10**6))
    rows: list[tuple[str, float, float]] = []
    rows.append(("validate", *measure(lambda: load_sweep_text(MANIFEST), args.repeat)))
    rows.append(("expand", *measure(lambda: expand(sweep), args.repeat)))
    rows.append(("plan", *measure(lambda: plan(grid, sweep.spec, observed), args.repeat)))

    with tempfile.TemporaryDirectory() as folder:
        def first_pass() -> None:
            store.dispose_stores()
            db = Path(folder) / f"l{time.monotonic_ns()}.db"
            sessions = store.open_store(f"sqlite:///{db}")
            cluster = FakeCluster()
            cluster.add_sweep("ceiling", SPEC)
            result = Reconciler(cluster, sessions).reconcile(NS, "ceiling")
            assert result is not None and len(result.launched) == 8, result

        rows.append(("reconcile, first pass", *measure(first_pass, args.repeat)))

        store.dispose_stores()
        sessions = store.open_store(f"sqlite:///{Path(folder) / 'steady.db'}")
        cluster = FakeCluster()
        cluster.add_sweep("ceiling", SPEC)
        reconciler = Reconciler(cluster, sessions)
        reconciler.reconcile(NS, "ceiling")

        def steady_pass() -> None:
            result = reconciler.reconcile(NS, "ceiling")
            assert result is not None and result.launched == []

        rows.append(("reconcile, steady pass", *measure(steady_pass, args.repeat)))
        store.dispose_stores()

    print(f"{MAX_TRIALS} trials ({len(grid.lanes)} lanes x {len(sweep.spec.ladder)} models); "
          f"Python {platform.python_version()}, {platform.machine()}, "
          f"{platform.processor() or platform.platform()}")
    print(f"{'step':<24} {'wall (best)':>12} {'peak traced':>12}")
    for name, seconds, mib in rows:
        print(f"{name:<24} {seconds:>10.2f} s {mib:>9.0f} MiB")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process max RSS {rss:.0f} MiB; {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
