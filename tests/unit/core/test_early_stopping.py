"""training.earlyStopping: the spec field, the pure rule, the worker stopping for real (one
CPU worker in-process), the store keeping where and why, and the report showing it."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import store
from orchestrator.core.lifecycle import TrialState
from orchestrator.core.names import RANK_IN_DRIVER_ENV
from orchestrator.core.spec import EarlyStopping, SpecError, Training, load_sweep_text
from orchestrator.core.stopping import (
    StopReason,
    epochs_without_improvement,
    should_stop,
    stopping_epoch,
)
from orchestrator.core.worker_contract import AttemptResult, AttemptSpec


def test_off_by_default_and_spelled_as_in_yaml() -> None:
    assert Training().early_stopping is None  # the paper's recipe: every epoch
    training = Training.model_validate({"earlyStopping": {"patience": 3, "minDelta": 0.01}})
    assert training.early_stopping == EarlyStopping(patience=3, min_delta=0.01)


@pytest.mark.parametrize("bad", [{"patience": 0}, {"patience": 2, "minDelta": -1}, {}])
def test_bad_settings_name_the_field(bad: dict[str, Any]) -> None:
    text = ("apiVersion: ladder.dev/v1alpha1\nkind: Sweep\nmetadata: {name: s}\nspec:\n"
            "  ladder: [ladder/t5-tiny-s]\n  methods: [full]\n"
            f"  training: {{earlyStopping: {bad}}}\n".replace("'", ""))
    with pytest.raises(SpecError) as error:
        load_sweep_text(text)
    assert "training.earlyStopping" in str(error.value)


def test_the_rule() -> None:
    rule = EarlyStopping(patience=2, min_delta=0.1)
    assert not should_stop([5.0, 4.0], rule)
    assert not should_stop([5.0, 4.0, 3.95], rule)  # one epoch without (enough) improvement
    assert should_stop([5.0, 4.0, 3.95, 3.9], rule)  # two: 3.9 is not below 4.0 - 0.1
    assert not should_stop([5.0, 4.0, 3.95, 3.8], rule)  # 3.8 is: counting starts again
    assert not should_stop([5.0] * 10, None)  # off
    assert epochs_without_improvement([math.nan, math.inf, 1.0, math.nan], 0.0) == 1
    assert stopping_epoch([5.0, 4.0, 3.95, 3.9, 3.0], rule) == 4
    assert stopping_epoch([5.0, 4.0, 3.0], rule) == 3  # never: the last epoch


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(0, 10), min_size=1, max_size=30), st.integers(1, 5),
       st.floats(0, 1))
def test_stopping_epoch_is_the_first_that_should_stop(
    losses: list[float], patience: int, min_delta: float
) -> None:
    rule = EarlyStopping(patience=patience, min_delta=min_delta)
    epoch = stopping_epoch(losses, rule)
    assert 1 <= epoch <= len(losses)
    assert not any(should_stop(losses[:e], rule) for e in range(1, epoch))
    assert epoch == len(losses) or should_stop(losses[:epoch], rule)
    assert epoch > patience or epoch == len(losses)  # the first epoch always improves


def _trial(tmp_path: Path, **training: Any) -> AttemptSpec:
    return AttemptSpec.model_validate({
        "sweep": "s", "trial_id": "t", "lane": "l", "model": "ladder/t5-tiny-s",
        "method": "full", "output_dir": str(tmp_path / "run"),
        "training": {"epochs": 5, "init": "random", "precision": "fp32", "batchSize": 4,
                     "maxInputTokens": 48, "maxOutputTokens": 24, "generateLimit": 1,
                     **training},
        "dataset": {"source": "builtin:querydsl", "size": 8, "preamble": "short"},
        "resources": {"workers": 1, "gpusPerWorker": 0, "cpusPerWorker": 1}})


def test_the_worker_stops_early_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """minDelta 100 on a loss of a few nats: epoch 1 improves (on nothing), epoch 2 cannot,
    so patience 1 stops after epoch 2 of 5, generation still scores the last epoch run."""
    from worker.train import run_trial

    monkeypatch.setenv(RANK_IN_DRIVER_ENV, "1")
    monkeypatch.delenv("LADDER_DB_URL", raising=False)
    result = run_trial(_trial(tmp_path, earlyStopping={"patience": 1, "minDelta": 100}))
    assert result.status is TrialState.SUCCEEDED, result.error
    assert [e.epoch for e in result.epochs if e.epoch > 0] == [1, 2]  # 0: the baseline
    assert (result.stopped_epoch, result.stop_reason) == (2, StopReason.EARLY_STOPPING)
    assert result.epochs_completed == 2 and result.best_epoch in (1, 2)
    assert result.json_valid_rate is not None  # generation ran at the epoch it stopped


def test_store_and_report_keep_where_and_why(tmp_path: Path) -> None:
    from orchestrator.report import load, stopping_section

    url = f"sqlite:///{tmp_path / 'ladder.db'}"
    store.migrate(url)
    sessions = store.open_store(url)
    sweep = load_sweep_text(
        "apiVersion: ladder.dev/v1alpha1\nkind: Sweep\nmetadata: {name: s}\nspec:\n"
        "  ladder: [ladder/t5-tiny-s, ladder/t5-tiny-m]\n  methods: [full]\n"
        "  training: {epochs: 10, earlyStopping: {patience: 2, minDelta: 0.01}}\n")
    with sessions.begin() as session:
        store.upsert_sweep(session, sweep)
    from orchestrator.core.grid import attempt_spec, expand

    for trial, stopped, reason in zip(expand(sweep).all_trials(), (4, 10),
                                      (StopReason.EARLY_STOPPING, StopReason.EPOCHS),
                                      strict=True):
        spec = attempt_spec(sweep, trial, attempt=1, output_dir=str(tmp_path))
        now = datetime.now(UTC)
        with sessions.begin() as session:
            store.record_attempt(session, spec, status=TrialState.RUNNING, started_at=now)
        with sessions.begin() as session:
            store.record_result(session, AttemptResult.for_trial(
                spec, status=TrialState.SUCCEEDED, best_eval_loss=1.0, best_epoch=2,
                epochs_completed=stopped, stopped_epoch=stopped, stop_reason=reason,
                started_at=now, finished_at=now))
    with sessions() as session:
        rows = {r.model: r for r in store.attempts(session, "", "s")}
    assert (rows["ladder/t5-tiny-s"].stopped_epoch, rows["ladder/t5-tiny-s"].stop_reason) == (
        4, StopReason.EARLY_STOPPING)
    assert rows["ladder/t5-tiny-m"].stop_reason is StopReason.EPOCHS
    section = stopping_section(load(sessions, "s"))
    assert section is not None and section.table is not None
    assert "1 of 2 trials stopped early, 6 epochs not run" in section.text[0]
    assert sorted(row[3] for row in section.table.rows) == ["10", "4"]
    assert {row[5] for row in section.table.rows} == {"early-stopping", "epochs"}
