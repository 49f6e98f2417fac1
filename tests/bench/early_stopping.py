"""Benchmark: what training.earlyStopping saves, measured on CPU and estimated for the paper grid.

    python tests/bench/early_stopping.py [--epochs 10] [--patience 2] [--min-delta 0.01]
                                         [--out bench-results]

1. Measured: a cut of examples/quickstart.yaml (one lane per method: full, LoRA r8/a16 and
   QLoRA r8/a16, on ladder/t5-tiny-s, `--epochs` epochs) runs twice through `ladder run` (the
   local backend, real CPU training), without and with `earlyStopping`, one after the
   other. Per run: wall time of the sweep and epochs trained, from the store.
2. Estimated: the loss curves Ladder recorded in the run without early stopping (the store's
   per-epoch selected eval loss) are replayed through the rule itself
   (`orchestrator.core.stopping.stopping_epoch`), giving for each method the share of its
   epochs a trial would have run. tests/bench/simulate.py then runs the paper grid
   (k8s/examples/paper-grid.yaml, Ladder's procedure and defaults, scenario A of makespan.py)
   with each trial's epochs scaled by its method's share, against the same grid without.
   The curves are tiny models on CPU over `--epochs` epochs, not FLAN-T5 over 100: the
   estimate says what the rule does to curves shaped like Ladder's own, at their scale.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for path in (ROOT, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from orchestrator.core.lifecycle import Method  # noqa: E402
from orchestrator.core.spec import EarlyStopping  # noqa: E402
from orchestrator.core.stopping import stopping_epoch  # noqa: E402


def cut(epochs: int, rule: EarlyStopping | None, name: str) -> dict[str, Any]:
    """The quickstart, one lane per method on its smallest model, `epochs` epochs (the
    quickstart's own 3 leave no room to stop early)."""
    manifest = yaml.safe_load((ROOT / "examples/quickstart.yaml").read_text())
    manifest["metadata"]["name"] = name
    spec = manifest["spec"]
    spec["ladder"] = spec["ladder"][:1]
    spec["adapters"] = spec["adapters"][:1]
    spec["training"]["epochs"] = epochs
    if rule is not None:
        spec["training"]["earlyStopping"] = {"patience": rule.patience,
                                             "minDelta": rule.min_delta}
    return manifest


def run_sweep(manifest: dict[str, Any], root: Path) -> dict[str, Any]:
    path = root / f"{manifest['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    db = f"sqlite:///{root / 'ladder.db'}"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", str(path), "--db", db,
         "--runs-dir", str(root / "runs")],
        cwd=root, capture_output=True, text=True, timeout=3600,
        env={**os.environ, "COLUMNS": "160",
             "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                           if p)})
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"ladder run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return {"wall_seconds": wall, "trials": trials(db, manifest["metadata"]["name"])}


def run_direct(manifest: dict[str, Any], root: Path) -> dict[str, Any]:
    """The same trials one after another as `python -m worker run` (the worker contract, in
    its driver process as the local backend runs one-CPU-worker trials), writing the same
    store, without a Ray runtime: for a machine too loaded to start one."""
    from orchestrator import store
    from orchestrator.core.grid import attempt_spec, expand
    from orchestrator.core.names import DB_URL_ENV, RANK_IN_DRIVER_ENV
    from orchestrator.core.spec import parse_sweep
    from orchestrator.files import write_trial

    db = f"sqlite:///{root / 'ladder.db'}"
    store.migrate(db)
    sweep = parse_sweep(manifest)
    with store.open_store(db).begin() as session:
        store.upsert_sweep(session, sweep)
    env = {**os.environ, DB_URL_ENV: db, RANK_IN_DRIVER_ENV: "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p)}
    started = time.monotonic()
    for trial in expand(sweep).all_trials():
        spec = attempt_spec(sweep, trial, attempt=1,
                          output_dir=str(root / "runs" / sweep.name / trial.trial_id))
        path = write_trial(spec, Path(spec.output_dir) / "trial.json")
        subprocess.run([sys.executable, "-m", "worker", "run", "--trial", str(path)],
                       cwd=root, env=env, capture_output=True, timeout=3600, check=False)
    return {"wall_seconds": time.monotonic() - started, "trials": trials(db, sweep.name),
            "how": "python -m worker run, one trial after another (no Ray runtime)"}


def trials(db: str, sweep: str) -> list[dict[str, Any]]:
    from orchestrator import store

    with store.open_store(db)() as session:
        rows = store.attempts(session, "", sweep, with_epochs=True)
        return [{"trial_id": r.trial_id, "method": Method(r.method).value,
                 "status": str(r.status), "epochs": r.epochs_completed,
                 "stopped_epoch": r.stopped_epoch,
                 "stop_reason": r.stop_reason.value if r.stop_reason else None,
                 "best_eval_loss": r.best_eval_loss, "wall_seconds": r.wall_seconds,
                 # trained epochs only: epoch 0 is the untuned baseline (training.baseline)
                 "curve": [e.eval_loss for e in sorted(r.epochs, key=lambda e: e.epoch)
                           if e.epoch > 0]}
                for r in rows]


def shares(curves: dict[str, list[list[float]]], rule: EarlyStopping) -> dict[str, float]:
    """Per method: the mean share of its epochs a trial runs under `rule`."""
    return {method: statistics.mean(stopping_epoch(c, rule) / len(c) for c in cs)
            for method, cs in curves.items() if cs}


def estimate(curves: dict[str, list[list[float]]], rule: EarlyStopping) -> dict[str, Any]:
    from dataclasses import replace

    from orchestrator.files import load_sweep
    from tests.bench.simulate import LADDER_RECIPE, CostModel, ladder_procedure, simulate

    share = shares(curves, rule)
    sweep = load_sweep(ROOT / "k8s/examples/paper-grid.yaml")
    base = CostModel(recipe=LADDER_RECIPE)

    def epochs_run(trial: Any, epochs: int) -> int:
        return math.ceil(epochs * share.get(trial.lane.method.value, 1.0))

    without = simulate(sweep, ladder_procedure(sweep.spec), base)
    with_rule = simulate(sweep, ladder_procedure(sweep.spec), replace(base, epochs_run=epochs_run))
    gpu_hours = [sum((t.end - t.start) * t.gpus for t in s.trials) / 3600
                 for s in (without, with_rule)]
    return {
        "share_of_epochs_by_method": share,
        "paper_grid_epochs": sweep.spec.training.epochs,
        "makespan_hours": {"without": without.makespan_hours, "with": with_rule.makespan_hours},
        "gpu_hours": {"without": gpu_hours[0], "with": gpu_hours[1]},
        "makespan_saving": 1 - with_rule.makespan_hours / without.makespan_hours,
        "gpu_hours_saving": 1 - gpu_hours[1] / gpu_hours[0],
    }


def run(epochs: int, rule: EarlyStopping, direct: bool = False) -> dict[str, Any]:
    runner = run_direct if direct else run_sweep
    with tempfile.TemporaryDirectory(prefix="ladder-early-") as tmp:
        root = Path(tmp)
        without = runner(cut(epochs, None, "es-without"), root)
        with_rule = runner(cut(epochs, rule, "es-with"), root)
    curves: dict[str, list[list[float]]] = {}
    for t in without["trials"]:
        if t["status"] == "succeeded" and len(t["curve"]) == epochs:
            curves.setdefault(t["method"], []).append(t["curve"])
    return {
        "epochs": epochs, "rule": {"patience": rule.patience, "minDelta": rule.min_delta},
        "without": without, "with": with_rule,
        "replayed_stopping_epochs": {m: [stopping_epoch(c, rule) for c in cs]
                                     for m, cs in curves.items()},
        "estimate": estimate(curves, rule),
        "load_average": os.getloadavg()[0],
    }


def report(result: dict[str, Any]) -> str:
    rule, n = result["rule"], result["epochs"]
    lines = [f"Early stopping (patience {rule['patience']}, minDelta {rule['minDelta']}), "
             f"quickstart cut: full / LoRA / QLoRA on t5-tiny-s, {n} epochs, CPU "
             f"(load average {result['load_average']:.1f})"]
    for key in ("without", "with"):
        r = result[key]
        epochs = {t["method"]: t["epochs"] for t in r["trials"]}
        lines.append(f"  {key:<8} sweep wall {r['wall_seconds']:7.1f} s; epochs trained "
                     + ", ".join(f"{m} {e}" for m, e in sorted(epochs.items()))
                     + f" (total {sum(epochs.values())} of {n * len(epochs)}); best eval loss "
                     + ", ".join(f"{t['method']} {t['best_eval_loss']:.3f}"
                                 for t in sorted(r["trials"], key=lambda t: t["method"])
                                 if t["best_eval_loss"] is not None))
    e = result["estimate"]
    lines.append("  replayed on the recorded curves: stops at "
                 + ", ".join(f"{m} {v}" for m, v in sorted(result['replayed_stopping_epochs']
                                                           .items())))
    lines.append(f"  paper grid ({e['paper_grid_epochs']} epochs, Ladder's procedure), epochs "
                 f"scaled by the replayed shares {e['share_of_epochs_by_method']}: makespan "
                 f"{e['makespan_hours']['without']:.1f} h -> {e['makespan_hours']['with']:.1f} h "
                 f"({100 * e['makespan_saving']:.0f}% less), GPU-hours "
                 f"{e['gpu_hours']['without']:.0f} -> {e['gpu_hours']['with']:.0f} "
                 f"({100 * e['gpu_hours_saving']:.0f}% less)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--min-delta", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--direct", action="store_true",
                        help="run the trials as `python -m worker run`, without `ladder run`")
    args = parser.parse_args(argv)
    result = run(args.epochs, EarlyStopping(patience=args.patience, min_delta=args.min_delta),
                 args.direct)
    print(report(result))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "early_stopping.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
