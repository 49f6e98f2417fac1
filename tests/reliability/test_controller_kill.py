"""The controller SIGKILLed at random moments during a sweep, and started again.

Each seed draws its own schedule: how many kills (2 to 4), how long the controller lives
before each (0.3 to 6 s: while it imports, while it launches, while trials end and the lane
climbs) and how long it stays dead (0 to 1.5 s). RayJobs keep running while the controller
is dead (the KubeRay stand-in runs their entrypoints), so trials end unobserved and the
restarted controller must pick them up. The sweep must end exactly as an undisturbed one
(`rig.assert_sweep_intact`): complete, each attempt once in the store, no RayJob created
twice or left running, the status right.

Seeds 0-2 run by default; 3-22 are the soak (`LADDER_SOAK=1 python -m pytest -m soak
tests/reliability`).
"""

from __future__ import annotations

import random
import time

import pytest

from tests.k8s.operator_harness import wait_for
from tests.reliability.rig import Rig, assert_sweep_intact

pytestmark = pytest.mark.k8s

FAST_SEEDS = range(3)
SOAK_SEEDS = range(3, 23)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [
    *FAST_SEEDS, *(pytest.param(seed, marks=pytest.mark.soak) for seed in SOAK_SEEDS),
])
def test_sweep_survives_controller_sigkills(rig: Rig, seed: int) -> None:
    chance = random.Random(seed)
    name = f"kill-{seed}"
    controller = rig.controller()
    rig.submit(name)
    kills = chance.randint(2, 4)
    done_early = False
    for _ in range(kills):
        deadline = time.monotonic() + chance.uniform(0.3, 6.0)
        while time.monotonic() < deadline:
            if rig.status(name).get("phase") == "Succeeded":
                done_early = True
                break
            time.sleep(0.1)
        if done_early:
            break
        assert controller.alive(), rig.diagnose(name)
        controller.kill()
        time.sleep(chance.uniform(0.0, 1.5))
        controller.start()
    rig.wait_finished(name)
    # A few passes after the end: nothing more is launched, deleted or rewritten.
    wait_for("the controller to settle", lambda: controller.alive() and len(
        rig.rayjobs(name)) == len(rig.standin.seen if rig.standin else []), timeout=30)
    time.sleep(2.0)
    assert controller.alive(), rig.diagnose(name)
    assert controller.starts >= 2, "the sweep ended before the first kill: too fast to test"
    assert_sweep_intact(rig, name)
    assert rig.standin is not None and rig.standin.errors == []
