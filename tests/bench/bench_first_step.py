"""Benchmark: where a tiny trial's time to first step goes, through the local backend.

    python tests/bench/bench_first_step.py [--repeat 3] [--methods full lora qlora]

Starts the Ray runtime `ladder run` starts (`LocalRayBackend` with its private head), runs one
trial to warm it, then launches tiny trials (ladder/t5-tiny-s, 1 epoch of 12 examples, fp32
on CPU) one at a time as Ray jobs, exactly as `ladder run` does. For each it reads the
startup marks the worker logs at its first step (worker/phases.py) from the job's logs and
prints the seconds per phase, from the launch (`submit_job`) to the end of the probe step:
job submission, the driver's imports, ray.init, Ray Train's controller and worker group,
rank 0's imports, model build, tokenization, probe step. The figure is the median over
`--repeat` trials per method. Results: JSON with --json.

Side by side (`--fork-server both`, the default): the same trials with the local backend's
warm fork server (worker/forkserver.py, what `ladder run` uses) and without it
(LADDER_FORK_SERVER=0: a fresh process per trial, as on a cluster), each on its own runtime.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from orchestrator.core.spec import Dataset, ResourceShape, Training  # noqa: E402
from orchestrator.core.worker_contract import AttemptSpec  # noqa: E402
from tests.bench.output import emit  # noqa: E402
from worker.phases import PHASES, breakdown, parse_startup  # noqa: E402

TOTAL = "time to first step"


def tiny_trial(output_dir: Path, trial_id: str, method: str, workers: int = 1) -> AttemptSpec:
    adapter = {"rank": 8, "alpha": 16} if method != "full" else {}
    return AttemptSpec(
        sweep="bench-first-step", trial_id=trial_id, lane=f"{method}-bench", attempt=1,
        model="ladder/t5-tiny-s", method=method, **adapter,
        training=Training(epochs=1, learning_rate=1e-3, batch_size=4, precision="fp32",
                          init="random", max_input_tokens=64, max_output_tokens=32,
                          generate_limit=1),
        dataset=Dataset(size=16, preamble="short", eval_fraction=0.25),
        resources=ResourceShape(workers=workers, gpus_per_worker=0, cpus_per_worker=1),
        output_dir=str(output_dir),
    )


def run_one(backend: Any, spec: AttemptSpec, timeout: float = 600.0) -> dict[str, Any]:
    """Launch one trial, wait for it, and return its phases (seconds) and status."""
    from orchestrator.backends.local import job_id

    launched = time.time()
    backend.launch(spec)
    deadline = time.monotonic() + timeout
    outcome = None
    while outcome is None:
        finished = backend.poll()
        outcome = finished[0] if finished else None
        if outcome is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"trial {spec.trial_id} did not finish in {timeout:.0f} s")
            time.sleep(0.1)
    end_to_end = time.time() - launched
    logs = backend._client.get_job_logs(job_id(spec))
    marks = parse_startup(logs)
    if marks is None or outcome.result is None:
        raise RuntimeError(f"trial {spec.trial_id} ended {outcome.state} without its startup "
                           f"line: {outcome.error}\n{logs[-3000:]}")
    phases = dict(breakdown(marks, launched))
    phases[TOTAL] = marks["first_step"] - launched
    return {"method": spec.method.value, "status": outcome.result.status.value,
            "end_to_end_seconds": end_to_end, "phases": phases}


MODES = {"fork server": "1", "fresh process": "0"}


def run(repeat: int, methods: list[str], fork_server: bool = True,
        workers: int = 1) -> dict[str, Any]:
    from orchestrator.backends.local import LocalRayBackend
    from orchestrator.core.names import FORK_SERVER_ENV
    from orchestrator.store import migrate

    os.environ.pop("RAY_ADDRESS", None)
    os.environ[FORK_SERVER_ENV] = "1" if fork_server else "0"
    with tempfile.TemporaryDirectory(prefix="ladder-first-step-") as tmp:
        root = Path(tmp)
        db_url = f"sqlite:///{root / 'ladder.db'}"
        migrate(db_url)
        backend = LocalRayBackend(runs_dir=root / "runs", db_url=db_url,
                                  num_cpus=max(4, 2 * workers))
        started = time.monotonic()
        backend.start()
        try:
            runtime_seconds = time.monotonic() - started
            # The first trial on a fresh runtime: its own row (cold), not in the medians.
            cold = run_one(backend, tiny_trial(root / "cold", "cold", methods[0], workers))
            runs = [run_one(backend, tiny_trial(root / f"{m}-{i}", f"{m}{i}", m, workers))
                    for i in range(repeat) for m in methods]
        finally:
            backend.stop()
    medians: dict[str, dict[str, float]] = {}
    for method in methods:
        rows = [r["phases"] for r in runs if r["method"] == method]
        names = [p for p, _ in PHASES if any(p in r for r in rows)] + [TOTAL]
        medians[method] = {p: statistics.median(r.get(p, 0.0) for r in rows) for p in names}
    return {"repeat": repeat, "methods": methods, "runtime_start_seconds": runtime_seconds,
            "fork_server": fork_server, "workers": workers,
            "cold": cold, "runs": runs, "median": medians,
            "load_average": os.getloadavg()[0]}


def report(result: dict[str, Any]) -> str:
    methods = result["methods"]
    mode = "fork server" if result.get("fork_server", True) else "fresh process"
    if result.get("workers", 1) > 1:
        mode = f"{result['workers']} Ray Train workers"
    lines = [f"Time to first step of a tiny trial (ladder/t5-tiny-s, CPU) through "
             f"LocalRayBackend ({mode}) on a warm runtime; median of {result['repeat']} per method "
             f"(runtime started in {result['runtime_start_seconds']:.1f} s, not counted; "
             f"load average {result['load_average']:.1f})",
             f"{'phase':<54}" + "".join(f"{m:>10}" for m in methods)]
    for phase in result["median"][methods[0]]:
        lines.append(f"{phase:<54}" + "".join(
            f"{result['median'][m].get(phase, 0.0):>9.1f}s" for m in methods))
    cold = result["cold"]
    lines.append(f"(the first trial on the fresh runtime, {cold['method']}: "
                 f"{cold['phases'][TOTAL]:.1f} s to first step)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["full", "lora", "qlora"],
                        choices=["full", "lora", "qlora"])
    parser.add_argument("--fork-server", choices=["both", "on", "off"], default="both",
                        help="with the warm fork server, without it, or both side by side")
    parser.add_argument("--workers", type=int, default=1,
                        help="workers per trial (more than 1: Ray Train's worker group, DDP)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None,
                        help="also draw the phases as stacked bars in a PNG "
                             "(docs/img/first-step.png in docs/benchmarks.md)")
    args = parser.parse_args(argv)
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.fork_server]
    results = [run(args.repeat, args.methods, fork_server=m, workers=args.workers)
               for m in modes]
    result = results[0] if len(results) == 1 else {
        "runs_by_mode": {("fork server" if r["fork_server"] else "fresh process"): r
                         for r in results}}
    emit("\n\n".join(report(r) for r in results), result, args.json)
    if args.plot:
        from tests.bench.figures import first_step_figure

        first_step_figure(result, TOTAL, args.plot)
    return result


if __name__ == "__main__":
    main()
