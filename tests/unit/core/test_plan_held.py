"""`plan` with capacity held outside the sweep's active attempts (`Observed.held`: finished
trials' clusters KubeRay keeps until ttlSecondsAfterFinished, other tenants' pods) and with
attempts waiting in a Kueue queue (`Observed.queued`: they hold nothing)."""

from __future__ import annotations

from orchestrator.core.escalation import AttemptObservation
from orchestrator.core.grid import expand
from orchestrator.core.lifecycle import TrialState
from orchestrator.core.plan import LaunchTrial, Observed, RecordUnlaunched, plan
from orchestrator.core.scheduler import Capacity
from orchestrator.core.spec import Sweep, SweepSpec

# Eight lanes of one 8-GPU model each: every lane head needs 8 GPUs.
SPEC = SweepSpec(
    ladder=["m"], methods=["lora"],
    adapters=[{"rank": r, "alphas": [2 * r]} for r in (8, 16, 32, 64, 128, 256, 512, 1024)],
    resources={"workers": 8, "gpusPerWorker": 1}, parallelism=100,
)
GRID = expand(Sweep(name="s", spec=SPEC))
CAPACITY = Capacity(gpus=16, cpus=10_000)


def launches(observed: Observed) -> list[LaunchTrial]:
    return [a for a in plan(GRID, SPEC, observed).actions if isinstance(a, LaunchTrial)]


def test_nothing_held_fills_the_capacity() -> None:
    assert len(launches(Observed(attempts={}, capacity=CAPACITY))) == 2


def test_finished_clusters_still_present_keep_new_trials_out() -> None:
    """The issue's case: capacity 16, two finished trials' clusters still hold 16 GPUs."""
    held = Capacity(gpus=16, cpus=0)
    assert launches(Observed(attempts={}, capacity=CAPACITY, held=held)) == []
    assert len(launches(Observed(attempts={}, capacity=CAPACITY,
                                 held=Capacity(gpus=8, cpus=0)))) == 1


def test_held_capacity_never_makes_a_trial_unschedulable() -> None:
    """Held GPUs come back; only a trial larger than the whole capacity is recorded."""
    decided = plan(GRID, SPEC, Observed(attempts={}, capacity=CAPACITY,
                                        held=Capacity(gpus=16, cpus=0)))
    assert not [a for a in decided.actions if isinstance(a, RecordUnlaunched)]


def test_queued_attempts_hold_nothing() -> None:
    trials = GRID.all_trials()
    active = {t.trial_id: [AttemptObservation(t.trial_id, 1, TrialState.PENDING)]
              for t in trials[:2]}
    keys = frozenset((t.trial_id, 1) for t in trials[:2])
    assert launches(Observed(attempts=active, capacity=CAPACITY)) == []
    assert len(launches(Observed(attempts=active, capacity=CAPACITY, queued=keys))) == 2
    # Admitted (no longer queued): they hold their GPUs again.
    one = frozenset(list(keys)[:1])
    assert len(launches(Observed(attempts=active, capacity=CAPACITY, queued=one))) == 1


def test_the_status_says_why_nothing_runs() -> None:
    decided = plan(GRID, SPEC, Observed(attempts={}, capacity=CAPACITY,
                                        held=Capacity(gpus=16, cpus=0)))
    assert decided.status.reason == "WaitingForGPUs"
    assert decided.status.message.startswith("Waiting for GPUs: 16 are held outside")
    running = plan(GRID, SPEC, Observed(attempts={}, capacity=CAPACITY,
                                        held=Capacity(gpus=8, cpus=0)))
    assert running.status.reason != "WaitingForGPUs"  # one trial launched
