"""Faults of one trial: a trial that hangs.

(A RayJob deleted behind the controller's back is covered by
tests/k8s/test_operator.py::test_rayjob_deleted_behind_the_controllers_back_runs_again: the
attempt is recorded cancelled, "RayJob ... is gone", and runs again as the next attempt.)

A hung trial: the KubeRay stand-in's `hold` behaviour keeps the RayJob Running forever and
runs nothing, so the attempt never writes an epoch. With `execution.stallTimeoutSeconds` the
controller stops it (deletes the RayJob) and records the attempt failed, "stalled: no
progress for N s"; the lane retries it (retries: 1), the retry hangs too, the lane fails.
"""

from __future__ import annotations

import time

import pytest

from orchestrator.lifecycle import TrialState
from tests.k8s.kuberay_standin import Behaviour, KubeRayStandIn
from tests.k8s.operator_harness import wait_for
from tests.reliability.rig import SMALL, SWEEP, Rig

pytestmark = pytest.mark.k8s

STALL_SECONDS = 3


@pytest.mark.timeout(180)
def test_a_hung_trial_is_stopped_and_recorded_as_stalled(rig: Rig) -> None:
    assert rig.standin is not None
    rig.standin.behave(KubeRayStandIn.for_model(SMALL), Behaviour(hold=True))
    name = "hang"
    text = SWEEP.replace("methods: [full, lora]", "methods: [full]")
    rig.cp.kubectl_ok("-n", rig.namespace, "apply", "-f", "-", input=rig.sweep_text(
        name, text=text, execution={"stallTimeoutSeconds": STALL_SECONDS}))
    controller = rig.controller()
    started = time.monotonic()
    status = rig.wait_finished(name, timeout=120)
    elapsed = time.monotonic() - started
    detail = rig.diagnose(name)

    assert status["phase"] == "Failed", detail
    (lane,) = status["lanes"]
    assert lane["state"] == "failed" and lane["stoppedAt"] == SMALL, detail
    assert status["trials"]["failed"] == 1 and status["trials"]["skipped"] == 2, detail
    rows = [r for r in rig.rows(name) if r.model == SMALL]
    assert [(r.attempt, r.status) for r in rows] == [
        (1, TrialState.FAILED), (2, TrialState.FAILED)], detail
    assert {r.status for r in rig.rows(name) if r.model != SMALL} == {TrialState.SKIPPED}
    for row in rows:
        assert row.error == f"stalled: no progress for {STALL_SECONDS} s", detail
        assert row.finished_at is not None and row.started_at is not None
        assert (row.finished_at - row.started_at).total_seconds() >= STALL_SECONDS, detail
    # Each attempt's RayJob was created once and deleted when it stalled; nothing is left.
    assert len(rig.standin.seen) == 2 == len(set(rig.standin.seen)), detail
    wait_for("the stalled RayJobs to be gone", lambda: rig.rayjobs(name) == [], timeout=30)
    assert not rig.standin.jobs, detail
    reasons = [e.reason for e in rig.kube.core.list_namespaced_event(rig.namespace).items]
    assert reasons.count("TrialStalled") == 2, reasons
    assert elapsed >= 2 * STALL_SECONDS
    assert controller.alive() and rig.standin.errors == []
