"""`ladder export` and `ladder predict` end to end: the store, the runs directory, the worker's
side in a subprocess (torch there, never in the CLI), and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from orchestrator import store
from orchestrator.cli import app
from orchestrator.core.grid import attempt_spec, expand
from orchestrator.core.lifecycle import TrialState
from orchestrator.core.spec import Sweep, SweepSpec
from orchestrator.core.worker_contract import AttemptResult
from worker.models import build_model, save_trained

SPEC = {
    "ladder": ["ladder/t5-tiny-s"], "methods": ["lora"],
    "adapters": [{"rank": 4, "alphas": [8]}, {"rank": 8, "alphas": [16]}],
    "training": {"epochs": 1, "init": "random", "precision": "fp32", "maxOutputTokens": 8,
                 "saveModel": "best"},
    "dataset": {"source": "builtin:querydsl", "size": 20},
}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker subprocesses: tiny models run many times faster on one thread when the CPU
    is shared."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def run(*args: str) -> tuple[int, str]:
    """The exit code, and stdout when it succeeded (what a pipe reads: a Ray started in this
    process by another test may log to stderr meanwhile), else stdout and stderr together."""
    done = CliRunner().invoke(app, list(args))
    return done.exit_code, done.stdout if done.exit_code == 0 else done.output


@pytest.fixture
def sweep_store(tmp_path: Path) -> tuple[str, Path, list[str]]:
    """Two finished LoRA trials, the second the better, each with its saved weights."""
    url = f"sqlite:///{tmp_path / 'ladder.db'}"
    runs = tmp_path / "runs"
    sweep = Sweep(name="qs", spec=SweepSpec.model_validate(SPEC))
    sessions = store.open_store(url)
    ids = []
    for loss, trial in zip((2.0, 1.5), expand(sweep).all_trials(), strict=True):
        out = runs / "qs" / trial.trial_id / "1"
        spec = attempt_spec(sweep, trial, attempt=1, output_dir=str(out))
        torch.manual_seed(spec.seed)
        model, tokenizer, _ = build_model(spec, torch.device("cpu"))
        save_trained(model, tokenizer, out / "model", {
            "trial": spec.trial_id, "epoch": 1, "eval_loss": loss, "device": "cpu",
            "spec": spec.model_dump(mode="json", by_alias=True)})
        with sessions.begin() as session:
            store.upsert_sweep(session, sweep)
            store.record_result(session, AttemptResult.for_trial(
                spec, status=TrialState.SUCCEEDED, best_eval_loss=loss, best_epoch=1))
        ids.append(spec.trial_id)
    return url, runs, ids


def test_export_best_then_predict_on_it(sweep_store, tmp_path: Path) -> None:
    url, runs, (_worse, better) = sweep_store
    out = tmp_path / "exported"
    code, output = run("export", "--best", "qs", "--out", str(out), "--db", url,
                       "--runs-dir", str(runs))
    assert code == 0, output
    assert f"exported trial {better}" in output
    assert f"({better})" in (out / "README.md").read_text()
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"input": "count orders"}) + "\n" + json.dumps("top 3")
                         + "\n")
    code, output = run("predict", str(out), "--file", str(questions), "--json")
    assert code == 0, output
    answers = [json.loads(line) for line in output.splitlines()]
    assert [a["question"] for a in answers] == ["count orders", "top 3"]
    assert all(isinstance(a["valid_json"], bool) and a["rationale"] is None for a in answers)
    # The trial itself (adapter on base) answers the same.
    code, again = run("predict", better, "count orders", "--explain",
                      "--db", url, "--runs-dir", str(runs))
    assert code == 0, again
    # The text form: the question, the JSON mark, the answer, the rationale (an untrained
    # model's answer may hold newlines and the mark may wrap, so no line is assumed whole).
    assert again.startswith("count orders\n  ") and "JSON" in again.split("→")[0]
    words = answers[0]["answer"].split()
    assert "  → " + (words[0] if words else "") in again and "\n  because: " in again


def test_errors_are_one_line(sweep_store, tmp_path: Path) -> None:
    url, _runs, (trial, _) = sweep_store
    cases = [
        (("export", "nope", "--out", str(tmp_path / "x"), "--db", url), "no trial 'nope'"),
        (("export", trial, "--out", str(tmp_path / "x"), "--db", url,
          "--runs-dir", str(tmp_path / "elsewhere")), "no saved weights of trial"),
        (("predict", str(tmp_path), "hello"), "is not a model: no config.json"),
        (("export", "--best", "missing", "--out", str(tmp_path / "x"), "--db", url),
         "no sweep 'missing'"),
    ]
    for args, message in cases:
        code, output = run(*args)
        assert code == 1 and message in output, output
        assert len(output.strip().splitlines()) == 1 and "Traceback" not in output

    # A trial whose sweep kept no weights: how to get them.
    sessions = store.open_store(url)
    with sessions.begin() as session:
        spec = {**SPEC, "training": {**SPEC["training"], "saveModel": "none"}}
        store.upsert_sweep(session, Sweep(name="qs", spec=SweepSpec.model_validate(spec)))
    code, output = run("export", trial, "--out", str(tmp_path / "x"), "--db", url,
                       "--runs-dir", str(tmp_path / "elsewhere"))
    assert code == 1 and "rerun with `training.saveModel: best`" in output, output
