"""The lane state machine (orchestrator.core.escalation): tables of snapshots, an exhaustive walk
over short outcome sequences against a step-by-step reference, and property tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core.escalation import (
    AttemptObservation,
    LaneProgress,
    lane_progress,
    stop_reason,
)
from orchestrator.core.grid import GridPoint, Lane
from orchestrator.core.lifecycle import LaneState, Method, OOMKind, TrialState
from orchestrator.core.spec import PAPER_LADDER, Escalation, OnOOM, ResourceShape

S, OOM, F, C, K = (
    TrialState.SUCCEEDED,
    TrialState.OOM,
    TrialState.FAILED,
    TrialState.CANCELLED,
    TrialState.SKIPPED,
)
P, R = TrialState.PENDING, TrialState.RUNNING
STOP, CONTINUE = OnOOM.STOP_LANE, OnOOM.CONTINUE
LADDER3 = ("m-small", "m-base", "m-large")
ONE_GPU = ResourceShape(workers=1, gpus_per_worker=1, cpus_per_worker=1)


def make_lane(name: str = "lora-r32-a32-dss0.5-seed0") -> Lane:
    return Lane(index=0, name=name, method=Method.LORA, rank=32, alpha=32, dss_alpha=0.5, seed=0)


def make_trials(lane: Lane, ladder: Sequence[str] = LADDER3) -> tuple[GridPoint, ...]:
    return tuple(
        GridPoint(trial_id=f"{lane.name}/{i}", lane=lane, model=m, model_index=i, resources=ONE_GPU)
        for i, m in enumerate(ladder)
    )


LANE = make_lane()
TRIALS = make_trials(LANE)


def escalation(on_oom: OnOOM = STOP, retries: int = 1) -> Escalation:
    return Escalation(on_oom=on_oom, retries=retries)


def snapshot(
    *entries: tuple[int, int, TrialState] | tuple[int, int, TrialState, OOMKind],
    trials: Sequence[GridPoint] = TRIALS,
) -> dict[str, list[AttemptObservation]]:
    """(model index, attempt, state[, oom kind]) entries as the observations of `trials`."""
    attempts: dict[str, list[AttemptObservation]] = {}
    for index, attempt, state, *kind in entries:
        oom_kind = kind[0] if kind else (OOMKind.GPU if state is OOM else None)
        trial_id = trials[index].trial_id
        attempts.setdefault(trial_id, []).append(
            AttemptObservation(trial_id, attempt, state, oom_kind=oom_kind)
        )
    return attempts


def progress_of(
    attempts: Mapping[str, Sequence[AttemptObservation]],
    esc: Escalation | None = None,
    trials: Sequence[GridPoint] = TRIALS,
) -> LaneProgress:
    return lane_progress(trials[0].lane, trials, attempts, esc or escalation())


def index(trial: GridPoint | None) -> int | None:
    return None if trial is None else trial.model_index


# -- what the lane does next, by snapshot ---------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "esc", "state", "launch", "ceiling", "stopped_at", "never_run"),
    [
        pytest.param((), escalation(), LaneState.PENDING, (0, 1), None, None, (), id="fresh"),
        pytest.param(
            ((0, 1, S),), escalation(), LaneState.RUNNING, (1, 1), 0, None, (), id="climbs"
        ),
        pytest.param(
            ((0, 1, S), (1, 1, S), (2, 1, S)),
            escalation(),
            LaneState.COMPLETED,
            None,
            2,
            None,
            (),
            id="completed",
        ),
        pytest.param(
            ((0, 1, S), (1, 1, OOM)),
            escalation(),
            LaneState.CAPPED,
            None,
            0,
            1,
            (2,),
            id="oom-caps",
        ),
        pytest.param(
            ((0, 1, OOM),), escalation(), LaneState.CAPPED, None, None, 0, (1, 2), id="oom-at-first"
        ),
        pytest.param(
            ((0, 1, S), (1, 1, S), (2, 1, OOM)),
            escalation(),
            LaneState.CAPPED,
            None,
            1,
            2,
            (),
            id="oom-at-top",
        ),
        pytest.param(
            ((0, 1, F),), escalation(retries=1), LaneState.RUNNING, (0, 2), None, None, (),
            id="failure-retried",
        ),
        pytest.param(
            ((0, 1, F), (0, 2, F)),
            escalation(retries=1),
            LaneState.FAILED,
            None,
            None,
            0,
            (1, 2),
            id="retries-exhausted",
        ),
        pytest.param(
            ((0, 1, S), (1, 1, F)),
            escalation(retries=0),
            LaneState.FAILED,
            None,
            0,
            1,
            (2,),
            id="no-retries",
        ),
        pytest.param(
            ((0, 1, F), (0, 2, S), (1, 1, S)),
            escalation(retries=1),
            LaneState.RUNNING,
            (2, 1),
            1,
            None,
            (),
            id="retry-succeeded",
        ),
        pytest.param(
            ((0, 1, C),), escalation(retries=0), LaneState.RUNNING, (0, 2), None, None, (),
            id="cancelled-relaunched",
        ),
        pytest.param(
            ((0, 1, C), (0, 2, C), (0, 3, F)),
            escalation(retries=1),
            LaneState.RUNNING,
            (0, 4),
            None,
            None,
            (),
            id="cancellations-are-not-failures",
        ),
        pytest.param(
            ((0, 1, F), (0, 2, C), (0, 3, F)),
            escalation(retries=1),
            LaneState.FAILED,
            None,
            None,
            0,
            (1, 2),
            id="failures-counted-across-cancellations",
        ),
        pytest.param(
            ((0, 1, F), (0, 2, C)),
            escalation(retries=0),
            LaneState.FAILED,
            None,
            None,
            0,
            (1, 2),
            id="cancelled-after-retries-ran-out",
        ),
        pytest.param(
            ((0, 1, S), (1, 1, K)),
            escalation(),
            LaneState.CANCELLED,
            None,
            0,
            None,
            (1, 2),
            id="skipped-stops-the-lane",
        ),
        pytest.param(
            ((0, 2, F), (0, 1, F), (0, 3, C)),
            escalation(retries=2),
            LaneState.RUNNING,
            (0, 4),
            None,
            None,
            (),
            id="attempts-in-any-order",
        ),
    ],
)
def test_next_decision(
    entries: tuple[tuple[int, int, TrialState], ...],
    esc: Escalation,
    state: LaneState,
    launch: tuple[int, int] | None,
    ceiling: int | None,
    stopped_at: int | None,
    never_run: tuple[int, ...],
) -> None:
    progress = progress_of(snapshot(*entries), esc)
    assert progress.state is state
    assert (
        None if progress.launch is None else (progress.launch[0].model_index, progress.launch[1])
    ) == launch
    assert index(progress.ceiling) == ceiling
    assert index(progress.stopped_at) == stopped_at
    assert tuple(t.model_index for t in progress.never_run) == never_run
    assert progress.active == ()


@pytest.mark.parametrize(
    ("entries", "active"),
    [
        pytest.param(((0, 1, P),), ((0, 1),), id="pending"),
        pytest.param(((0, 1, S), (1, 1, R)), ((1, 1),), id="running"),
        pytest.param(((0, 1, F), (0, 2, R)), ((0, 2),), id="retry-running"),
        pytest.param(((0, 1, OOM), (2, 1, R)), ((2, 1),), id="stray-above-a-stop"),
        pytest.param(((0, 1, R), (0, 2, F)), ((0, 1),), id="stale-older-attempt"),
    ],
)
def test_an_active_attempt_makes_the_lane_wait(
    entries: tuple[tuple[int, int, TrialState], ...], active: tuple[tuple[int, int], ...]
) -> None:
    progress = progress_of(snapshot(*entries))
    assert progress.state is LaneState.RUNNING
    assert progress.launch is None
    assert [(t.model_index, a) for t, a in progress.active] == list(active)
    assert progress.stopped_at is None and progress.never_run == ()


@pytest.mark.parametrize(
    ("entries", "state", "launch", "ceiling", "stopped_at", "oom_kind"),
    [
        pytest.param(((0, 1, OOM),), LaneState.RUNNING, (1, 1), None, None, None, id="moves-on"),
        pytest.param(
            ((0, 1, OOM), (1, 1, S), (2, 1, S)),
            LaneState.COMPLETED,
            None,
            2,
            None,
            None,
            id="completes-past-an-oom",
        ),
        pytest.param(
            ((0, 1, S), (1, 1, OOM, OOMKind.HOST), (2, 1, OOM, OOMKind.BUDGET)),
            LaneState.CAPPED,
            None,
            0,
            2,
            OOMKind.BUDGET,
            id="capped-by-the-top-model",
        ),
        pytest.param(
            ((0, 1, S), (1, 1, S), (2, 1, OOM, OOMKind.PREDICTED)),
            LaneState.CAPPED,
            None,
            1,
            2,
            OOMKind.PREDICTED,
            id="top-predicted",
        ),
        pytest.param(
            ((0, 1, OOM), (1, 1, F), (1, 2, F)),
            LaneState.FAILED,
            None,
            None,
            1,
            None,
            id="failures-still-fail-it",
        ),
    ],
)
def test_on_oom_continue(
    entries: tuple[tuple[int, int, TrialState], ...],
    state: LaneState,
    launch: tuple[int, int] | None,
    ceiling: int | None,
    stopped_at: int | None,
    oom_kind: OOMKind | None,
) -> None:
    progress = progress_of(snapshot(*entries), escalation(CONTINUE, retries=1))
    assert progress.state is state
    assert (
        None if progress.launch is None else (progress.launch[0].model_index, progress.launch[1])
    ) == launch
    assert index(progress.ceiling) == ceiling
    assert index(progress.stopped_at) == stopped_at
    assert progress.oom_kind is oom_kind


@pytest.mark.parametrize("kind", list(OOMKind), ids=[k.value for k in OOMKind])
def test_every_oom_kind_caps_the_lane(kind: OOMKind) -> None:
    progress = progress_of(snapshot((0, 1, S), (1, 1, OOM, kind)))
    assert progress.state is LaneState.CAPPED
    assert progress.oom_kind is kind
    assert kind.value in stop_reason(progress)


def test_observations_of_other_lanes_are_ignored() -> None:
    other = make_trials(make_lane("full-dss0.5-seed0"))
    attempts = snapshot((0, 1, OOM), trials=other)
    assert progress_of(attempts).state is LaneState.PENDING


def test_trials_may_be_given_in_any_order() -> None:
    attempts = snapshot((0, 1, S))
    progress = lane_progress(LANE, tuple(reversed(TRIALS)), attempts, escalation())
    assert progress.launch == (TRIALS[1], 1)


# -- the paper's example -------------------------------------------------------------------


def test_paper_example_climbs_until_the_first_oom() -> None:
    """Small, Base and Large fit; XL runs out of GPU memory: the lane's ceiling is Large."""
    trials = make_trials(LANE, PAPER_LADDER)
    fits = {"google/flan-t5-small", "google/flan-t5-base", "google/flan-t5-large"}
    attempts: dict[str, list[AttemptObservation]] = {}
    launched = []
    progress = lane_progress(LANE, trials, attempts, escalation())
    while progress.launch is not None:
        trial, attempt = progress.launch
        launched.append(trial.model)
        outcome = S if trial.model in fits else OOM
        kind = OOMKind.GPU if outcome is OOM else None
        attempts[trial.trial_id] = [AttemptObservation(trial.trial_id, attempt, outcome, kind)]
        progress = lane_progress(LANE, trials, attempts, escalation())
    assert launched == list(PAPER_LADDER)
    assert progress.state is LaneState.CAPPED
    assert progress.ceiling is not None and progress.ceiling.model == "google/flan-t5-large"
    assert progress.stopped_at is not None and progress.stopped_at.model == "google/flan-t5-xl"
    assert progress.oom_kind is OOMKind.GPU
    assert "google/flan-t5-xl ran out of memory (gpu)" in stop_reason(progress)


