"""The lane state machine: where one lane's climb up the model ladder stands, and what's next.

docs/paper.md, "The escalation procedure", and docs/architecture.md, "Trial lifecycle": run the
smallest model; if it succeeds, run the next larger one; stop at the first out-of-memory run
and record the lane's ceiling (the largest model that fitted). Non-OOM failures are retried
up to `escalation.retries` times, then fail the lane.

The design is stateless: `lane_progress` is a pure function of a snapshot (the lane's trials and
every attempt observed for them), and every decision is recomputed from the store on each pass.
That is the opposite of Ray Tune's schedulers, which are stateful: they keep their trials'
history in memory and are told of each result as it comes (`on_trial_result`,
`on_trial_complete`). Stateless fits restarts better: the same snapshot always gives the same
answer, so a restarted controller or runner resumes exactly where it was, with nothing to
rebuild or replay.

Rules, walking the ladder smallest model first and looking at each
trial's latest attempt (by attempt number):

- no attempt: launch attempt 1 of this trial;
- succeeded: it is the ceiling so far; go on to the next model;
- oom (any kind): `stop-lane` caps the lane here; `continue` goes on to the next model, and
  the lane ends capped only if the top model ran out of memory;
- failed: relaunch while the trial's failed attempts are at most `retries`, else the lane fails;
- cancelled: relaunch likewise (a cancellation is not the trial's fault and is not counted as
  a failure; it only fails the lane if earlier failures already exhausted the retries);
- skipped: the lane was stopped before it reached this trial; it is over (`CANCELLED`);
- pending or running: the lane waits.

Any pending or running attempt anywhere in the lane makes it wait: it launches nothing until
that attempt ends. Attempt numbers are 1-based, and a relaunch takes the highest number
observed plus one, so a number is never reused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter

from orchestrator.core.grid import GridPoint, Lane
from orchestrator.core.lifecycle import (
    ACTIVE_STATES,
    LaneState,
    OOMKind,
    TrialState,
    latest_attempts,
)
from orchestrator.core.spec import Escalation, OnOOM


@dataclass(frozen=True, slots=True)
class AttemptObservation:
    """What a backend observed of one attempt of one trial (from the store or the cluster)."""

    trial_id: str
    attempt: int
    state: TrialState
    oom_kind: OOMKind | None = None
    best_eval_loss: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class LaneProgress:
    """One lane's position on its ladder, and the one decision it implies.

    - `launch`: the trial and attempt number to launch next, if the lane wants one now.
    - `active`: the lane's pending or running attempts, smallest model first.
    - `ceiling`: the largest model that succeeded (so far, or when the lane stopped).
    - `stopped_at`: the trial whose OOM or failure ended the lane (terminal lanes only).
    - `oom_kind`: the kind of that OOM, when an OOM ended the lane.
    - `never_run`: once the lane is terminal, the trials above its stop that it will never run
      (recorded as skipped by `plan` where they have no attempt yet); empty otherwise.
    """

    lane: Lane
    state: LaneState
    launch: tuple[GridPoint, int] | None
    active: tuple[tuple[GridPoint, int], ...]
    ceiling: GridPoint | None
    stopped_at: GridPoint | None
    oom_kind: OOMKind | None
    never_run: tuple[GridPoint, ...]

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal


_LADDER_ORDER = attrgetter("model_index")


def _one_trial(_observation: AttemptObservation) -> None:
    """The key that puts every observation under one trial (`latest_attempts`)."""


def latest_attempt(observations: Sequence[AttemptObservation]) -> AttemptObservation | None:
    """The observation with the highest attempt number (the last one given, on a tie)."""
    return latest_attempts(observations, key=_one_trial).get(None)


@dataclass(frozen=True, slots=True)
class _Decision:
    """Where the walk up a lane's ladder stopped: its next launch, or its end, or a wait."""

    ceiling: GridPoint | None = None
    launch: tuple[GridPoint, int] | None = None
    state: LaneState | None = None  # set when the walk ends the lane
    stopped_at: GridPoint | None = None
    oom_kind: OOMKind | None = None
    never_run: tuple[GridPoint, ...] = ()


