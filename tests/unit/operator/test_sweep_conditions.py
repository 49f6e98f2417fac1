"""The Sweep's conditions (orchestrator.operator.conditions): Ready, Progressing and
Suspended, with lastTransitionTime kept while a condition's status stays the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from orchestrator.core.lifecycle import TrialState
from orchestrator.core.plan import SweepPhase, SweepStatus
from orchestrator.operator.conditions import (
    PROGRESSING,
    READY,
    SUSPENDED,
    desired_conditions,
    merge_conditions,
    timestamp,
)

T0 = datetime(2025, 11, 23, 10, 0, 0, tzinfo=UTC)


def status(phase: SweepPhase, reason: str = "TrialsRunning", message: str = "m") -> SweepStatus:
    return SweepStatus(
        phase=phase, counts=dict.fromkeys(TrialState, 0), trials_total=3, trials_done=0,
        oom_count=0, lanes=(), best=None, reason=reason, message=message,
    )


def by_type(conditions: list[dict]) -> dict[str, dict]:
    return {c["type"]: c for c in conditions}


def test_running() -> None:
    got = by_type(desired_conditions(status(SweepPhase.RUNNING), suspended=False))
    assert got[READY]["status"] == "False"
    assert got[PROGRESSING] == {"type": PROGRESSING, "status": "True",
                                "reason": "TrialsRunning", "message": "m"}
    assert got[SUSPENDED]["status"] == "False"


def test_succeeded() -> None:
    got = by_type(desired_conditions(status(SweepPhase.SUCCEEDED, "Completed"), suspended=False))
    assert got[READY]["status"] == "True" and got[READY]["reason"] == "Completed"
    assert got[PROGRESSING]["status"] == "False" and got[PROGRESSING]["reason"] == "Finished"


def test_failed() -> None:
    got = by_type(desired_conditions(status(SweepPhase.FAILED, "NoTrialSucceeded"),
                                     suspended=False))
    assert got[READY] | {"message": ""} == {"type": READY, "status": "False",
                                            "reason": "NoTrialSucceeded", "message": ""}
    assert got[PROGRESSING]["status"] == "False"


def test_suspended() -> None:
    got = by_type(desired_conditions(status(SweepPhase.SUSPENDED, "Suspended"), suspended=True))
    assert got[SUSPENDED]["status"] == "True" and got[SUSPENDED]["reason"] == "SpecSuspend"
    assert got[PROGRESSING]["status"] == "False" and got[PROGRESSING]["reason"] == "Suspended"


def test_transition_time_kept_while_status_unchanged() -> None:
    first = merge_conditions(
        None, desired_conditions(status(SweepPhase.PENDING, "Pending"), suspended=False),
        generation=1, now=T0,
    )
    assert {c["lastTransitionTime"] for c in first} == {"2025-11-23T10:00:00Z"}
    assert {c["observedGeneration"] for c in first} == {1}
    later = T0 + timedelta(minutes=5)
    second = by_type(merge_conditions(
        first, desired_conditions(status(SweepPhase.RUNNING, "TrialsRunning", "new"),
                                  suspended=False),
        generation=2, now=later,
    ))
    # Progressing stayed True: same time, new reason and message and generation.
    assert second[PROGRESSING]["lastTransitionTime"] == "2025-11-23T10:00:00Z"
    assert second[PROGRESSING]["reason"] == "TrialsRunning"
    assert second[PROGRESSING]["message"] == "new"
    assert second[PROGRESSING]["observedGeneration"] == 2
    third = by_type(merge_conditions(
        list(second.values()),
        desired_conditions(status(SweepPhase.SUCCEEDED, "Completed"), suspended=False),
        generation=2, now=later + timedelta(minutes=1),
    ))
    assert third[READY]["lastTransitionTime"] == "2025-11-23T10:06:00Z"
    assert third[PROGRESSING]["lastTransitionTime"] == "2025-11-23T10:06:00Z"
    assert third[SUSPENDED]["lastTransitionTime"] == "2025-11-23T10:00:00Z"


def test_foreign_conditions_are_kept() -> None:
    other = {"type": "Custom", "status": "True", "lastTransitionTime": "x"}
    merged = merge_conditions(
        [other], desired_conditions(status(SweepPhase.RUNNING), suspended=False),
        generation=None, now=T0,
    )
    assert merged[-1] == other
    assert all("observedGeneration" not in c for c in merged)


def test_timestamp_is_utc() -> None:
    other_zone = T0.astimezone(timezone(timedelta(hours=9)))
    assert timestamp(other_zone) == "2025-11-23T10:00:00Z"