# -- invariants ------------------------------------------------------------------------------


def latest_state(observations: Iterable[AttemptObservation]) -> TrialState | None:
    ordered = sorted(observations, key=lambda o: o.attempt)
    return ordered[-1].state if ordered else None


def check_invariants(
    progress: LaneProgress,
    attempts: Mapping[str, Sequence[AttemptObservation]],
    esc: Escalation,
    trials: Sequence[GridPoint],
) -> None:
    """What must hold for any snapshot, however odd."""
    observed = {t.trial_id: list(attempts.get(t.trial_id, ())) for t in trials}
    any_active = any(not o.state.is_terminal for obs in observed.values() for o in obs)
    passable = {S} if esc.on_oom is STOP else {S, OOM}
    if any_active:
        assert progress.launch is None, "launched while an attempt is active"
        assert progress.state is LaneState.RUNNING
    if progress.state.is_terminal:
        assert progress.launch is None and progress.active == ()
    else:
        assert progress.stopped_at is None and progress.never_run == ()
    if progress.launch is not None:
        trial, attempt = progress.launch
        used = [o.attempt for o in observed[trial.trial_id]]
        assert attempt >= 1 and attempt not in used and attempt > max(used, default=0)
        for lower in trials[: trial.model_index]:
            assert latest_state(observed[lower.trial_id]) in passable, "skipped a rung"
        failures = sum(o.state is F for o in observed[trial.trial_id])
        assert failures <= esc.retries, "retried past the bound"
    if progress.ceiling is not None:
        assert latest_state(observed[progress.ceiling.trial_id]) is S
        if progress.stopped_at is not None:
            assert progress.ceiling.model_index < progress.stopped_at.model_index
    if progress.state is LaneState.FAILED:
        assert progress.stopped_at is not None
        failures = sum(o.state is F for o in observed[progress.stopped_at.trial_id])
        assert failures > esc.retries
    if progress.state is LaneState.CAPPED:
        assert progress.stopped_at is not None
        assert latest_state(observed[progress.stopped_at.trial_id]) is OOM
    if progress.stopped_at is not None:
        assert all(t.model_index > progress.stopped_at.model_index for t in progress.never_run)
        assert len(progress.never_run) == len(trials) - 1 - progress.stopped_at.model_index
    if progress.state is LaneState.PENDING:
        assert not any(observed.values()) and progress.launch == (trials[0], 1)


