"""`ladder report` renders the paper's forms from a store written through the real store API.

The store holds a paper-shaped grid (3 models x full / LoRA / QLoRA x 2 x 2 (rank, alpha) x
dssAlpha {0.5, 1.0} x 2 seeds), recorded as the runner records it (`record_attempt`, then
`record_result` with epochs): the full lanes run out of GPU memory on the largest model, one
trial is still running and one failed. Results are made up but shaped like real ones (loss
falls with model size and is best at alpha = 4 x rank; DSS beats label-only); a CPU-only
sweep checks that memory falls back to host memory, said so.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from orchestrator import store
from orchestrator.cli import app
from orchestrator.core.grid import attempt_spec, expand
from orchestrator.core.lifecycle import Method, OOMKind, TrialState
from orchestrator.core.spec import Sweep, SweepSpec
from orchestrator.core.worker_contract import AttemptKey, AttemptResult, AttemptSpec, EpochRecord
from orchestrator.report import load, render, top_trials, top_trials_table

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MODELS = ["google/flan-t5-small", "google/flan-t5-base", "google/flan-t5-large"]


def make_sweep(name: str, *, gpus: int, seeds: list[int], dss: list[float]) -> Sweep:
    spec = SweepSpec.model_validate({
        "ladder": MODELS,
        "methods": ["full", "lora", "qlora"],
        "adapters": [{"rank": 8, "alphas": [8, 32]}, {"rank": 16, "alphas": [16, 64]}],
        "axes": {"dssAlpha": dss, "seed": seeds},
        "training": {"epochs": 3},
        "escalation": {"retries": 0},
        "resources": {"workers": 2, "gpusPerWorker": gpus},
    })
    return Sweep(name=name, spec=spec)


def loss(spec: AttemptSpec) -> float:
    """Falls with model size, best at alpha = 4 x rank, DSS better than label-only."""
    value = 0.2 - 0.04 * spec.model_index
    if spec.method is not Method.FULL:
        assert spec.rank is not None and spec.alpha is not None
        value += 0.01 * abs(math.log2(spec.alpha / (4 * spec.rank)))
        value += 0.005 if spec.method is Method.QLORA else 0.0
    value += 0.004 * (spec.dss_alpha - 0.5) + 0.001 * spec.seed
    return round(value, 6)


def _memory(spec: AttemptSpec) -> int:
    """Peak GPU memory of a fixture trial, summed over its 2 devices."""
    return (4 + 8 * spec.model_index) * 2**30 if spec.method is Method.FULL else (
        (2 + 5 * spec.model_index) * 2**30)


def result_for(spec: AttemptSpec, gpus: bool) -> AttemptResult:
    best = loss(spec)
    epochs = [
        EpochRecord(epoch=n, train_loss=best * (1.6 - 0.2 * n), train_label_loss=best,
                    train_rationale_loss=best / 2, eval_loss=best * (1.4 - 0.4 * (n - 1) / 2),
                    learning_rate=5e-5, samples_per_second=40.0 / (1 + spec.model_index),
                    wall_seconds=100.0 * (1 + spec.model_index),
                    peak_gpu_memory_bytes=(2 + spec.model_index) * 2**30 if gpus else None,
                    peak_host_memory_bytes=(300 + 50 * spec.model_index) * 2**20)
        for n in range(1, 4)
    ]
    # Epoch 0: the untuned model (training.baseline), twice the best loss, no exact match.
    baseline = EpochRecord(epoch=0, eval_loss=2 * best, learning_rate=5e-5, wall_seconds=30.0,
                           exact_match=0.0, json_valid_rate=0.0)
    epochs = [baseline, *epochs]
    memory = _memory(spec)
    wall = 300.0 * (1 + spec.model_index) * (1.5 if spec.method is Method.FULL else 1.0)
    return AttemptResult.for_trial(
        spec, status=TrialState.SUCCEEDED, started_at=T0,
        finished_at=T0 + timedelta(seconds=wall), wall_seconds=wall,
        samples_per_second=40.0 / (1 + spec.model_index),
        peak_gpu_memory_bytes=memory // 2 if gpus else None,
        peak_torch_reserved_bytes=memory // 2 - 2**28 if gpus else None,
        total_gpu_memory_bytes=memory if gpus else None,
        gpu_memory_per_device=[memory // 2] * 2 if gpus else [],
        peak_host_memory_bytes=(300 + 50 * spec.model_index) * 2**20,
        best_eval_loss=best, best_epoch=3, exact_match=0.5, json_valid_rate=0.9,
        bleu=40.0 + spec.model_index, chrf=60.0, ter=45.5, dsl_similarity=0.75,
        end_to_end_samples_per_second=10.0 / (1 + spec.model_index),
        epochs_completed=3, epochs=epochs, baseline_eval_loss=2 * best,
        baseline_exact_match=0.0, baseline_json_valid_rate=0.0,
    )


def write_sweep(sessions: sessionmaker[Session], sweep: Sweep, *, gpus: bool) -> None:
    """Record every trial the way the runner does: attempt first, then its result."""
    with sessions.begin() as session:
        store.upsert_sweep(session, sweep)
    for trial in expand(sweep).all_trials():
        spec = attempt_spec(sweep, trial, attempt=1, output_dir="runs")
        with sessions.begin() as session:
            # The estimate made before launch: 10% above what the fixture's trials reserve.
            store.record_attempt(session, spec, status=TrialState.RUNNING, started_at=T0,
                                 estimated_memory_bytes=int(
                                     1.1 * (_memory(spec) // 2 - 2**28)))
            lane = trial.lane
            if lane.method is Method.FULL and trial.model_index == 2:
                store.record_result(session, AttemptResult.for_trial(
                    spec, status=TrialState.OOM, oom_kind=OOMKind.GPU, started_at=T0,
                    finished_at=T0 + timedelta(seconds=20), error="CUDA out of memory"))
            elif (lane.method, lane.rank, lane.alpha, lane.dss_alpha, lane.seed,
                  trial.model_index) == (Method.QLORA, 16, 64, 0.5, 1, 2):
                # Still running: its epochs show in the curves, not in tables or means.
                store.record_epoch(
                    session, AttemptKey(sweep.namespace, sweep.name, spec.trial_id, 1),
                    result_for(spec, gpus).epochs[0])
            elif (lane.method, lane.rank, lane.alpha, lane.dss_alpha, lane.seed,
                  trial.model_index) == (Method.LORA, 8, 8, 1.0, 0, 2):
                store.record_result(session, AttemptResult.for_trial(
                    spec, status=TrialState.FAILED, started_at=T0, error="boom"))
            else:
                store.record_result(session, result_for(spec, gpus))


def assert_real_png(path: Path, min_bytes: int = 15_000) -> None:
    assert path.is_file() and path.stat().st_size > min_bytes, path
    pixels = imread(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 400
    colors = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert len(colors) > 50, f"{path.name}: only {len(colors)} distinct colours"


@pytest.fixture
def gpu_store(store_url: str) -> tuple[str, sessionmaker[Session]]:
    sessions = store.open_store(store_url)
    write_sweep(sessions, make_sweep("paper-grid", gpus=1, seeds=[0, 1], dss=[0.5, 1.0]),
                gpus=True)
    return store_url, sessions


def test_report_renders_every_paper_form(gpu_store, tmp_path: Path) -> None:
    url, sessions = gpu_store
    out = tmp_path / "report"
    done = CliRunner().invoke(app, ["report", "paper-grid", "--db", url, "--out", str(out)])
    assert done.exit_code == 0, done.output

    for name in ("figure6.png", "figure7.png", "loss_curves.png"):
        assert_real_png(out / name)
    markdown = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for heading in ("Table 3: top 8 trials by evaluation loss", "Table 4: DSS",
                    "Figure 6", "Figure 7", "Lane ceilings", "Per-epoch loss"):
        assert heading in markdown and heading in page
    for image in ("figure6.png", "figure7.png", "loss_curves.png"):
        assert f"]({image})" in markdown and f'src="{image}"' in page
    assert "GPU memory, summed over devices" in markdown

    # Table 3: the 8 lowest losses of succeeded trials, in order, with summed GPU memory.
    data = load(sessions, "paper-grid")
    best = top_trials(data, 8)
    losses = sorted(r.best_eval_loss for r in data.succeeded)
    assert [r.best_eval_loss for r in best] == losses[:8]
    assert all(r.status is TrialState.SUCCEEDED for r in best)
    rows = top_trials_table(data, 8).rows
    assert rows[0][1] == "google/flan-t5-large" and rows[0][7] == f"{losses[0]:.5f}"
    assert "GiB" in rows[0][8]
    # The generation metrics and both throughputs, for the same trials, each named.
    generated = markdown.split("## Generated labels and throughput")[1].split("## ")[0]
    assert "samples/s (training loop)" in generated and "samples/s (end to end)" in generated
    for header in ("BLEU", "chrF", "TER", "DSL similarity"):
        assert header in generated
    first = next(line for line in generated.splitlines() if line.startswith("| 1 |"))
    assert f"| {best[0].trial_id} |" in first and "| 45.5 |" in first and "| 75% |" in first
    assert f"| {40.0 + best[0].model_index:.1f} |" in first
    assert "samples/s (training loop)" in markdown.split("## Table 3")[1].split("## ")[0]
    # The running trial and the failed one are in no table row and no mean.
    assert all(r.status is not TrialState.RUNNING for r in data.succeeded)
    assert sum(r.status is TrialState.RUNNING for r in data.results) == 1

    # Table 4: every model x method pair that ran both dss alphas; DSS better everywhere.
    table4_block = markdown.split("## Table 4")[1].split("## Figure 6")[0]
    table4_rows = [line for line in table4_block.splitlines()
                   if line.startswith("| google/")]
    assert len(table4_rows) == 3 * 3 - 1  # the full lanes never fitted flan-t5-large
    assert all(line.rstrip(" |").endswith("yes") for line in table4_rows)

    # Did fine-tuning help? Per model x method, the best tuned trial against its baseline.
    helped = markdown.split("## Did fine-tuning help?")[1].split("## ")[0]
    helped_rows = [line for line in helped.splitlines() if line.startswith("| google/")]
    assert len(helped_rows) == 3 * 3 - 1  # as Table 4: full never fitted flan-t5-large
    top = best[0]
    line = next(row for row in helped_rows
                if row.startswith(f"| {top.model} | {top.method.value} |"))
    assert f"| {2 * top.best_eval_loss:.5f} | {top.best_eval_loss:.5f} | " \
           f"{top.best_eval_loss:+.5f} | 0% | 50% | yes | `{top.trial_id}`" in line

    # Lane ceilings: full lanes capped at base (OOM on large), adapter lanes completed.
    ceilings = markdown.split("## Lane ceilings")[1]
    assert "| capped | google/flan-t5-base | google/flan-t5-large (oom/gpu) |" in ceilings
    assert "| completed | google/flan-t5-large | - |" in ceilings
    assert "| failed |" in ceilings  # the lane whose large trial failed (no retry left)

    # The estimator's error, from every succeeded trial with both figures: 10% over each.
    estimates = markdown.split("## Memory estimate against the measured peak")[1]
    assert f"{len(data.succeeded)} trials; mean absolute error 10%" in estimates
    assert "| 1.10 |" in estimates


def test_cpu_sweep_reports_host_memory_and_skips_the_dss_ablation(tmp_path: Path) -> None:
    sessions = store.open_store(f"sqlite:///{tmp_path / 'cpu.db'}")
    write_sweep(sessions, make_sweep("cpu", gpus=0, seeds=[0], dss=[0.5]), gpus=False)
    written = render(load(sessions), tmp_path / "out")
    markdown = written.markdown.read_text()
    assert "host memory, peak RSS" in markdown and "CPU only" in markdown
    assert "Table 4" not in markdown
    assert "the estimator's error cannot be measured from this sweep" in markdown
    for image in written.images:
        assert_real_png(image)


def test_a_ladder_that_mixes_families_is_labelled_by_name(tmp_path: Path) -> None:
    """A ladder of a Llama- and a Qwen2-shaped model: its rungs are named, not T5 sizes."""
    spec = SweepSpec.model_validate({
        "ladder": ["ladder/llama-tiny-s", "ladder/qwen-tiny-s"], "methods": ["full", "qlora"],
        "adapters": [{"rank": 8, "alphas": [16]}], "training": {"epochs": 3},
        "resources": {"workers": 2, "gpusPerWorker": 0},
    })
    sessions = store.open_store(f"sqlite:///{tmp_path / 'mixed.db'}")
    write_sweep(sessions, Sweep(name="mixed", spec=spec), gpus=False)
    markdown = render(load(sessions), tmp_path / "out").markdown.read_text()
    assert "llama-tiny-s" in markdown and "qwen-tiny-s" in markdown
    assert "t5-" not in markdown


def test_unknown_sweep_fails_cleanly(gpu_store, tmp_path: Path) -> None:
    url, _ = gpu_store
    done = CliRunner().invoke(app, ["report", "nope", "--db", url, "--out", str(tmp_path)])
    assert done.exit_code == 1
    assert not (tmp_path / "report.md").exists()