def _active_attempts(
    ladder: Sequence[GridPoint], attempts: Mapping[str, Sequence[AttemptObservation]]
) -> tuple[list[tuple[GridPoint, int]], bool]:
    """The lane's pending or running attempts, smallest model first, and whether it has any
    attempt at all."""
    active: list[tuple[GridPoint, int]] = []
    observed_any = False
    for trial in ladder:
        observations = attempts.get(trial.trial_id)
        if observations:
            observed_any = True
            active.extend((trial, obs.attempt) for obs in observations
                          if obs.state in ACTIVE_STATES)
    active.sort(key=lambda item: (item[0].model_index, item[1]))
    return active, observed_any


def _walk_ladder(
    ladder: Sequence[GridPoint],
    attempts: Mapping[str, Sequence[AttemptObservation]],
    escalation: Escalation,
) -> _Decision:
    """Climb the ladder by each trial's latest attempt until one decides (the rules: the
    module's docstring)."""
    stop_lane = escalation.on_oom is OnOOM.STOP_LANE
    top = len(ladder) - 1
    ceiling: GridPoint | None = None
    for position, trial in enumerate(ladder):
        observations = attempts.get(trial.trial_id) or ()
        latest = latest_attempt(observations) if observations else None
        if latest is None:
            return _Decision(ceiling, launch=(trial, 1))
        above = tuple(ladder[position + 1 :])
        outcome = latest.state
        if outcome is TrialState.SUCCEEDED:
            ceiling = trial
            if position == top:
                return _Decision(ceiling, state=LaneState.COMPLETED)
        elif outcome is TrialState.OOM:
            if stop_lane or position == top:
                return _Decision(ceiling, state=LaneState.CAPPED, stopped_at=trial,
                                 oom_kind=latest.oom_kind, never_run=above)
            # `continue`: on to the next model
        elif outcome is TrialState.FAILED or outcome is TrialState.CANCELLED:
            # A cancellation is not a failure, but it never buys retries past the bound.
            failures = sum(1 for obs in observations if obs.state is TrialState.FAILED)
            if failures <= escalation.retries:
                return _Decision(ceiling, launch=(trial, latest.attempt + 1))
            return _Decision(ceiling, state=LaneState.FAILED, stopped_at=trial, never_run=above)
        elif outcome is TrialState.SKIPPED:
            return _Decision(ceiling, state=LaneState.CANCELLED,
                             never_run=tuple(ladder[position:]))
        else:
            return _Decision(ceiling)  # pending or running: the lane waits on it
    return _Decision(ceiling)


def lane_progress(
    lane: Lane,
    trials: Sequence[GridPoint],
    attempts: Mapping[str, Sequence[AttemptObservation]],
    escalation: Escalation,
) -> LaneProgress:
    """The lane's state and its next launch, from every attempt observed for its trials.

    `trials` are the lane's trials (any order: they are climbed by `model_index`); `attempts`
    maps trial ids to their observed attempts, in any order; ids of other lanes are ignored.
    Two steps: the lane's active attempts (`_active_attempts`), and the walk up the ladder
    (`_walk_ladder`); an active attempt anywhere makes the lane wait, whatever the walk found.
    """
    ladder = sorted(trials, key=_LADDER_ORDER)
    active, observed_any = _active_attempts(ladder, attempts)
    decision = _walk_ladder(ladder, attempts, escalation)
    if active:
        return LaneProgress(
            lane=lane,
            state=LaneState.RUNNING,
            launch=None,
            active=tuple(active),
            ceiling=decision.ceiling,
            stopped_at=None,
            oom_kind=None,
            never_run=(),
        )
    state = decision.state
    if state is None:
        state = LaneState.RUNNING if observed_any else LaneState.PENDING
    return LaneProgress(
        lane=lane,
        state=state,
        launch=decision.launch,
        active=(),
        ceiling=decision.ceiling,
        stopped_at=decision.stopped_at,
        oom_kind=decision.oom_kind,
        never_run=decision.never_run,
    )


def stop_reason(progress: LaneProgress) -> str:
    """A human sentence saying why a terminal lane stopped (for skipped trials' records)."""
    lane = progress.lane.name
    stopped = progress.stopped_at
    if progress.state is LaneState.CAPPED and stopped is not None:
        kind = f" ({progress.oom_kind.value})" if progress.oom_kind is not None else ""
        return f"lane {lane} is capped: {stopped.model} ran out of memory{kind}"
    if progress.state is LaneState.FAILED and stopped is not None:
        return f"lane {lane} failed: {stopped.model} failed and has no retries left"
    if progress.state is LaneState.CANCELLED:
        return f"lane {lane} was stopped before it reached this model"
    return f"lane {lane} is {progress.state.value}"