def drive(
    outcomes: Sequence[TrialState | tuple[TrialState, OOMKind]],
    esc: Escalation,
    trials: Sequence[GridPoint] = TRIALS,
) -> tuple[list[tuple[int, int]], LaneProgress]:
    """Launch what the lane asks for and end each attempt with the next outcome, checking
    the invariants at every step. Returns the launches and the final progress."""
    attempts: dict[str, list[AttemptObservation]] = {}
    launched: list[tuple[int, int]] = []
    lane = trials[0].lane
    progress = lane_progress(lane, trials, attempts, esc)
    for outcome in outcomes:
        check_invariants(progress, attempts, esc, trials)
        if progress.launch is None:
            break
        trial, attempt = progress.launch
        assert (trial.model_index, attempt) not in launched, "launched an attempt twice"
        launched.append((trial.model_index, attempt))
        running = AttemptObservation(trial.trial_id, attempt, R)
        attempts.setdefault(trial.trial_id, []).append(running)
        waiting = lane_progress(lane, trials, attempts, esc)
        check_invariants(waiting, attempts, esc, trials)
        assert waiting.active == ((trial, attempt),) and waiting.launch is None
        state, kind = outcome if isinstance(outcome, tuple) else (outcome, OOMKind.GPU)
        attempts[trial.trial_id][-1] = AttemptObservation(
            trial.trial_id, attempt, state, oom_kind=kind if state is OOM else None
        )
        progress = lane_progress(lane, trials, attempts, esc)
    check_invariants(progress, attempts, esc, trials)
    return launched, progress


