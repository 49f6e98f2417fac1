"""The Sweep's status conditions, from the plan's status (pure).

Three conditions, in the Kubernetes convention (type, status, reason, message,
observedGeneration, lastTransitionTime):

- `Ready`: True once the sweep finished with at least one succeeded trial;
- `Progressing`: True while trials are pending or running or lanes still have work;
- `Suspended`: True while `spec.suspend` holds.

`lastTransitionTime` changes only when a condition's status changes; a new reason or message
under the same status keeps the old time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from orchestrator.core.plan import SweepPhase, SweepStatus

READY, PROGRESSING, SUSPENDED = "Ready", "Progressing", "Suspended"
TRUE, FALSE = "True", "False"


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC, to the second, as Kubernetes writes times."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def desired_conditions(status: SweepStatus, *, suspended: bool) -> list[dict[str, str]]:
    """type, status, reason and message of each condition (no times, no generation)."""
    phase = status.phase
    ready = phase is SweepPhase.SUCCEEDED
    progressing = phase in (SweepPhase.PENDING, SweepPhase.RUNNING)
    if progressing:
        progressing_reason = status.reason
    elif phase is SweepPhase.SUSPENDED:
        progressing_reason = "Suspended"
    elif phase is SweepPhase.DELETING:
        progressing_reason = "Deleting"
    else:
        progressing_reason = "Finished"
    return [
        {
            "type": READY,
            "status": TRUE if ready else FALSE,
            "reason": status.reason,
            "message": status.message,
        },
        {
            "type": PROGRESSING,
            "status": TRUE if progressing else FALSE,
            "reason": progressing_reason,
            "message": status.message,
        },
        {
            "type": SUSPENDED,
            "status": TRUE if suspended else FALSE,
            "reason": "SpecSuspend" if suspended else "NotSuspended",
            "message": (
                "spec.suspend is true: running trials are cancelled and none are launched"
                if suspended
                else "spec.suspend is false"
            ),
        },
    ]


def merge_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    desired: Sequence[Mapping[str, str]],
    *,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The conditions to store: `desired`, keeping each one's lastTransitionTime when its
    status did not change, and keeping conditions of other types untouched."""
    old = {c.get("type"): c for c in previous or () if isinstance(c, Mapping)}
    merged: list[dict[str, Any]] = []
    for item in desired:
        before = old.pop(item["type"], None)
        condition: dict[str, Any] = dict(item)
        if generation is not None:
            condition["observedGeneration"] = generation
        if before is not None and before.get("status") == item["status"] and before.get(
            "lastTransitionTime"
        ):
            condition["lastTransitionTime"] = before["lastTransitionTime"]
        else:
            condition["lastTransitionTime"] = timestamp(now)
        merged.append(condition)
    merged.extend(dict(c) for c in old.values())
    return merged
