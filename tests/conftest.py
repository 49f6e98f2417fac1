"""The test tiers: `slow` is added here to whatever takes minutes, so that

    python -m pytest -m "not slow" -n 2   # the contributor's fast loop (pytest-xdist)
    python -m pytest                   # everything (what CI runs, README's test command)

A test is slow when it runs whole sweeps with real training, a real cluster, containers or
long fault injection: the markers in SLOW_MARKERS, or a directory in SLOW_DIRS. A single slow
test elsewhere carries `@pytest.mark.slow` itself. Nothing is ever skipped by the tiers: plain
`pytest` deselects nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SLOW_MARKERS = frozenset({"k8s", "realcluster", "observability", "images", "soak"})
# Real Ray jobs and Ray Train with real training, and the fault-injection rigs.
SLOW_DIRS = ("integration/sweep", "integration/worker", "reliability")


def is_slow(item: pytest.Item) -> bool:
    if SLOW_MARKERS & {mark.name for mark in item.iter_markers()}:
        return True
    if "bench" in item.keywords and "integration" in item.keywords:
        return True  # a benchmark that starts Ray (the trial-overhead bench)
    try:
        relative = Path(str(item.path)).resolve().relative_to(TESTS).as_posix()
    except ValueError:
        return False
    return any(relative.startswith(f"{d}/") for d in SLOW_DIRS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow(item) and "slow" not in item.keywords:
            item.add_marker(pytest.mark.slow)
