"""Where a trial's time to first step goes: wall-clock marks from the driver and rank 0.

The driver (`python -m worker run`) marks when its process started, when its imports were
done, the data loaded, Ray joined and the trainer built; rank 0 marks when its process
started, when the training loop was entered, its libraries imported, the model built, the
data encoded and the probe step done. Rank 0 logs the breakdown in one line at its first step
(`STARTUP_PREFIX ...`, on stderr: it reaches the Ray job's logs), which
tests/bench/bench_first_step.py reads. The marks are `time.time()` on one machine or on
several (a cluster's clocks agree to well under the phases' seconds).
"""

from __future__ import annotations

import json
import sys
import time

STARTUP_PREFIX = "ladder-startup"

# (phase, the mark that ends it) in order; a phase lasts from the previous mark present.
PHASES: tuple[tuple[str, str], ...] = (
    ("job submission to driver process", "driver_process"),
    ("driver interpreter start", "driver_main"),
    ("driver imports (torch, worker)", "driver_imports"),
    ("dataset", "dataset"),
    ("attempt marked running (store)", "marked_running"),
    ("ray.init (join the runtime)", "ray_joined"),
    ("trainer built (ray.train.torch); in the driver: hand-over", "trainer"),
    ("Ray Train controller + worker group", "rank_process"),
    ("rank 0 process to training loop", "rank_loop"),
    ("rank 0 imports (accelerate, transformers, peft, ...)", "rank_imports"),
    ("model build", "model"),
    ("tokenize data", "encoded"),
    ("probe step", "first_step"),
)

_MARKS: dict[str, float] = {}


def mark(name: str, at: float | None = None) -> None:
    """Remember when `name` happened in this process (now, unless `at` is given)."""
    _MARKS[name] = time.time() if at is None else at


def marks() -> dict[str, float]:
    return dict(_MARKS)


def process_started() -> float:
    """When this process started (wall clock), from /proc; now if that cannot be read."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:
        return time.time()


def breakdown(marks: dict[str, float], start: float) -> list[tuple[str, float]]:
    """Seconds per phase, from `start` (the driver process's start, or a launch time)."""
    rows, previous = [], start
    for phase, name in PHASES:
        if name in marks:
            rows.append((phase, max(0.0, marks[name] - previous)))
            previous = max(previous, marks[name])
    return rows


def log_startup(marks: dict[str, float]) -> None:
    """One line with every mark (JSON), for the log and the benchmark."""
    print(f"{STARTUP_PREFIX} {json.dumps(marks, sort_keys=True)}", file=sys.stderr, flush=True)


def parse_startup(text: str) -> dict[str, float] | None:
    """The marks of the last startup line in a log, or None."""
    found = None
    for line in text.splitlines():
        _, sep, rest = line.partition(f"{STARTUP_PREFIX} ")
        if sep and rest.startswith("{"):
            try:
                found = {k: float(v) for k, v in json.loads(rest).items()}
            except (ValueError, AttributeError):
                continue
    return found
