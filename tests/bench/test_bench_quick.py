"""Every benchmark in its quick (or dry) mode: they still run and produce sane figures.

Speed is not checked here (this machine's numbers mean little); docs/benchmarks.md holds the
measured figures. `pytest -m "bench and not integration"` runs in about a minute and a half;
the trial-overhead benchmark needs a Ray runtime and about two more minutes, so it is also
marked `integration`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.bench

HERE = Path(__file__).resolve().parent


def load(name: str) -> ModuleType:
    """A benchmark script as a module (tests/bench is not a package)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))  # bench_controller imports bench_plan by name
    spec = importlib.util.spec_from_file_location(f"ladder_bench_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_benchmark(tmp_path: Path) -> None:
    r = load("bench_step").main(["--quick", "--json", str(tmp_path / "step.json")])
    assert r["worker_samples_per_second"] > 0 and r["hand_samples_per_second"] > 0
    assert 0.2 < r["ratio"] < 5  # sane, not a speed check
    assert (tmp_path / "step.json").exists()


@pytest.mark.integration
def test_overhead_benchmark(tmp_path: Path) -> None:
    r = load("bench_overhead").main(["--quick", "--json", str(tmp_path / "overhead.json")])
    for key in ("time_to_first_step_seconds", "end_to_end_seconds"):
        assert r[key]["direct"] > 0 and r[key]["backend"] > 0
    assert r["runs"]["direct"][0]["status"] == r["runs"]["backend"][0]["status"] == "succeeded"


def test_controller_benchmark(tmp_path: Path) -> None:
    r = load("bench_controller").main(["--quick", "--no-postgres"])
    assert r["plan"]["trials"] == 10_000 and r["plan"]["launches"] > 0
    assert r["sqlite"]["attempt_writes_per_second"] > 0
    assert r["sqlite"]["result_writes_per_second"] > 0


def test_gpu_ladder_dry_run(tmp_path: Path) -> None:
    r = load("gpu_ladder").main(["--dry", "--quick", "--out", str(tmp_path)])
    assert r is not None and r["dry"]
    assert {x["method"] for x in r["results"]} == {"full", "lora", "qlora"}
    assert all(x["status"] == "ok" and x["samples_per_second"] > 0 for x in r["results"])
    assert all(x["estimate_bytes"] > 0 and x["tflops_per_sample"] > 0 for x in r["results"])
    assert (tmp_path / "gpu_ladder_dry.json").exists()
    assert "| model | method |" in (tmp_path / "gpu_ladder_dry.md").read_text()


def test_makespan_simulation(tmp_path: Path) -> None:
    makespan = load("makespan")
    r = makespan.main(["--quick", "--json", str(tmp_path / "makespan.json"),
                       "--plot", str(tmp_path / "makespan.png")])
    assert set(r["scenarios"]) == {"A", "B", "C", "D", "E"}
    for s in r["scenarios"].values():
        assert s["speedup"] > 1
        assert s["paper"]["succeeded"] > 0 and s["ladder"]["succeeded"] > 0
        # Nothing beats the physical limit; Ladder is within issue 16's 10 % of it.
        assert 1 <= s["ladder_ratio_to_bound"] <= makespan.GOAL_RATIO
        assert s["paper_procedure_ratio_to_bound"] >= 1
        assert s["lower_bound_hours"] <= s["ladder_hours"] < s["paper_procedure_hours"]
    assert (tmp_path / "makespan.png").read_bytes().startswith(b"\x89PNG")
    written = json.loads((tmp_path / "makespan.json").read_text())
    assert written["scenarios"]["D"]["lanes"] == 100  # --quick: the synthetic grid at 100
    # A dry-run JSON of the GPU ladder is no measurement and must not be used as one.
    assert makespan.load_measured(tmp_path / "missing.json") == {}


def test_scale_benchmark(tmp_path: Path) -> None:
    scale = load("bench_scale")
    r = scale.main(["--trials", "1000", "--in-flight", "10", "--repeat", "1", "--unfrozen",
                    "1000", "--json", str(tmp_path / "scale.json")])
    assert [(row["trials"], row["in_flight"], row["freeze"]) for row in r["rows"]] == [
        (1000, 10, True), (1000, 10, False)]
    for row in r["rows"]:
        assert row["pass_cpu_ms"] > 0 and row["plan_cpu_ms"] > 0 and row["rss_mib"] > 0
    assert r["machine"] and (tmp_path / "scale.json").exists()
