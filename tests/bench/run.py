"""Every Ladder benchmark with one command; figures side by side with their anchors.

    python tests/bench/run.py [--quick] [--only step overhead controller gpu makespan]
                              [--gpu] [--out bench-results]

- step:       the worker's training step vs a hand-written PyTorch loop (target ratio >= 0.95)
- overhead:   a short trial through `python -m worker run` vs through LocalRayBackend
- controller: `plan` over 10,000 trials; store writes/s on SQLite (and PostgreSQL if installed)
- gpu:        the FLAN-T5 ladder x full/LoRA/QLoRA on a GPU (`--gpu`), else its CPU dry run
- makespan:   the paper's grid simulated, the paper's procedure vs Ladder's
- checks:     GPU readiness for real (`--gpu` only): ranks on another node with their own
              disk, OOMs of each kind, per-epoch peaks (tests/bench/gpu_checks.py)

`--quick` is the CI mode (the pytest wrapper tests/bench/test_bench_quick.py runs the same
pieces). Each benchmark is also a script of its own with more options (see its docstring).
Results are written as JSON under --out; docs/benchmarks.md records the measured figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for path in (ROOT, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

BENCHES = ("step", "overhead", "controller", "gpu", "makespan", "checks")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small and fast (CI)")
    parser.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    parser.add_argument("--gpu", action="store_true",
                        help="run the GPU ladder and the step benchmark on CUDA")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    quick = ["--quick"] if args.quick else []
    results: dict[str, Any] = {}
    summary: list[tuple[str, str, str]] = []
    for name in args.only:
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        if name == "step":
            import bench_step

            extra = ["--device", "cuda", "--model", "google/flan-t5-base",
                     "--max-input-tokens", "1400", "--max-output-tokens", "1024"
                     ] if args.gpu else []
            r = bench_step.main([*quick, *extra, "--json", str(args.out / "step.json")])
            summary.append(("worker step / hand-written loop (samples/s)",
                            f"{r['worker_samples_per_second']:.2f} / "
                            f"{r['hand_samples_per_second']:.2f}",
                            f"{r['ratio']:.3f} (target >= 0.95)"))
        elif name == "overhead":
            import bench_overhead

            r = bench_overhead.main([*quick, "--gpus", "1" if args.gpu else "0",
                                     "--json", str(args.out / "overhead.json")])
            for key, label in (("time_to_first_step_seconds", "time to first step"),
                               ("end_to_end_seconds", "trial end to end")):
                row = r[key]
                summary.append((f"{label}: backend / direct (s)",
                                f"{row['backend']:.1f} / {row['direct']:.1f}",
                                f"{row['ratio_backend_to_direct']:.2f}"))
        elif name == "controller":
            import bench_controller

            r = bench_controller.main([*quick, "--json", str(args.out / "controller.json")])
            p = r["plan"]
            summary.append((f"plan over {p['trials']:,} trials (ms)",
                            f"{p['plan_ms_median']:.0f}",
                            f"{p['ratio_to_reconcile_budget']:.3f} of a 1 s reconcile"))
            for db in ("sqlite", "postgresql"):
                if r.get(db):
                    summary.append((f"{db} writes/s (attempt / result)",
                                    f"{r[db]['attempt_writes_per_second']:.0f} / "
                                    f"{r[db]['result_writes_per_second']:.0f}", "-"))
        elif name == "gpu":
            import gpu_ladder

            r = gpu_ladder.main(["--out", str(args.out)] + ([] if args.gpu else ["--dry"])
                                + (["--quick"] if args.quick and not args.gpu else []))
            assert r is not None
            ok = sum(1 for x in r["results"] if x["status"] == "ok")
            summary.append(("GPU ladder points ok" + (" (dry run, CPU)" if r["dry"] else ""),
                            f"{ok}/{len(r['results'])}", "-"))
        elif name == "makespan":
            import makespan

            gpu_json = args.out / "gpu_ladder.json"
            r = makespan.main([*quick, "--json", str(args.out / "makespan.json")]
                              + (["--gpu-json", str(gpu_json)] if gpu_json.exists() else []))
            for key, s in r["scenarios"].items():
                summary.append((f"makespan {key}: paper / Ladder / bound (h)",
                                f"{s['paper']['makespan_hours']:.1f} / "
                                f"{s['ladder']['makespan_hours']:.1f} / "
                                f"{s['lower_bound_hours']:.1f}",
                                f"{s['speedup']:.1f}x; Ladder {s['ladder_ratio_to_bound']:.3f}"
                                f" of the bound (goal <= {makespan.GOAL_RATIO})"))
        elif name == "checks":
            if not args.gpu:
                print("skipped: the GPU readiness checks need --gpu", flush=True)
                continue
            import gpu_checks

            r = gpu_checks.main(["--out", str(args.out)])
            for check, outcome in r.items():
                summary.append((f"GPU check {check}", "ok" if outcome["ok"] else "FAILED",
                                str(outcome.get("detail", ""))[:60]))
        results[name] = r
        print(f"({name}: {time.monotonic() - started:.0f} s)", flush=True)
    print("\n=== summary ===")
    width = max(len(s[0]) for s in summary) if summary else 10
    for label, figure, ratio in summary:
        print(f"{label:<{width}}  {figure:>22}  {ratio}")
    (args.out / "summary.json").write_text(json.dumps(
        [{"measure": a, "figure": b, "ratio": c} for a, b, c in summary], indent=2),
        encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