def reference(
    outcomes: Sequence[TrialState], models: int, esc: Escalation
) -> tuple[list[tuple[int, int]], LaneState | None, int | None, int | None]:
    """The escalation procedure told as a sequence of events, written independently of the
    snapshot-based implementation: (launches, final state or None if still going, ceiling,
    stopped at)."""
    model, attempt, failures = 0, 0, 0
    launches: list[tuple[int, int]] = []
    state: LaneState | None = None
    ceiling = stopped = None
    for outcome in outcomes:
        if state is not None:
            break
        attempt += 1
        launches.append((model, attempt))
        if outcome is S or (outcome is OOM and esc.on_oom is CONTINUE):
            ceiling = model if outcome is S else ceiling
            if model == models - 1:
                state = LaneState.COMPLETED if outcome is S else LaneState.CAPPED
                stopped = None if outcome is S else model
            model, attempt, failures = model + 1, 0, 0
        elif outcome is OOM:
            state, stopped = LaneState.CAPPED, model
        elif outcome is F:
            failures += 1
            if failures > esc.retries:
                state, stopped = LaneState.FAILED, model
    return launches, state, ceiling, stopped


OUTCOMES = (S, OOM, F, C)


@pytest.mark.parametrize("on_oom", [STOP, CONTINUE], ids=["stop-lane", "continue"])
@pytest.mark.parametrize("retries", [0, 1, 2], ids=lambda r: f"retries{r}")
def test_exhaustive_outcome_sequences_match_the_reference(on_oom: OnOOM, retries: int) -> None:
    """Every sequence of 6 outcomes (prefixes are checked on the way) on a 3-model ladder."""
    esc = escalation(on_oom, retries)
    for outcomes in itertools.product(OUTCOMES, repeat=6):
        launched, progress = drive(outcomes, esc)
        expected_launches, state, ceiling, stopped = reference(outcomes, len(TRIALS), esc)
        assert launched == expected_launches, outcomes
        if state is None:
            assert progress.state is LaneState.RUNNING, outcomes
            assert progress.launch is not None
        else:
            assert progress.state is state, outcomes
            assert index(progress.stopped_at) == stopped, outcomes
        assert index(progress.ceiling) == ceiling, outcomes


