"""The machine's busy CPU time, shared by the suite's CPU log (tests/conftest.py) and the
benchmarks that count what a process tree costs (tests/bench/bench_head.py)."""

from __future__ import annotations

import os
from pathlib import Path


def machine_cpu_seconds() -> float:
    """CPU-seconds the machine has spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
