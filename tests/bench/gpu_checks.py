"""GPU readiness checks (issue 20), for real on a machine with NVIDIA GPUs.

    python tests/bench/gpu_checks.py [--only storage oom peaks] [--out bench-results]

Each check runs real trials through the worker contract (`python -m worker run`), on random-
init models (nothing downloaded), and judges the AttemptResult:

- storage (item 1): the trial's ranks on another Ray node than the driver, whose output
  directory is a disk of its own (a mount namespace with a tmpfs, as two pods have; without
  root: the same two nodes sharing the disk). One worker per GPU (two or more where the
  machine has them), each epoch reported. Before the fix every epoch's report raised
  "Unable to set up cluster storage".
- oom (item 4): a batch no card holds (flan-t5-xl, full fine-tuning, 512 examples per step)
  must end `oom/gpu` at the probe step; the same with a memory budget above the card must
  still be `gpu` (the budget did not bind); a budget of 2 GiB on flan-t5-base must end
  `oom/budget`.
- peaks (item 7): a 3-epoch LoRA trial reports each epoch's own NVML peak (generation runs
  only after the last epoch, so its peak differs), the allocator's peak stays below NVML's
  "used" (the CUDA context), and the time to first step is measured after a synchronize.

The verdicts (`judge_*`) are pure functions of AttemptResults, unit-tested on CPU
(tests/bench/test_gpu_checks.py); only `main` needs a GPU. Output: JSON under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from orchestrator.core.lifecycle import OOMKind, TrialState  # noqa: E402
from orchestrator.core.worker_contract import WORKER_ENV, AttemptResult, AttemptSpec  # noqa: E402
from orchestrator.files import write_trial  # noqa: E402

CHECKS = ("storage", "oom", "peaks")
GiB = 2**30


def trial(name: str, model: str, method: str, *, workers: int = 1, epochs: int = 1,
          batch: int = 8, budget: int | None = None, size: int = 48,
          output_dir: str = "runs/gpu-checks") -> AttemptSpec:
    """A GPU trial at random init with the paper's recipe at short lengths."""
    adapters = {} if method == "full" else {"rank": 16, "alpha": 32}
    return AttemptSpec.model_validate({
        "sweep": "gpu-checks", "trial_id": name, "lane": name, "model": model,
        "method": method, "memory_budget_bytes": budget, "output_dir": output_dir,
        "training": {"epochs": epochs, "batchSize": batch, "init": "random",
                     "precision": "bf16", "maxInputTokens": 512, "maxOutputTokens": 256,
                     "generateLimit": 8},
        "dataset": {"source": "builtin:querydsl", "size": size},
        "resources": {"workers": workers, "gpusPerWorker": 1, "cpusPerWorker": 2},
        **adapters,
    })


# --- verdicts (pure) -------------------------------------------------------------------------


class Verdict(NamedTuple):
    ok: bool
    detail: str


def judge_storage(result: AttemptResult, epochs: int) -> Verdict:
    """Succeeded, every epoch's summary at the driver, no cluster-storage error."""
    if "Unable to set up cluster storage" in (result.error or ""):
        return Verdict(False, "Ray refused the rank's report: " + (result.error or "")[:300])
    if result.status is not TrialState.SUCCEEDED:
        return Verdict(False, f"{result.status.value}: {(result.error or '')[:300]}")
    got = [e.epoch for e in result.epochs]
    if got != list(range(1, epochs + 1)):
        return Verdict(False, f"epochs {got}, expected 1..{epochs}")
    return Verdict(True, f"{epochs} epochs reported across nodes")


def judge_oom(result: AttemptResult, kind: OOMKind, *, at_probe: bool = True) -> Verdict:
    """An OOM of the expected kind (and at the probe step: no epoch completed)."""
    got = (result.status, result.oom_kind)
    if got != (TrialState.OOM, kind):
        return Verdict(False, f"expected oom/{kind.value}, got {result.status.value}/"
                       f"{result.oom_kind.value if result.oom_kind else '-'}: "
                       f"{(result.error or '')[:300]}")
    if at_probe and result.epochs_completed:
        return Verdict(False, f"the OOM came after {result.epochs_completed} epochs, not at "
                       "the probe step")
    return Verdict(True, f"oom/{kind.value}" + (" at the probe step" if at_probe else ""))


