"""An error inside a reconcile pass becomes a condition and an event on its Sweep, never an
exception that crash-loops the handler (issue 12, class 2); transient errors still go back to
Kopf, which retries after an interval. And a pass over an unchanged Sweep does not expand or
estimate its grid again (class 1: a pass materialises only what it uses)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator import store
from orchestrator.operator import handlers, reconcile
from orchestrator.operator.kube import KubeError
from orchestrator.operator.reconcile import RECONCILE_ERROR, Reconciler
from tests.unit.operator.test_reconcile import NS, SPEC, FakeCluster


@pytest.fixture
def sessions(tmp_path: Path) -> Any:
    return store.open_store(f"sqlite:///{tmp_path / 'ladder.db'}")


class BrokenCluster(FakeCluster):
    """Refuses every RayJob with an error the reconciler does not expect."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def create_rayjob(self, manifest: Mapping[str, Any]) -> bool:
        raise self.error


def test_an_unexpected_error_becomes_a_condition_and_one_event(sessions: Any) -> None:
    cluster = BrokenCluster(RuntimeError("boom postgresql://u:secret@db/x"))
    cluster.add_sweep("qs", SPEC)
    reconciler = Reconciler(cluster, sessions)
    memo = SimpleNamespace(reconciler=reconciler)
    handlers.sweep_changed(name="qs", namespace=NS, memo=memo)  # does not raise

    status = cluster.sweeps[(NS, "qs")]["status"]
    assert status["reason"] == RECONCILE_ERROR
    assert status["message"].startswith("RuntimeError: boom")
    assert "secret" not in status["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == RECONCILE_ERROR
    assert cluster.reasons() == [RECONCILE_ERROR]

    # The timer's next pass fails the same way (after recording the attempt whose RayJob
    # never came as lost): no second ReconcileError event, no exception.
    result = reconciler.reconcile(NS, "qs")
    assert result is not None and result.error == status["message"]
    assert cluster.reasons().count(RECONCILE_ERROR) == 1


def test_a_sweep_that_reconciles_again_clears_the_error(sessions: Any) -> None:
    cluster = BrokenCluster(RuntimeError("boom"))
    cluster.add_sweep("qs", SPEC)
    reconciler = Reconciler(cluster, sessions)
    reconciler.reconcile(NS, "qs")
    healthy = FakeCluster()
    healthy.sweeps = cluster.sweeps
    reconciler.cluster = healthy
    result = reconciler.reconcile(NS, "qs")
    assert result is not None and result.error is None and result.launched
    status = healthy.sweeps[(NS, "qs")]["status"]
    assert status["phase"] == "Running"
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Ready"] != RECONCILE_ERROR


def test_transient_errors_still_go_back_to_kopf(sessions: Any) -> None:
    cluster = BrokenCluster(KubeError("apiserver away", status=503))
    cluster.add_sweep("qs", SPEC)
    memo = SimpleNamespace(reconciler=Reconciler(cluster, sessions))
    with pytest.raises(handlers.kopf.TemporaryError):
        handlers.sweep_changed(name="qs", namespace=NS, memo=memo)
    assert RECONCILE_ERROR not in cluster.reasons()


def test_a_deleted_sweep_whose_pass_fails_still_loses_its_rayjobs(sessions: Any) -> None:
    cluster = FakeCluster()
    cluster.add_sweep("qs", SPEC)
    reconciler = Reconciler(cluster, sessions)
    reconciler.reconcile(NS, "qs")
    assert cluster.jobs()
    cluster.sweeps[(NS, "qs")]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the store refused")

    reconciler._observe = broken  # type: ignore[method-assign]
    result = reconciler.reconcile(NS, "qs")
    assert result is not None and result.error and result.remaining_rayjobs == 0
    assert cluster.jobs() == []


def test_a_pass_over_an_unchanged_sweep_expands_nothing(
    sessions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = reconcile.expand

    def counting(sweep: Any) -> Any:
        calls.append(sweep.name)
        return real(sweep)

    monkeypatch.setattr(reconcile, "expand", counting)
    cluster = FakeCluster()
    cluster.add_sweep("qs", SPEC)
    reconciler = Reconciler(cluster, sessions)
    for _ in range(3):
        reconciler.reconcile(NS, "qs")
    assert calls == ["qs"]
    cluster.set_spec("qs", parallelism=1)  # a new spec: expanded again
    reconciler.reconcile(NS, "qs")
    assert calls == ["qs", "qs"]
