"""`ladder results --json` carries the evaluation losses of the best epoch and which loss
picked it (training.selectionLoss), read back from a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from orchestrator.core.spec import SelectionLoss
from orchestrator.store import open_store, record_result, upsert_sweep
from tests.integration.store.store_helpers import make_sweep, succeeded, trial_specs

pytestmark = pytest.mark.integration


def test_json_has_the_best_epochs_label_and_rationale_losses(store_url: str) -> None:
    sweep = make_sweep(training={"selectionLoss": "dss"})
    spec = trial_specs(sweep)[0]
    with open_store(store_url).begin() as session:
        upsert_sweep(session, sweep)
        record_result(session, succeeded(
            spec, best_eval_loss=0.75, best_epoch=2, selection_loss=SelectionLoss.DSS,
            eval_label_loss=0.5, eval_rationale_loss=1.0))
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "results", "--db", store_url, "--json"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "160"})
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert record["trial_id"] == spec.trial_id
    assert (record["best_eval_loss"], record["best_epoch"]) == (0.75, 2)
    assert record["selection_loss"] == "dss"
    assert (record["eval_label_loss"], record["eval_rationale_loss"]) == (0.5, 1.0)


def test_json_has_the_generation_metrics_and_both_throughputs(store_url: str) -> None:
    sweep = make_sweep()
    spec = trial_specs(sweep)[0]
    with open_store(store_url).begin() as session:
        upsert_sweep(session, sweep)
        record_result(session, succeeded(
            spec, bleu=41.5, chrf=63.25, ter=37.75, dsl_similarity=0.8125,
            samples_per_second=12.5, end_to_end_samples_per_second=9.5))
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "results", "--db", store_url, "--json"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "160"})
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert (record["bleu"], record["chrf"], record["ter"], record["dsl_similarity"]) == (
        41.5, 63.25, 37.75, 0.8125)
    assert (record["samples_per_second"], record["end_to_end_samples_per_second"]) == (12.5, 9.5)
