"""Benchmark: what a trial costs around its training, run directly and through the backend.

    python tests/bench/bench_overhead.py [--repeat 1] [--gpus 0]

One short trial (ladder/t5-tiny-s, full fine-tuning, 1 epoch of 12 examples, fp32 on CPU)
runs (a) as `python -m worker run --trial FILE` in a fresh process, which starts its own Ray
runtime, and (b) through `LocalRayBackend` (orchestrator/backends/local.py) as a Ray job on a
Ray runtime started beforehand (warm), the way `ladder run` runs every trial. For each: time
to first step (from the launch to the end of the worker's probe step) and end to end (launch
to the result in hand). The ratio backend/direct is the backend's overhead (below 1: the warm
runtime saves more than the job submission costs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from orchestrator.backends.ray_head import join_head_env, restore_env, start_head  # noqa: E402
from orchestrator.core.spec import Dataset, ResourceShape, Training  # noqa: E402
from orchestrator.core.worker_contract import AttemptResult, AttemptSpec  # noqa: E402
from orchestrator.files import write_trial  # noqa: E402
from tests.bench.output import emit  # noqa: E402


def short_trial(output_dir: Path, trial_id: str, gpus: int = 0) -> AttemptSpec:
    return AttemptSpec(
        sweep="bench-overhead", trial_id=trial_id, lane="full-dss0.5-seed0",
        model="ladder/t5-tiny-s", method="full",
        training=Training(
            epochs=1, learning_rate=1e-3, batch_size=4, precision="fp32" if not gpus else "bf16",
            init="random", max_input_tokens=64, max_output_tokens=32, generate_limit=1,
        ),
        dataset=Dataset(size=16, preamble="short", eval_fraction=0.25),
        resources=ResourceShape(workers=1, gpus_per_worker=gpus, cpus_per_worker=1),
        output_dir=str(output_dir),
    )


def _first_step_after(result: AttemptResult, launched_at: float) -> float | None:
    if result.started_at is None or result.time_to_first_step_seconds is None:
        return None
    return result.started_at.timestamp() + result.time_to_first_step_seconds - launched_at


def run_direct(spec: AttemptSpec) -> dict[str, Any]:
    path = write_trial(spec, Path(spec.output_dir) / "trial.json")
    env = {k: v for k, v in os.environ.items() if k not in ("LADDER_DB_URL", "RAY_ADDRESS")}
    launched = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--trial", str(path)], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600,
    )
    end_to_end = time.time() - launched
    result = AttemptResult.from_output(done.stdout)
    if result is None or done.returncode != 0:
        raise RuntimeError(f"direct run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {"end_to_end_seconds": end_to_end,
            "time_to_first_step_seconds": _first_step_after(result, launched),
            "status": result.status.value}


def warm_up(backend: Any, timeout: float = 120.0) -> None:
    """Until the runtime accepts and finishes a job: `start()` returns before Ray's job agent
    is up, and a submission then fails with "No available agent to submit job"."""
    client = backend._client
    deadline = time.monotonic() + timeout
    while True:
        try:
            job = client.submit_job(entrypoint="true")
            break
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    while not client.get_job_status(job).is_terminal():
        time.sleep(0.2)


@contextlib.contextmanager
def private_ray_head(gpus: int) -> Iterator[str]:
    """A Ray head of our own on free ports, in a temporary directory of its own.

    `ray.init()` cannot move the dashboard agent off its fixed port (52365), so a second local
    runtime on a machine that already runs one (a colleague's `ladder run`) never gets a job
    agent and refuses every job ("No available agent to submit job"). `ray start` can.
    """
    # Token authentication (Ray's default) keeps its token in ~/.ray, which every head on the
    # machine overwrites; a private loopback head for a benchmark does without.
    head = start_head(num_cpus=4, num_gpus=gpus, auth=False)
    saved = join_head_env(head)  # its address, and no token
    try:
        yield head.address
    finally:
        head.stop()
        restore_env(saved)


def _connect(backend: Any, timeout: float = 120.0) -> None:
    """Start the backend on the private head, retrying while its dashboard comes up. Each retry
    starts from a disconnected driver: a `ray.init` that joined before the dashboard had
    registered keeps reporting no dashboard URL to every later `ray.init` of this process."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        try:
            backend.start()
            return
        except Exception:
            ray.shutdown()
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def run_backend(
    specs: list[AttemptSpec], runs_dir: Path, db_url: str, gpus: int = 0
) -> tuple[float, list[dict]]:
    from orchestrator.backends.local import LocalRayBackend

    with private_ray_head(gpus) as address:
        backend = LocalRayBackend(runs_dir=runs_dir, db_url=db_url, address=address)
        started = time.monotonic()
        _connect(backend)
        warm_up(backend)
        ray_start = time.monotonic() - started
        rows = _launch_all(backend, specs)
    return ray_start, rows


def _launch_all(backend: Any, specs: list[AttemptSpec]) -> list[dict]:
    rows = []
    try:
        for spec in specs:
            launched = time.time()
            backend.launch(spec)
            outcome = None
            while outcome is None:
                finished = backend.poll()
                if finished:
                    outcome = finished[0]
                else:
                    time.sleep(0.1)
            end_to_end = time.time() - launched
            if outcome.result is None:
                raise RuntimeError(f"backend run failed: {outcome.error}")
            rows.append({"end_to_end_seconds": end_to_end,
                         "time_to_first_step_seconds": _first_step_after(outcome.result,
                                                                         launched),
                         "status": outcome.result.status.value})
    finally:
        import ray

        ray.shutdown()
    return rows


def run(repeat: int = 1, gpus: int = 0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ladder-bench-") as tmp:
        root = Path(tmp)
        direct = [run_direct(short_trial(root / f"direct-{i}", f"direct{i}", gpus))
                  for i in range(repeat)]
        from orchestrator.store import migrate

        db_url = f"sqlite:///{root / 'ladder.db'}"
        migrate(db_url)
        ray_start, backend = run_backend(
            [short_trial(root / f"backend-{i}", f"backend{i}", gpus) for i in range(repeat)],
            root / "runs", db_url, gpus,
        )

    def median(rows: list[dict], key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return statistics.median(values) if values else None

    result: dict[str, Any] = {"repeat": repeat, "ray_start_seconds": ray_start}
    for key in ("time_to_first_step_seconds", "end_to_end_seconds"):
        d, b = median(direct, key), median(backend, key)
        result[key] = {"direct": d, "backend": b,
                       "ratio_backend_to_direct": (b / d) if d and b else None}
    result["runs"] = {"direct": direct, "backend": backend}
    return result


def report(result: dict[str, Any]) -> str:
    lines = [f"Trial overhead: ladder/t5-tiny-s, 1 epoch on CPU, median of {result['repeat']} "
             f"(warm Ray runtime for the backend: connected and a first job run in "
             f"{result['ray_start_seconds']:.1f} s, not counted)",
             f"{'':28}{'direct (python -m worker run)':>32}{'LocalRayBackend (warm Ray)':>30}"
             f"{'ratio':>8}"]
    for key, label in (("time_to_first_step_seconds", "time to first step"),
                       ("end_to_end_seconds", "end to end")):
        row = result[key]
        ratio = row["ratio_backend_to_direct"]
        lines.append(f"{label:<28}{row['direct']:>30.1f} s{row['backend']:>28.1f} s"
                     f"{ratio:>8.2f}" if ratio else f"{label:<28} (not measured)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run each")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs for the trial (0: CPU)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(1 if args.quick else args.repeat, args.gpus)
    emit(report(result), result, args.json)
    return result


if __name__ == "__main__":
    main()