# -- property tests ----------------------------------------------------------------------------

STATES = st.sampled_from(list(TrialState))
KINDS = st.sampled_from(list(OOMKind))
ESCALATIONS = st.builds(
    Escalation, on_oom=st.sampled_from(list(OnOOM)), retries=st.integers(0, 3)
)


@st.composite
def ladders(draw: st.DrawFn) -> tuple[GridPoint, ...]:
    size = draw(st.integers(1, 5))
    return make_trials(LANE, [f"m{i}" for i in range(size)])


@st.composite
def snapshots(draw: st.DrawFn) -> tuple[tuple[GridPoint, ...], dict[str, list[AttemptObservation]]]:
    """Any observations at all, including ones no correct backend produces."""
    trials = draw(ladders())
    attempts: dict[str, list[AttemptObservation]] = {}
    for trial in trials:
        numbers = draw(st.lists(st.integers(1, 6), unique=True, max_size=4))
        observations = [
            AttemptObservation(trial.trial_id, n, draw(STATES), oom_kind=draw(KINDS))
            for n in numbers
        ]
        if observations:
            attempts[trial.trial_id] = observations
    return trials, attempts


@settings(max_examples=400)
@given(snapshot=snapshots(), esc=ESCALATIONS)
def test_invariants_hold_for_any_snapshot(
    snapshot: tuple[tuple[GridPoint, ...], dict[str, list[AttemptObservation]]], esc: Escalation
) -> None:
    trials, attempts = snapshot
    progress = lane_progress(LANE, trials, attempts, esc)
    check_invariants(progress, attempts, esc, trials)
    assert lane_progress(LANE, trials, attempts, esc) == progress  # a function of the snapshot


OUTCOME_WITH_KIND = st.one_of(
    st.sampled_from(OUTCOMES), st.tuples(st.just(OOM), KINDS)
)


@settings(max_examples=300)
@given(
    trials=ladders(),
    esc=ESCALATIONS,
    outcomes=st.lists(OUTCOME_WITH_KIND, max_size=25),
)
def test_driven_lanes_keep_the_invariants(
    trials: tuple[GridPoint, ...],
    esc: Escalation,
    outcomes: list[TrialState | tuple[TrialState, OOMKind]],
) -> None:
    launched, progress = drive(outcomes, esc, trials)
    plain = [o[0] if isinstance(o, tuple) else o for o in outcomes]
    expected, state, ceiling, stopped = reference(plain, len(trials), esc)
    assert launched == expected
    assert index(progress.ceiling) == ceiling
    if state is not None:
        assert progress.state is state and index(progress.stopped_at) == stopped
        if state is LaneState.CAPPED:
            last = outcomes[len(launched) - 1]
            assert progress.oom_kind is (last[1] if isinstance(last, tuple) else OOMKind.GPU)


@settings(max_examples=200)
@given(trials=ladders(), esc=ESCALATIONS, outcomes=st.lists(st.sampled_from(OUTCOMES), max_size=25))
def test_a_trial_is_attempted_at_most_retries_plus_one_times_failing(
    trials: tuple[GridPoint, ...], esc: Escalation, outcomes: list[TrialState]
) -> None:
    launched, _ = drive(outcomes, esc, trials)
    for model in range(len(trials)):
        attempts = [n for m, n in launched if m == model]
        failed = [o for (m, _), o in zip(launched, outcomes, strict=False) if m == model and o is F]
        assert len(failed) <= esc.retries + 1
        assert attempts == list(range(1, len(attempts) + 1))  # 1-based, in order, no reuse
