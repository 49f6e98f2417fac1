"""Hung trials: `outcome.stall_reason` (pure) and the reconcile pass that stops a running
attempt silent for longer than `execution.stallTimeoutSeconds` (in-memory fake of the
Kubernetes API as in test_reconcile, real SQLite store, real time)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from orchestrator import store
from orchestrator.core.classify import stall_reason
from orchestrator.core.lifecycle import TrialState
from orchestrator.core.worker_contract import AttemptKey, EpochRecord
from orchestrator.operator.manifests import ExecutionConfig, decode_trial
from orchestrator.operator.reconcile import Reconciler
from tests.unit.operator.test_reconcile import NS, SPEC, FakeCluster

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_stall_reason_only_past_the_timeout() -> None:
    assert stall_reason(T0, T0 + timedelta(seconds=30), 30) is None
    assert stall_reason(T0, T0 + timedelta(seconds=30.5), 30) == (
        "stalled: no progress for 30 s")
    assert stall_reason(T0, T0 + timedelta(seconds=2.5), 1.5) == (
        "stalled: no progress for 1.5 s")
    # No timeout configured, or no sign of progress known: never stalled.
    assert stall_reason(T0, T0 + timedelta(days=9), None) is None
    assert stall_reason(None, T0, 30) is None
    # A naive timestamp is UTC (what the store's SQLite dialect hands back without tz).
    assert stall_reason(T0.replace(tzinfo=None), T0 + timedelta(seconds=31), 30) is not None


def test_stall_timeout_is_an_execution_setting() -> None:
    assert ExecutionConfig().stall_timeout_seconds is None
    config = ExecutionConfig.model_validate({"stallTimeoutSeconds": 600})
    assert config.stall_timeout_seconds == 600
    with pytest.raises(ValueError):
        ExecutionConfig.model_validate({"stallTimeoutSeconds": 0})


@pytest.fixture
def sessions(tmp_path: Path) -> Any:
    return store.open_store(f"sqlite:///{tmp_path / 'ladder.db'}")


def running(cluster: FakeCluster, name: str) -> None:
    status = cluster.rayjobs[(NS, name)].setdefault("status", {})
    status.update({"jobStatus": "RUNNING", "jobDeploymentStatus": "Running",
                   "rayClusterName": f"{name}-abcde"})


def by_attempt(sessions: Any) -> dict[int, store.AttemptRow]:
    with sessions() as session:
        return {r.attempt: r for r in store.attempts(session, NS, "qs")}


def test_a_silent_running_trial_is_stopped_and_recorded_as_stalled(sessions: Any) -> None:
    cluster = FakeCluster()
    reconciler = Reconciler(cluster, sessions)
    spec = {**SPEC, "methods": ["full"], "execution": {"stallTimeoutSeconds": 2}}
    cluster.add_sweep("qs", spec)
    reconciler.reconcile(NS, "qs")
    (name,) = cluster.jobs()
    running(cluster, name)
    reconciler.reconcile(NS, "qs")
    assert by_attempt(sessions)[1].status == TrialState.RUNNING

    # An epoch written 1.2 s in is progress: 2.4 s after the start it has not stalled...
    time.sleep(1.2)
    trial = decode_trial(cluster.rayjobs[(NS, name)])
    assert trial is not None
    with sessions.begin() as session:
        store.record_epoch(session, AttemptKey(NS, "qs", trial.trial_id, 1), EpochRecord(
            epoch=1, train_loss=1.0, train_label_loss=1.0, eval_loss=1.0, learning_rate=0.1,
            samples_per_second=1.0, wall_seconds=1.0))
    time.sleep(1.2)
    reconciler.reconcile(NS, "qs")
    assert cluster.jobs() == [name] and by_attempt(sessions)[1].status == TrialState.RUNNING

    # ...but 2 s of silence after that epoch is a stall: RayJob deleted, attempt failed.
    time.sleep(1.2)
    result = reconciler.reconcile(NS, "qs")
    assert result is not None and name in result.deleted
    first = by_attempt(sessions)[1]
    assert first.status == TrialState.FAILED and first.oom_kind is None
    assert first.error == "stalled: no progress for 2 s"
    assert "TrialStalled" in cluster.reasons()
    # A stall is a failure like any other: the lane retries it (retries: 1).
    (again,) = cluster.jobs()
    assert again.endswith("-2") and again[:-2] == name[:-2]
    assert by_attempt(sessions)[2].status == TrialState.PENDING


def test_without_a_stall_timeout_a_silent_trial_runs_on(sessions: Any) -> None:
    cluster = FakeCluster()
    later = datetime.now(UTC) + timedelta(days=3)
    reconciler = Reconciler(cluster, sessions, clock=lambda: later)
    cluster.add_sweep("qs", {**SPEC, "methods": ["full"]})
    reconciler.reconcile(NS, "qs")
    (name,) = cluster.jobs()
    running(cluster, name)
    for _ in range(2):
        reconciler.reconcile(NS, "qs")
    assert cluster.jobs() == [name]
    assert by_attempt(sessions)[1].status == TrialState.RUNNING
    assert "TrialStalled" not in cluster.reasons()


def test_a_pending_trial_is_not_stalled(sessions: Any) -> None:
    """Waiting for pods (Initializing, no GPUs free) is queueing, not a hang."""
    cluster = FakeCluster()
    later = datetime.now(UTC) + timedelta(hours=1)
    reconciler = Reconciler(cluster, sessions, clock=lambda: later)
    cluster.add_sweep("qs", {**SPEC, "methods": ["full"],
                             "execution": {"stallTimeoutSeconds": 60}})
    reconciler.reconcile(NS, "qs")
    reconciler.reconcile(NS, "qs")
    assert len(cluster.jobs()) == 1
    assert by_attempt(sessions)[1].status == TrialState.PENDING
