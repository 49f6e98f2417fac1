"""The test tiers: `slow` is added here to whatever takes minutes, so that

    python -m pytest -m "not slow"   # the contributor's fast loop
    python -m pytest                 # everything (what CI runs, README's test command)

Both run in two pytest-xdist workers (`-n 2` in pyproject.toml's addopts; `-n 0` for one).

Where the CPU goes: `LADDER_TEST_CPU_LOG=cpu.jsonl python -m pytest -n 0 ...` appends one line
per test with its wall seconds and the CPU-seconds the whole machine spent meanwhile (every
process it started, Ray's daemons and servers included: on 2 cores CPU, not waiting, bounds
the suite). Run it in one process on a quiet machine, or the figures mix.

A test is slow when it runs whole sweeps with real training, a real cluster, containers or
long fault injection: the markers in SLOW_MARKERS, or a directory in SLOW_DIRS. A single slow
test elsewhere carries `@pytest.mark.slow` itself. Nothing is ever skipped by the tiers: plain
`pytest` deselects nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cpu import machine_cpu_seconds

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


# pytest-xdist (`-n 2`): a test module is one work unit, so that a module-scoped fixture (the
# observability tests' sweep, the fork server, the transformers server, a worker package's Ray
# head) is set up once, not once per worker. The tests of the Kubernetes servers are one unit
# across modules, run on one worker, in order, as in a serial run: the bare control plane of
# tests/k8s/controlplane (fixed ports and state directory, and a test that restarts it) and the
# real test cluster of tests/k8s/cluster (one network namespace, one address). They mostly wait
# on those servers, so the other worker runs the tests that train meanwhile; everything else
# starts what it needs on free ports and runs on either. The scheduler (in the controlling
# process) sees node ids only, so the group is folders; collection checks that every user of
# those servers lives in one.
SERIAL_GROUPS = (("tests/k8s/", "kubernetes"), ("tests/reliability/", "kubernetes"))
CONTROL_PLANE_FIXTURE = "control_plane"  # tests/k8s/conftest.py


def serial_group(nodeid: str) -> str | None:
    return next((group for prefix, group in SERIAL_GROUPS if nodeid.startswith(prefix)), None)


def _check_group(item: pytest.Item) -> None:
    uses_servers = (item.get_closest_marker("realcluster") is not None
                    or CONTROL_PLANE_FIXTURE in getattr(item, "fixturenames", ()))
    if uses_servers and serial_group(item.nodeid) is None:
        raise pytest.UsageError(f"{item.nodeid}: a test of the kube-apiserver or the test cluster "
                                "must live in tests/k8s or tests/reliability (tests/conftest.py "
                                "SERIAL_GROUPS)")


def work_unit(nodeid: str) -> str:
    """The xdist work unit of a test: its serial group, else its module."""
    return serial_group(nodeid) or nodeid.split("::", 1)[0]


def run_order(item: pytest.Item) -> tuple[bool, bool]:
    """A worker's collection order, which is the order units are handed out in: the
    Kubernetes unit (the longest) first, then the modules with slow tests, then the rest."""
    return serial_group(item.nodeid) is None, "slow" not in item.keywords


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") not in ("load", "loadgroup"):
        return None  # an explicit other mode (loadfile, each, ...) is the caller's choice
    from xdist.scheduler import LoadScopeScheduling

    class SharedServerScheduling(LoadScopeScheduling):
        """Work units per `work_unit`, handed out in the workers' collection order
        (`run_order`), not xdist's largest-unit-first (a unit of one 4-minute test would go
        last)."""

        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False
    return SharedServerScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow(item) and "slow" not in item.keywords:
            item.add_marker(pytest.mark.slow)
        _check_group(item)
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: hand out the long units first
        items.sort(key=run_order)


CPU_LOG_ENV = "LADDER_TEST_CPU_LOG"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    log_path = os.environ.get(CPU_LOG_ENV)
    if not log_path:  # off by default: no /proc read around every test
        yield
        return
    wall, cpu = time.monotonic(), machine_cpu_seconds()
    yield
    line = {"nodeid": item.nodeid, "wall_seconds": round(time.monotonic() - wall, 2),
            "cpu_seconds": round(machine_cpu_seconds() - cpu, 2)}
    with open(log_path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