def judge_peaks(result: AttemptResult) -> Verdict:
    """Per-epoch peaks of their own; allocator peak under NVML's; first step measured."""
    if result.status is not TrialState.SUCCEEDED:
        return Verdict(False, f"{result.status.value}: {(result.error or '')[:300]}")
    peaks = [e.peak_gpu_memory_bytes for e in result.epochs]
    run = result.peak_gpu_memory_bytes
    if run is None or any(p is None for p in peaks):
        return Verdict(False, f"NVML figures missing (run {run}, epochs {peaks}): lookup failed")
    if len(set(peaks)) == 1 and peaks[0] == run and len(peaks) > 1:
        return Verdict(False, f"every epoch reports the run's peak {run}: not reset per epoch")
    allocated = result.peak_torch_allocated_bytes
    if allocated is None or allocated >= run:
        return Verdict(False, f"allocator peak {allocated} not below NVML used {run}")
    first = result.time_to_first_step_seconds
    if first is None or first <= 0:
        return Verdict(False, f"time to first step {first}")
    return Verdict(True, f"epoch peaks {[round(p / GiB, 2) for p in peaks]} GiB, run "
                   f"{run / GiB:.2f} GiB NVML, {allocated / GiB:.2f} GiB allocated; first step "
                   f"{first:.1f} s")


# --- running (GPU) ---------------------------------------------------------------------------


def run_worker(spec: AttemptSpec, workdir: Path, env: dict[str, str] | None = None,
               timeout: float = 1500) -> AttemptResult:
    path = write_trial(spec, workdir / f"{spec.trial_id}.json")
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--trial", str(path)], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, capture_output=True,
        text=True, timeout=timeout)
    result = AttemptResult.from_output(done.stdout)
    if result is None:
        raise RuntimeError(f"no result (exit {done.returncode}): {done.stderr[-2000:]}")
    return result


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def check_storage(workdir: Path) -> dict[str, Any]:
    from tests.integration.worker.two_nodes import can_isolate, two_pods

    gpus, epochs = gpu_count(), 2
    run_dir = workdir / "storage-run"
    spec = trial("storage", "google/flan-t5-small", "lora", workers=max(1, min(gpus, 2)),
                 epochs=epochs, output_dir=str(run_dir))
    isolated = can_isolate()
    with two_pods(run_dir, cpus=8, gpus=gpus, isolate=isolated) as (address, env):
        result = run_worker(spec, workdir, {**env, "RAY_ADDRESS": address, **WORKER_ENV})
    verdict = judge_storage(result, epochs)
    return {"ok": verdict.ok, "detail": verdict.detail, "workers": spec.resources.workers,
            "own_disk": isolated, "result": result.model_dump(mode="json")}


def check_oom(workdir: Path) -> dict[str, Any]:
    import torch

    card = torch.cuda.get_device_properties(0).total_memory
    cases: list[tuple[str, AttemptSpec, OOMKind]] = [
        ("huge-batch", trial("oom-huge", "google/flan-t5-xl", "full", batch=512, size=600),
         OOMKind.GPU),
        ("huge-batch-budget-above-card",
         trial("oom-huge-budget", "google/flan-t5-xl", "full", batch=512, size=600,
               budget=2 * card), OOMKind.GPU),
        ("budget-binds", trial("oom-budget", "google/flan-t5-base", "full", batch=8,
                               budget=2 * GiB), OOMKind.BUDGET),
    ]
    out: dict[str, Any] = {}
    for name, spec, kind in cases:
        result = run_worker(spec, workdir, dict(WORKER_ENV))
        verdict = judge_oom(result, kind)
        out[name] = {"ok": verdict.ok, "detail": verdict.detail, "error": result.error}
    return {"ok": all(v["ok"] for v in out.values()), "cases": out}


def check_peaks(workdir: Path) -> dict[str, Any]:
    spec = trial("peaks", "google/flan-t5-base", "lora", epochs=3, size=96)
    result = run_worker(spec, workdir, dict(WORKER_ENV))
    verdict = judge_peaks(result)
    return {"ok": verdict.ok, "detail": verdict.detail,
            "epochs": [e.model_dump(mode="json") for e in result.epochs]}


RUNNERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "storage": check_storage, "oom": check_oom, "peaks": check_peaks}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)
    if gpu_count() == 0:
        raise SystemExit("gpu_checks needs a CUDA GPU (the verdicts are unit-tested on CPU)")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-checks-") as tmp:
        for name in args.only:
            started = time.monotonic()
            try:
                results[name] = RUNNERS[name](Path(tmp))
            except Exception as error:  # one broken check must not hide the others
                results[name] = {"ok": False, "detail": f"{type(error).__name__}: {error}"}
            results[name]["seconds"] = time.monotonic() - started
            print(f"{name}: {'ok' if results[name]['ok'] else 'FAILED'} - "
                  f"{results[name].get('detail', '')}", flush=True)
    (args.out / "gpu_checks.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
