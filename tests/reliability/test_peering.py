"""Two controller replicas at once, with Kopf peering (`ladder controller --peering NAME`).

Kopf keeps each replica's keep-alive in the status of a KopfPeering object; the replica of
the highest priority acts and the others pause (LADDER_PEERING_PRIORITY here: 200 and 100).
Replica A starts first and drives the sweep; B starts and must stay paused (no reconcile
pass, no handler at all); A is SIGKILLed mid-sweep (no goodbye in the peering object) and B
takes over once A's keep-alive is older than LADDER_PEERING_LIFETIME (6 s here), and ends
the sweep. Nothing may be duplicated (`rig.assert_sweep_intact`).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from orchestrator.core.lifecycle import TrialState
from tests.k8s.operator_harness import ControllerProcess, wait_for
from tests.reliability.rig import Rig, assert_sweep_intact

pytestmark = pytest.mark.k8s

PEERING = "ladder"
LIFETIME = 6
ACTED = re.compile(r"(Timer|Handler|Resuming handler) '[a-z_]+' succeeded|"
                   r"(Creation|Resuming|Update) is processed")


def actions(controller: ControllerProcess) -> int:
    """How many handlers (reconcile passes) this replica has run, from its log: Kopf logs
    each one. (The liveness probe's `passes` would say it too, but Kopf caches probes.)"""
    return len(ACTED.findall(controller.log_path.read_text(errors="replace")))


def peers(rig: Rig) -> dict[str, Any]:
    body = rig.kube.custom.get_namespaced_custom_object(
        "kopf.dev", "v1", rig.namespace, "kopfpeerings", PEERING)
    return dict(body.get("status") or {})


@pytest.mark.timeout(300)
def test_one_replica_acts_and_the_other_takes_over(rig: Rig,
                                                   kopf_peering_crd: list[str]) -> None:
    rig.cp.kubectl_ok("-n", rig.namespace, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}}))
    settings = {"LADDER_PEERING_LIFETIME": str(LIFETIME)}
    first = rig.controller(name="replica-a", peering=PEERING,
                           env={**settings, "LADDER_PEERING_PRIORITY": "200"})
    name = "peered"
    rig.submit(name, epoch_seconds=1.5)
    why = lambda: rig.diagnose(name)  # noqa: E731
    wait_for("replica A to act", lambda: actions(first) > 0, timeout=90, diagnose=why)
    wait_for("A's keep-alive", lambda: len(peers(rig)) == 1, timeout=30, diagnose=why)

    second = rig.controller(name="replica-b", peering=PEERING,
                            env={**settings, "LADDER_PEERING_PRIORITY": "100"})
    wait_for("B's keep-alive", lambda: len(peers(rig)) == 2, timeout=60, diagnose=why)
    # (A replica with a peering name starts paused and stays so while it sees a peer of
    # higher priority: Kopf's `peering.mandatory`; so B never acted, not even at start.)
    # While A lives, A alone acts: the sweep moves on (the ladder climbs), B does nothing.
    wait_for("the second rung", lambda: any(
        r.model_index == 1 and r.status == TrialState.RUNNING for r in rig.rows(name)),
        timeout=90, diagnose=why)
    a_actions = actions(first)
    time.sleep(3.0)
    assert actions(first) > a_actions, why()
    assert actions(second) == 0, second.logs()

    first.kill()
    killed = time.monotonic()
    wait_for("B to take over", lambda: actions(second) > 0, timeout=LIFETIME + 60,
             diagnose=why)
    took = time.monotonic() - killed
    rig.wait_finished(name, timeout=180)
    time.sleep(2.0)
    assert second.alive() and second.starts == 1, why()
    assert "Resuming operations after the pause" in second.logs(), second.logs()
    assert took <= LIFETIME + 30, f"takeover took {took:.0f} s"
    assert_sweep_intact(rig, name)
    assert rig.standin is not None and rig.standin.errors == []
