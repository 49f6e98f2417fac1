"""Benchmark: what one private Ray head costs the machine, in wall and CPU seconds.

    python tests/bench/bench_head.py [--repeat 3] [--json FILE]

Every `ladder run` starts one (`orchestrator.backends.ray_head.start_head`), and so do many
tests, so on a 2-core machine its CPU is time taken from training. For each round: the head's
start (until its dashboard answers), a driver joining it (`ray.init`) and 5 s of idling, and
its stop; CPU-seconds are the whole machine's busy time in each phase (/proc/stat: every Ray
daemon and worker included), so run it on a quiet machine.

Side by side, alternating: Ladder's heads as they start (no idle workers prestarted for the
first driver) and with Ray's default (`RAY_prestart_worker_first_driver=1`).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from orchestrator.backends.ray_head import (  # noqa: E402
    PRESTART_ENV,
    join_head_env,
    restore_env,
    start_head,
)
from tests.bench.output import emit  # noqa: E402
from tests.cpu import machine_cpu_seconds  # noqa: E402

IDLE_SECONDS = 5.0
MODES = {"ladder": "0", "ray default": "1"}


def one_round(prestart: str) -> dict[str, float]:
    import ray

    os.environ[PRESTART_ENV] = prestart
    cpu0, t0 = machine_cpu_seconds(), time.monotonic()
    head = start_head(num_cpus=4, num_gpus=None, auth=False)
    cpu1, t1 = machine_cpu_seconds(), time.monotonic()
    saved = join_head_env(head)  # its address, and no token: the head runs without auth
    try:
        ray.init(address=head.address, logging_level=logging.WARNING)
        time.sleep(IDLE_SECONDS)
        cpu2, t2 = machine_cpu_seconds(), time.monotonic()
    finally:
        ray.shutdown()
        head.stop()
        restore_env(saved)
    cpu3, t3 = machine_cpu_seconds(), time.monotonic()
    return {"start_seconds": t1 - t0, "start_cpu": cpu1 - cpu0,
            "driver_and_idle_cpu": cpu2 - cpu1, "stop_seconds": t3 - t2, "stop_cpu": cpu3 - cpu2,
            "total_cpu": cpu3 - cpu0}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds per mode (alternating)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    saved = os.environ.get(PRESTART_ENV)
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    try:
        for _ in range(args.repeat):
            for mode, value in MODES.items():
                runs[mode].append(one_round(value))
    finally:
        if saved is None:
            os.environ.pop(PRESTART_ENV, None)
        else:
            os.environ[PRESTART_ENV] = saved
    medians = {mode: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
               for mode, rounds in runs.items()}
    load = os.getloadavg()[0]
    lines = [f"One private Ray head (start_head, 4 logical CPUs), median of {args.repeat} per "
             f"mode, alternating; load average {load:.1f}",
             f"{'phase':<44}" + "".join(f"{mode:>14}" for mode in MODES)]
    labels = {"start_seconds": "start, until the dashboard answers (s)",
              "start_cpu": "start (CPU-s)",
              "driver_and_idle_cpu": f"driver joins, {IDLE_SECONDS:.0f} s idle (CPU-s)",
              "stop_seconds": "stop (s)", "stop_cpu": "stop (CPU-s)",
              "total_cpu": "total (CPU-s)"}
    for key, label in labels.items():
        lines.append(f"{label:<44}" + "".join(f"{medians[m][key]:>14.1f}" for m in MODES))
    result = {"repeat": args.repeat, "load_average": load, "median": medians, "runs": runs}
    emit("\n".join(lines), result, args.json)
    return result


if __name__ == "__main__":
    main()
