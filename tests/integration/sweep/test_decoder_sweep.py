"""Decoder-only models end to end through the real CLI: Ray Train DDP with 2 CPU workers
(gloo), full fine-tuning on a Llama-shaped and QLoRA on a Qwen2-shaped tiny model, results in
SQLite.

Two one-trial sweeps (`ladder run` twice, at once) with one runs directory: the second finds
the first's Ray head and uses it (backends.ray_head.SharedHead), as two users' runs on one
machine do; the last to finish stops it. Most of a trial's time is Ray Train starting worker
processes that import torch, transformers and peft (about 25 s to the first step of a 2-worker
trial on two quiet cores; tests/bench/bench_first_step.py --workers 2), so each family and each
method is run once through DDP, not every pair: the other two pairs differ in nothing DDP sees
(both families tie their embeddings; QLoRA's frozen base is the same code on both), and every
family x method pair is trained in-process by tests/unit/worker/test_export_decoder.py. Plain
LoRA is QLoRA's adapter path without the quantised base; it runs through 2-worker DDP on T5
(tests/integration/worker). A ladder mixing the two families is reported by
tests/integration/report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.core.lifecycle import TrialState

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SWEEPS = {"decoder-llama": ("ladder/llama-tiny-s", "full"),
          "decoder-qwen": ("ladder/qwen-tiny-s", "qlora")}


def one_trial_sweep(name: str, model: str, method: str, path: Path) -> Path:
    spec = yaml.safe_load((ROOT / "examples/quickstart-decoder.yaml").read_text())
    spec["metadata"]["name"] = name
    spec["spec"].update({
        "ladder": [model], "parallelism": 1, "methods": [method],
        "resources": {"workers": 2, "gpusPerWorker": 0, "cpusPerWorker": 1},
        "escalation": {"onOOM": "stop-lane", "retries": 0},
        "dataset": {"source": "builtin:querydsl", "size": 16, "preamble": "short",
                    "evalFraction": 0.25},
    })
    spec["spec"]["training"].update({"epochs": 2, "batchSize": 4, "maxInputTokens": 80,
                                     "maxOutputTokens": 48, "generateLimit": 2})
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.timeout(1800)  # two Ray Train trials at once; most of it is worker start-up
def test_full_on_llama_and_qlora_on_qwen2_through_ray_ddp(tmp_path: Path) -> None:
    from orchestrator.store import all_attempts, open_store, to_result

    db = f"sqlite:///{tmp_path / 'ladder.db'}"
    env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"}
    runs: dict[str, subprocess.Popen[str]] = {}
    for name, (model, method) in SWEEPS.items():
        sweep = one_trial_sweep(name, model, method, tmp_path / f"{name}.yaml")
        # 4 logical CPUs: both 2-rank trials at once (whichever run starts the head sizes it).
        runs[name] = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "run", str(sweep), "--db", db,
             "--runs-dir", str(tmp_path / "runs"), "--cpus", "4"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
    outputs = {name: run.communicate(timeout=1700)[0] for name, run in runs.items()}
    for name, run in runs.items():
        assert run.returncode == 0, f"{name}:\n{outputs[name][-3000:]}"
    # One head for both: whichever run took the runs directory's lock first started it.
    assert sum("Reusing the Ray runtime" in out for out in outputs.values()) == 1, outputs

    with open_store(db)() as session:
        rows = [to_result(row) for row in all_attempts(session, with_epochs=True)]
    assert sorted((r.sweep, r.model, r.method.value) for r in rows) == sorted(
        (name, model, method) for name, (model, method) in SWEEPS.items())
    for r in rows:
        assert r.status is TrialState.SUCCEEDED, (r.model, r.method, r.error)
        # Epoch 0 is the untuned baseline (training.baseline, on by default); 1-2 trained.
        assert [e.epoch for e in r.epochs] == [0, 1, 2], (r.model, r.method)
        losses = [e.eval_loss for e in r.epochs if e.epoch > 0]
        assert losses[-1] < losses[0], (r.model, r.method, losses)
        assert r.wall_seconds > 0 and r.samples_per_second > 0
        assert 0 < r.time_to_first_step_seconds < r.wall_seconds
        assert r.peak_host_memory_bytes > 0 and r.estimated_memory_bytes > 0
        assert 0 <= r.exact_match <= 1 and 0 <= r.json_valid_rate <= 1
        assert (r.trainable_parameters < r.total_parameters) == (r.method.value != "full")

    # A decoder sweep's report names its rung (a mixed ladder: tests/integration/report).
    report = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "report", "decoder-qwen", "--db", db,
         "--out", str(tmp_path / "report")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "qwen-tiny-s" in markdown and "t5-" not in markdown
