"""The core's one entry point: `plan(grid, spec, observed) -> Plan`.

docs/architecture.md, "The plan loop".

Both backends (the local runner and the Kubernetes controller) observe, call `plan`, and carry
out its actions; they differ only in how they observe and how they act. `plan` is a pure,
deterministic function of its arguments, and idempotent: carrying out a plan's actions,
observing them, and planning again never repeats an action, and planning twice on the same
snapshot gives the same plan. Nothing is remembered between calls.

One pass settles what can be settled without running anything:

1. every lane's progress is computed (`escalation.lane_progress`);
2. a lane head predicted to run out of memory is recorded as an OOM of kind `predicted`
   instead of launched, and a head that needs more than the whole capacity is recorded as
   failed; both records are folded back in at once, so the lane moves on (or stops) in the
   same pass;
3. the never-run trials of a terminal lane are recorded as skipped, once;
4. the remaining heads, in priority order (`scheduler.launch_priority`: the lane with the
   most rungs left first, then the paper's lane order; the paper's order alone with
   `parallelism: 1`), are packed into free capacity by `scheduler.select_launches`, up to
   `spec.parallelism` trials at once;
5. with `spec.suspend` or `observed.deleting`, steps 2 to 4 are off: every pending or running
   attempt is cancelled and nothing is launched or recorded.

The status describes the sweep as it will be once the plan's actions are carried out (a
launch counts as a pending attempt, a cancellation as cancelled), so it does not change
between carrying the actions out and planning again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from orchestrator.core.escalation import (
    AttemptObservation,
    LaneProgress,
    lane_progress,
    latest_attempt,
    stop_reason,
)
from orchestrator.core.grid import Grid, GridPoint, Lane
from orchestrator.core.lifecycle import ACTIVE_STATES, LaneState, OOMKind, TrialState
from orchestrator.core.scheduler import (
    NO_CAPACITY,
    Capacity,
    demand,
    launch_priority,
    select_launches,
    unschedulable,
)
from orchestrator.core.spec import Escalation, SweepSpec


@dataclass(frozen=True, slots=True)
class Observed:
    """A backend's snapshot of the world.

    - `attempts`: trial id -> its observed attempts, in any order. Attempts of trial ids that
      are not in the grid are ignored (orphans are the caller's to clean up).
    - `capacity`: the whole capacity this sweep may use (for an autoscaled cluster, its
      maximum), not what is free now: what is in use is counted from the active attempts. A
      trial needing more than this is recorded as failed; an empty capacity (no GPU, no CPU)
      means "not known yet", and the plan waits instead.
    - `predicted_oom`: ids of trials whose memory estimate exceeds the device (the caller
      runs the estimator); ignored when `spec.escalation.predictOOM` is false.
    - `deleting`: the sweep is being deleted.
    - `held`: capacity in use outside this sweep's active attempts: a finished trial's
      cluster that still holds its GPUs (KubeRay keeps it for `ttlSecondsAfterFinished`),
      other tenants' pods. It is taken before anything is launched, but a trial needing
      more than the whole `capacity` is still the only one recorded as unschedulable.
    - `queued`: (trial id, attempt) of active attempts that wait in a queue (Kueue) and
      hold nothing until admitted; their demand is not counted as in use.
    """

    attempts: Mapping[str, Sequence[AttemptObservation]]
    capacity: Capacity
    predicted_oom: frozenset[str] = frozenset()
    deleting: bool = False
    held: Capacity = NO_CAPACITY
    queued: frozenset[tuple[str, int]] = frozenset()


@dataclass(frozen=True, slots=True)
class LaunchTrial:
    """Start this attempt of the trial (a RayJob, or a task on the local Ray runtime)."""

    trial: GridPoint
    attempt: int


@dataclass(frozen=True, slots=True)
class RecordUnlaunched:
    """Record an attempt that is never launched: predicted OOM, unschedulable, or skipped."""

    trial: GridPoint
    attempt: int
    state: TrialState
    oom_kind: OOMKind | None
    reason: str


@dataclass(frozen=True, slots=True)
class CancelTrial:
    """Stop a pending or running attempt (delete its RayJob) and record it cancelled."""

    trial: GridPoint
    attempt: int
    reason: str


Action = LaunchTrial | RecordUnlaunched | CancelTrial


class SweepPhase(StrEnum):
    """The Sweep's phase, as `kubectl get sweeps` shows it."""

    PENDING = "Pending"  # nothing observed or launched yet
    RUNNING = "Running"
    SUSPENDED = "Suspended"  # spec.suspend: running attempts are cancelled, nothing launched
    SUCCEEDED = "Succeeded"  # every lane is terminal and at least one trial succeeded
    FAILED = "Failed"  # every lane is terminal and no trial succeeded
    DELETING = "Deleting"

    @property
    def is_finished(self) -> bool:
        return self in (SweepPhase.SUCCEEDED, SweepPhase.FAILED)


@dataclass(frozen=True, slots=True)
class LaneStatus:
    name: str
    state: LaneState
    ceiling_model: str | None
    stopped_at_model: str | None
    oom_kind: OOMKind | None


@dataclass(frozen=True, slots=True)
class BestTrial:
    trial_id: str
    lane: str
    model: str
    eval_loss: float


@dataclass(frozen=True, slots=True)
class SweepStatus:
    """The sweep at a glance.

    `counts` holds every trial state, over the latest attempt of each trial that has one
    (trials never attempted are in none: `trials_total - sum(counts)`); `trials_done` counts
    trials with a final outcome (a terminal latest attempt the lane will not relaunch);
    `oom_count` counts OOM attempts, predicted ones included. `reason` (CamelCase) and
    `message` are for a Kubernetes condition.
    """

    phase: SweepPhase
    counts: dict[TrialState, int]
    trials_total: int
    trials_done: int
    oom_count: int
    lanes: tuple[LaneStatus, ...]
    best: BestTrial | None
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do now (cancellations, then records, then launches) and the resulting status."""

    actions: tuple[Action, ...]
    status: SweepStatus

    @property
    def launches(self) -> tuple[LaunchTrial, ...]:
        return tuple(a for a in self.actions if isinstance(a, LaunchTrial))

    @property
    def records(self) -> tuple[RecordUnlaunched, ...]:
        return tuple(a for a in self.actions if isinstance(a, RecordUnlaunched))

    @property
    def cancels(self) -> tuple[CancelTrial, ...]:
        return tuple(a for a in self.actions if isinstance(a, CancelTrial))


_NONE: tuple[AttemptObservation, ...] = ()


@dataclass(slots=True)
class _LaneWork:
    """One lane during a plan: its trials, its attempts (observed plus folded), its progress.

    `view` is the observed mapping itself until something is folded into this lane; then it
    is the lane's `own` copy, so most lanes of a large sweep cost no copying.
    """

    lane: Lane
    trials: tuple[GridPoint, ...]
    observed: Mapping[str, Sequence[AttemptObservation]]
    progress: LaneProgress
    records: list[RecordUnlaunched] = field(default_factory=list)
    own: dict[str, Sequence[AttemptObservation]] | None = None

    @property
    def view(self) -> Mapping[str, Sequence[AttemptObservation]]:
        return self.observed if self.own is None else self.own

    def attempts(self, trial: GridPoint) -> Sequence[AttemptObservation]:
        return self.view.get(trial.trial_id, _NONE)

    def fold(self, trial: GridPoint, attempt: int, state: TrialState, **details: Any) -> None:
        """Treat the attempt as observed in `state` (replacing what was observed of it)."""
        if self.own is None:
            self.own = {t.trial_id: self.observed.get(t.trial_id, _NONE) for t in self.trials}
        observation = AttemptObservation(trial.trial_id, attempt, state, **details)
        others = tuple(o for o in self.own[trial.trial_id] if o.attempt != attempt)
        self.own[trial.trial_id] = (*others, observation)

    def refresh(self, escalation: Escalation) -> LaneProgress:
        self.progress = lane_progress(self.lane, self.trials, self.view, escalation)
        return self.progress


def plan(grid: Grid, spec: SweepSpec, observed: Observed) -> Plan:
    """The actions that move the sweep forward from the observed snapshot, and its status."""
    escalation = spec.escalation
    halted = spec.suspend or observed.deleting
    predicted = observed.predicted_oom if escalation.predict_oom else frozenset()
    total = observed.capacity
    capacity_known = not total.is_empty

    cancels: list[CancelTrial] = []
    work: list[_LaneWork] = []
    for lane in grid.lanes:
        trials = grid.trials[lane.name]
        attempts = observed.attempts
        item = _LaneWork(lane, trials, attempts, lane_progress(lane, trials, attempts, escalation))
        work.append(item)
        if halted:
            if item.progress.active:
                reason = (
                    "the sweep is being deleted" if observed.deleting else "the sweep is suspended"
                )
                for trial, attempt in item.progress.active:
                    cancels.append(CancelTrial(trial, attempt, reason))
                    item.fold(trial, attempt, TrialState.CANCELLED, error=reason)
                item.refresh(escalation)
        elif item.progress.launch is not None or item.progress.never_run:
            _settle(item, escalation, predicted, total if capacity_known else None)

    launches: list[LaunchTrial] = []
    if not halted:
        in_use = Capacity.total(
            demand(t) for w in work for t, a in w.progress.active
            if (t.trial_id, a) not in observed.queued
        ).plus(observed.held)
        running = sum(len(w.progress.active) for w in work)
        heads: dict[str, tuple[_LaneWork, int]] = {}
        candidates: list[GridPoint] = []
        for w in work:
            if w.progress.launch is not None:
                head, attempt = w.progress.launch
                heads[head.trial_id] = (w, attempt)
                candidates.append(head)
        if running < spec.parallelism:  # else nothing launches: no order needed
            candidates.sort(key=lambda t: launch_priority(
                t, len(heads[t.trial_id][0].trials), spec.parallelism))
        chosen = select_launches(
            candidates,
            total=total,
            in_use=in_use,
            running=running,
            parallelism=spec.parallelism,
        )
        for trial in chosen:
            item, attempt = heads[trial.trial_id]
            launches.append(LaunchTrial(trial, attempt))
            item.fold(trial, attempt, TrialState.PENDING)
            item.refresh(escalation)

    records = [record for item in work for record in item.records]
    status = _status(spec, observed, work)
    return Plan(actions=(*cancels, *records, *launches), status=status)


def _settle(
    item: _LaneWork,
    escalation: Escalation,
    predicted: frozenset[str],
    total: Capacity | None,
) -> None:
    """Record the lane heads that can't be launched, and a terminal lane's never-run trials."""
    progress = item.progress
    # Each round records one more attempt and the lane moves on or stops, so this ends; the
    # bound only guards against a bug turning into a hang.
    for _ in range(len(item.trials) * (escalation.retries + 2) + 1):
        if progress.launch is None:
            break
        trial, attempt = progress.launch
        if trial.trial_id in predicted:
            reason = (
                f"predicted out of memory: the memory estimate of {trial.model} exceeds the device"
            )
            record = RecordUnlaunched(trial, attempt, TrialState.OOM, OOMKind.PREDICTED, reason)
        elif total is not None and unschedulable(trial, total):
            need = demand(trial)
            reason = (
                f"unschedulable: needs {need.gpus} GPUs and {need.cpus} CPUs, "
                f"the sweep has {total.gpus} GPUs and {total.cpus} CPUs"
            )
            record = RecordUnlaunched(trial, attempt, TrialState.FAILED, None, reason)
        else:
            break
        item.records.append(record)
        item.fold(trial, attempt, record.state, oom_kind=record.oom_kind, error=reason)
        progress = item.refresh(escalation)
    if progress.is_terminal and progress.never_run:
        reason = f"skipped: {stop_reason(progress)}"
        for trial in progress.never_run:
            if not item.attempts(trial):
                item.records.append(RecordUnlaunched(trial, 1, TrialState.SKIPPED, None, reason))
                item.fold(trial, 1, TrialState.SKIPPED, error=reason)


def _status(spec: SweepSpec, observed: Observed, work: list[_LaneWork]) -> SweepStatus:
    counts = dict.fromkeys(TrialState, 0)
    done = ooms = started = 0
    best: tuple[float, int, int, GridPoint] | None = None
    for item in work:
        relaunch = item.progress.launch[0].trial_id if item.progress.launch else None
        view = item.view
        for trial in item.trials:
            observations = view.get(trial.trial_id)
            if not observations:
                continue
            started += 1
            latest = observations[0] if len(observations) == 1 else latest_attempt(observations)
            assert latest is not None
            counts[latest.state] += 1
            if latest.state not in ACTIVE_STATES and trial.trial_id != relaunch:
                done += 1
            for obs in observations:
                if obs.state is TrialState.OOM:
                    ooms += 1
                elif obs.state is TrialState.SUCCEEDED and obs.best_eval_loss is not None:
                    key = (obs.best_eval_loss, item.lane.index, trial.model_index, trial)
                    if best is None or key[:3] < best[:3]:
                        best = key
    lanes = tuple(
        LaneStatus(
            name=item.lane.name,
            state=item.progress.state,
            ceiling_model=item.progress.ceiling.model if item.progress.ceiling else None,
            stopped_at_model=item.progress.stopped_at.model if item.progress.stopped_at else None,
            oom_kind=item.progress.oom_kind,
        )
        for item in work
    )
    best_trial = (
        None
        if best is None
        else BestTrial(best[3].trial_id, best[3].lane.name, best[3].model, best[0])
    )
    total_trials = sum(len(item.trials) for item in work)
    finished = all(item.progress.is_terminal for item in work)

    if observed.deleting:
        phase = SweepPhase.DELETING
    elif finished:
        phase = SweepPhase.SUCCEEDED if counts[TrialState.SUCCEEDED] else SweepPhase.FAILED
    elif spec.suspend:
        phase = SweepPhase.SUSPENDED
    elif started:
        phase = SweepPhase.RUNNING
    else:
        phase = SweepPhase.PENDING
    reason, message = _condition(
        phase, counts, total_trials, done, ooms, len(work), best_trial, observed.capacity,
        held=observed.held,
    )
    return SweepStatus(
        phase=phase,
        counts=counts,
        trials_total=total_trials,
        trials_done=done,
        oom_count=ooms,
        lanes=lanes,
        best=best_trial,
        reason=reason,
        message=message,
    )


def _condition(
    phase: SweepPhase,
    counts: dict[TrialState, int],
    total: int,
    done: int,
    ooms: int,
    lanes: int,
    best: BestTrial | None,
    capacity: Capacity,
    *,
    held: Capacity = NO_CAPACITY,
) -> tuple[str, str]:
    """A CamelCase reason and a one-sentence message for the sweep's Ready condition."""
    active = counts[TrialState.RUNNING] + counts[TrialState.PENDING]
    progress = f"{done} of {total} trials done"
    best_text = f"; best eval loss {best.eval_loss:.5g} ({best.model}, {best.lane})" if best else ""
    if phase is SweepPhase.DELETING:
        return "Deleting", f"The sweep is being deleted; {progress}, running trials cancelled."
    if phase is SweepPhase.SUCCEEDED:
        return "Completed", (
            f"All {lanes} lanes finished: {counts[TrialState.SUCCEEDED]} trials succeeded, "
            f"{counts[TrialState.OOM]} ran out of memory, {counts[TrialState.FAILED]} failed, "
            f"{counts[TrialState.SKIPPED]} skipped{best_text}."
        )
    if phase is SweepPhase.FAILED:
        return "NoTrialSucceeded", (
            f"All {lanes} lanes finished and no trial succeeded: "
            f"{counts[TrialState.OOM]} ran out of memory, {counts[TrialState.FAILED]} failed, "
            f"{counts[TrialState.SKIPPED]} skipped."
        )
    if phase is SweepPhase.SUSPENDED:
        return "Suspended", f"Suspended with {progress}; nothing runs until spec.suspend is false."
    if capacity.is_empty:
        return "NoCapacity", f"Waiting for capacity (no GPU or CPU is available yet); {progress}."
    if active == 0 and held.gpus > 0:
        return "WaitingForGPUs", (
            f"Waiting for GPUs: {held.gpus} are held outside this sweep's running trials "
            f"(finished trials' clusters not yet deleted, other pods); {progress}."
        )
    if phase is SweepPhase.PENDING:
        return "Pending", f"No trial launched yet; {progress}."
    return "TrialsRunning", (f"{progress}, {active} running, {ooms} out of memory{best_text}.")


# A Sweep's status is stored in etcd with the object (1.5 MiB in all): a lane takes about 120
# bytes there, so a grid at the maxTrials ceiling (25,000 lanes) would not fit. The status
# lists at most this many lanes: those that have started (in lane order), then pending ones;
# `lanesOmitted` counts the rest (the store has every trial, `ladder status` shows them).
MAX_STATUS_LANES = 1000


def _status_lanes(lanes: Sequence[LaneStatus]) -> Sequence[LaneStatus]:
    if len(lanes) <= MAX_STATUS_LANES:
        return lanes
    started = [lane for lane in lanes if lane.state is not LaneState.PENDING]
    pending = [lane for lane in lanes if lane.state is LaneState.PENDING]
    chosen = {id(lane) for lane in (started + pending)[:MAX_STATUS_LANES]}
    return [lane for lane in lanes if id(lane) in chosen]


def status_dict(status: SweepStatus, *, observed_generation: int | None = None) -> dict[str, Any]:
    """The status as the Sweep CR stores it: camelCase, JSON-ready, nulls kept (they clear
    stale values under a merge patch)."""
    counts = status.counts
    body: dict[str, Any] = {"phase": status.phase.value}
    if observed_generation is not None:
        body["observedGeneration"] = observed_generation
    body["trials"] = {
        "total": status.trials_total,
        "done": status.trials_done,
        **{state.value: counts.get(state, 0) for state in TrialState},
    }
    body["ooms"] = status.oom_count
    body["best"] = (
        None
        if status.best is None
        else {
            "trialId": status.best.trial_id,
            "lane": status.best.lane,
            "model": status.best.model,
            "evalLoss": status.best.eval_loss,
        }
    )
    shown = _status_lanes(status.lanes)
    body["lanes"] = [
        {
            "name": lane.name,
            "state": lane.state.value,
            "ceiling": lane.ceiling_model,
            "stoppedAt": lane.stopped_at_model,
            "oomKind": lane.oom_kind.value if lane.oom_kind is not None else None,
        }
        for lane in shown
    ]
    # Present only when lanes were left out (a null clears it under a merge patch).
    body["lanesOmitted"] = len(status.lanes) - len(shown) or None
    body["reason"] = status.reason
    body["message"] = status.message
    return body
