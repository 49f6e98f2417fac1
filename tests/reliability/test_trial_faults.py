"""Faults of one trial: a trial that hangs, a worker killed.

(A RayJob deleted behind the controller's back is covered by
tests/k8s/test_operator.py::test_rayjob_deleted_behind_the_controllers_back_runs_again: the
attempt is recorded cancelled, "RayJob ... is gone", and runs again as the next attempt.)

A hung trial: the KubeRay stand-in's `hold` behaviour keeps the RayJob Running forever and
runs nothing, so the attempt never writes an epoch. With `execution.stallTimeoutSeconds` the
controller stops it (deletes the RayJob) and records the attempt failed, "stalled: no
progress for N s"; the lane retries it (retries: 1), the retry hangs too, the lane fails.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from orchestrator.core.lifecycle import TrialState
from tests.k8s.kuberay_standin import Behaviour, KubeRayStandIn
from tests.k8s.operator_harness import wait_for
from tests.reliability.fast_worker import PID_FILE
from tests.reliability.rig import LARGE, MEDIUM, SMALL, SWEEP, Rig

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


@pytest.mark.timeout(180)
def test_a_killed_worker_fails_its_attempt_and_the_retry_runs(rig: Rig) -> None:
    """The worker process of a running trial SIGKILLed (what a crashed Ray worker looks like
    to the job: its entrypoint ends with exit code 137, no result written). The attempt is
    recorded failed from the RayJob's status, the lane retries it, the retry succeeds and the
    sweep ends as an undisturbed one would, with one failed attempt more."""
    name = "wkill"
    text = SWEEP.replace("methods: [full, lora]", "methods: [full]")
    rig.cp.kubectl_ok("-n", rig.namespace, "apply", "-f", "-",
                      input=rig.sweep_text(name, text=text, epoch_seconds=1.5))
    controller = rig.controller()
    first = wait_for("tiny-s past its first epoch", lambda: next((
        r for r in rig.rows(name) if r.model == SMALL and r.status == TrialState.RUNNING
        and r.epochs_completed >= 1), None), timeout=90, interval=0.1,
        diagnose=lambda: rig.diagnose(name))
    pid_file = rig.tmp / "runs" / name / first.trial_id / "1" / PID_FILE
    os.kill(int(pid_file.read_text()), signal.SIGKILL)

    status = rig.wait_finished(name, timeout=120)
    detail = rig.diagnose(name)
    assert status["phase"] == "Succeeded", detail
    (lane,) = status["lanes"]
    assert (lane["state"], lane.get("ceiling"), lane.get("stoppedAt")) == (
        "capped", MEDIUM, LARGE), detail
    small = [r for r in rig.rows(name) if r.model == SMALL]
    assert [(r.attempt, r.status) for r in small] == [
        (1, TrialState.FAILED), (2, TrialState.SUCCEEDED)], detail
    assert "exit code 137" in (small[0].error or ""), detail
    assert small[1].best_eval_loss is not None and len(small[1].epochs) == 2, detail
    assert rig.standin is not None
    assert len(rig.standin.seen) == len(set(rig.standin.seen)) == 4, detail
    assert all(job.done for job in rig.standin.jobs.values()), detail
    assert controller.alive() and rig.standin.errors == []
