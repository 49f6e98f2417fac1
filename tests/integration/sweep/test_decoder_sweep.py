"""Decoder-only models end to end: one local sweep through the real CLI, Ray Train DDP with 2
CPU workers (gloo), full fine-tuning and QLoRA on a Llama-shaped and a Qwen2-shaped tiny model
(a ladder that mixes the two families), results in SQLite.

One sweep covers the four trials, so Ray starts once: most of the time is Ray Train starting
worker processes that import torch, transformers and peft (about 25 s to the first step of a
2-worker trial on two quiet cores; tests/bench/bench_first_step.py --workers 2). Plain LoRA is
QLoRA's adapter path without the quantised base: on decoders it is trained in-process
(tests/unit/worker/test_export_decoder.py) and through 2-worker DDP on T5
(tests/integration/worker), so a third DDP lane here would add two trials of start-up, not a path.
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
MODELS = ["ladder/llama-tiny-s", "ladder/qwen-tiny-s"]
METHODS = ("full", "qlora")


@pytest.mark.timeout(1800)  # four Ray Train trials; most of it is worker start-up
def test_full_and_qlora_on_llama_and_qwen2_through_ray_ddp(tmp_path: Path) -> None:
    from orchestrator.store import all_attempts, open_store, to_result

    spec = yaml.safe_load((ROOT / "examples/quickstart-decoder.yaml").read_text())
    spec["metadata"]["name"] = "decoder-ddp"
    spec["spec"].update({
        "ladder": MODELS, "parallelism": 2, "methods": list(METHODS),
        "resources": {"workers": 2, "gpusPerWorker": 0, "cpusPerWorker": 1},
        "escalation": {"onOOM": "stop-lane", "retries": 0},
        "dataset": {"source": "builtin:querydsl", "size": 16, "preamble": "short",
                    "evalFraction": 0.25},
    })
    spec["spec"]["training"].update({"epochs": 2, "batchSize": 4, "maxInputTokens": 80,
                                     "maxOutputTokens": 48, "generateLimit": 2})
    sweep = tmp_path / "decoder.yaml"
    sweep.write_text(yaml.safe_dump(spec))
    db = f"sqlite:///{tmp_path / 'ladder.db'}"
    env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", str(sweep), "--db", db,
         "--runs-dir", str(tmp_path / "runs"), "--cpus", "4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1700,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with open_store(db)() as session:
        rows = [to_result(row) for row in all_attempts(session, with_epochs=True)]
    assert sorted((r.model, r.method.value) for r in rows) == sorted(
        (m, method) for m in MODELS for method in METHODS)
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

    # The report handles a ladder that mixes families (names, not T5 sizes, label its rungs).
    report = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "report", "decoder-ddp", "--db", db,
         "--out", str(tmp_path / "report")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "llama-tiny-s" in markdown and "qwen-tiny-s" in markdown
