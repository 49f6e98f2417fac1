"""Benchmark: the controller at scale: one `plan` over 10,000 trials, and store writes/s.

    python tests/bench/bench_controller.py [--quick] [--postgres]

Plan: tests/bench/bench_plan.py's grid (2,500 lanes x 4 models, 1,000 attempts in flight,
1,000 lanes capped), timed over repeated calls. Store: the writes the runner and the controller
make per trial, each in its own transaction as they do: `record_attempt` (running), then
`record_result` (a terminal result with 3 epochs), on SQLite (a file) and, with `--postgres`
or where PostgreSQL server binaries are installed, on a PostgreSQL server started for the
benchmark with tests/integration/conftest.py's logic. Anchor: the plan must fit in a
reconcile loop (1 s) and the store must take writes faster than trials finish.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "tests" / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from orchestrator.ports import free_port  # noqa: E402
from tests.bench.output import emit  # noqa: E402

RECONCILE_BUDGET_MS = 1000.0


def bench_plan(lanes: int, repeat: int) -> dict[str, Any]:
    from bench_plan import build  # tests/bench/bench_plan.py

    from orchestrator.core.grid import expand
    from orchestrator.core.plan import plan

    sweep, observed = build(lanes)
    start = time.perf_counter()
    grid = expand(sweep)
    expand_ms = (time.perf_counter() - start) * 1000
    wall, cpu = [], []
    decided = None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        decided = plan(grid, sweep.spec, observed)
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    assert decided is not None
    return {
        "lanes": len(grid.lanes),
        "trials": sum(len(t) for t in grid.trials.values()),
        "expand_ms": expand_ms,
        "plan_ms_median": statistics.median(wall),
        "plan_ms_best": min(wall),
        "plan_cpu_ms_median": statistics.median(cpu),
        "launches": len(decided.launches),
        "records": len(decided.records),
        "repeat": repeat,
        "ratio_to_reconcile_budget": statistics.median(wall) / RECONCILE_BUDGET_MS,
    }


def bench_store(url: str, trials: int) -> dict[str, Any]:
    from orchestrator.core.grid import attempt_spec, expand
    from orchestrator.core.lifecycle import TrialState
    from orchestrator.core.spec import PAPER_LADDER, Sweep, SweepSpec
    from orchestrator.core.worker_contract import AttemptResult, EpochRecord
    from orchestrator.store import dispose_stores, open_store, record_attempt, record_result
    from orchestrator.store import upsert_sweep as upsert

    seeds = -(-trials // 100)
    spec = SweepSpec(ladder=list(PAPER_LADDER), axes={"seed": list(range(seeds))},
                     max_trials=100 * seeds)
    sweep = Sweep(name="bench-store", spec=spec)
    specs = [attempt_spec(sweep, t, attempt=1, output_dir="runs/x")
             for t in expand(sweep).all_trials()][:trials]
    factory = open_store(url)
    with factory.begin() as session:
        upsert(session, sweep)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    epochs = [EpochRecord(epoch=e, train_loss=1.0 / e, train_label_loss=0.5 / e,
                          train_rationale_loss=0.5 / e, eval_loss=1.1 / e, learning_rate=5e-5,
                          samples_per_second=10.0, wall_seconds=60.0) for e in (1, 2, 3)]

    start = time.perf_counter()
    for s in specs:
        with factory.begin() as session:
            record_attempt(session, s, status=TrialState.RUNNING, started_at=t0)
    attempt_seconds = time.perf_counter() - start

    start = time.perf_counter()
    for s in specs:
        result = AttemptResult.for_trial(
            s, status=TrialState.SUCCEEDED, started_at=t0, finished_at=t0 + timedelta(hours=1),
            wall_seconds=3600.0, samples_per_second=10.0, best_eval_loss=0.37, best_epoch=3,
            epochs_completed=3, epochs=epochs,
        )
        with factory.begin() as session:
            record_result(session, result)
    result_seconds = time.perf_counter() - start
    dispose_stores()
    return {
        "trials": len(specs),
        "attempt_writes_per_second": len(specs) / attempt_seconds,
        "result_writes_per_second": len(specs) / result_seconds,
    }


@contextlib.contextmanager
def postgres_server() -> Iterator[str | None]:
    """A PostgreSQL server for the benchmark, as tests/integration/conftest.py starts one; None
    where no server binaries are installed."""
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    try:
        import conftest as pg  # tests/integration/conftest.py
    finally:
        sys.path.pop(0)
    binaries = pg.find_postgres_binaries()
    if binaries is None:
        yield None
        return
    user = pg._server_user()
    root = Path(tempfile.mkdtemp(prefix="ladder-pg-"))
    data, log_file = root / "data", root / "postgres.log"
    if user is not None:
        import os
        import pwd

        account = pwd.getpwnam(user)
        os.chown(root, account.pw_uid, account.pw_gid)
    pg_ctl = [str(binaries.pg_ctl), "-D", str(data), "-l", str(log_file)]
    started = False
    try:
        pg._run(pg._as_user(user, [str(binaries.initdb), "-D", str(data), "-U",
                                   pg.POSTGRES_USER, "-A", "trust", "-E", "UTF8",
                                   "--locale=C", "-N"]), root, "initdb")
        port = free_port()
        pg._run(pg._as_user(user, [*pg_ctl, "-w", "-t", "60", "-o",
                                   f"-h 127.0.0.1 -p {port} -k {root} -F", "start"]),
                root, "pg_ctl start")
        started = True
        pg._wait_for_database(port)
        yield f"postgresql+psycopg://{pg.POSTGRES_USER}@127.0.0.1:{port}/{pg.POSTGRES_DB}"
    finally:
        if started:
            subprocess.run(pg._as_user(user, [*pg_ctl, "-m", "fast", "-w", "stop"]),
                           cwd=root, capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def run(*, quick: bool = False, postgres: bool | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "plan": bench_plan(lanes=2500, repeat=3 if quick else 20),
    }
    trials = 100 if quick else 1000
    with tempfile.TemporaryDirectory(prefix="ladder-bench-") as tmp:
        result["sqlite"] = bench_store(f"sqlite:///{Path(tmp) / 'ladder.db'}", trials)
    result["postgresql"] = None
    if postgres is not False:
        with postgres_server() as url:
            if url is not None:
                result["postgresql"] = bench_store(url, trials)
            elif postgres:
                raise RuntimeError("--postgres: no PostgreSQL server binaries found")
    return result


def report(r: dict[str, Any]) -> str:
    p = r["plan"]
    lines = [
        f"Controller scale: plan over {p['trials']:,} trials ({p['lanes']:,} lanes, 1,000 in "
        f"flight)",
        f"  expand {p['expand_ms']:.0f} ms (once per spec change); plan median "
        f"{p['plan_ms_median']:.0f} ms, best {p['plan_ms_best']:.0f} ms, CPU "
        f"{p['plan_cpu_ms_median']:.0f} ms over {p['repeat']} calls -> "
        f"{p['ratio_to_reconcile_budget']:.2f} of a 1 s reconcile budget; "
        f"{p['launches']} launches, {p['records']} records",
        f"Store writes ({r['sqlite']['trials']} trials, one transaction each):",
        f"{'':14}{'record_attempt/s':>18}{'record_result/s (3 epochs)':>30}",
    ]
    for name in ("sqlite", "postgresql"):
        s = r.get(name)
        if s is None:
            lines.append(f"{name:<14}{'(no server available)':>18}")
            continue
        lines.append(f"{name:<14}{s['attempt_writes_per_second']:>18.0f}"
                     f"{s['result_writes_per_second']:>30.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--postgres", action=argparse.BooleanOptionalAction, default=None,
                        help="require (or skip) PostgreSQL; default: when installed")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(quick=args.quick, postgres=args.postgres)
    emit(report(result), result, args.json)
    return result


if __name__ == "__main__":
    main()
