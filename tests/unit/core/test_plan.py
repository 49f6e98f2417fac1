"""The core's entry point (orchestrator.core.plan): whole sweeps simulated to the end by a small
driver that carries out each plan's actions, plus the single-plan behaviours."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core.escalation import AttemptObservation
from orchestrator.core.grid import Grid, GridPoint, expand
from orchestrator.core.lifecycle import LaneState, Method, OOMKind, TrialState
from orchestrator.core.plan import (
    BestTrial,
    CancelTrial,
    LaunchTrial,
    Observed,
    Plan,
    RecordUnlaunched,
    SweepPhase,
    plan,
    status_dict,
)
from orchestrator.core.scheduler import Capacity, demand
from orchestrator.core.spec import PAPER_LADDER, AdapterSet, Sweep, SweepSpec

S, OOM, F, C = TrialState.SUCCEEDED, TrialState.OOM, TrialState.FAILED, TrialState.CANCELLED
SMALL, BASE, LARGE, XL = PAPER_LADDER
PAPER_CLUSTER = Capacity(gpus=8, cpus=224)
ONE_GPU_BELOW_XL = {"workers": 8, "overrides": {m: {"workers": 1} for m in PAPER_LADDER[:3]}}

Outcome = Callable[[GridPoint, int], AttemptObservation]


def paper_spec(**fields: object) -> SweepSpec:
    return SweepSpec(ladder=list(PAPER_LADDER), **fields)


def grid_of(spec: SweepSpec, name: str = "paper-grid") -> Grid:
    return expand(Sweep(name=name, spec=spec))


def paper_outcome(trial: GridPoint, attempt: int) -> AttemptObservation:
    """A stand-in for training, shaped like the paper's results: every method fits up to
    Large; at XL only QLoRA with rank >= 64 and alpha >= 128 fits (5 runs). Full fine-tuning
    of Large has the best loss (docs/paper.md, "Results", Table 3)."""
    lane = trial.lane
    fits = trial.model_index < 3 or (
        lane.method is Method.QLORA and (lane.rank or 0) >= 64 and (lane.alpha or 0) >= 128
    )
    if not fits:
        return AttemptObservation(trial.trial_id, attempt, OOM, oom_kind=OOMKind.GPU)
    loss = (0.2, 0.1, 0.06384, 0.0687)[trial.model_index]
    loss += {Method.FULL: 0.0, Method.LORA: 0.005, Method.QLORA: 0.006}[lane.method]
    if lane.rank is not None and lane.alpha is not None:
        loss += 0.001 * lane.rank / lane.alpha
    return AttemptObservation(trial.trial_id, attempt, S, best_eval_loss=loss)


@dataclass
class World:
    """Carries out plans the way a backend would, and checks the plan's promises."""

    grid: Grid
    spec: SweepSpec
    capacity: Capacity = PAPER_CLUSTER
    predicted: frozenset[str] = frozenset()
    attempts: dict[str, list[AttemptObservation]] = field(default_factory=dict)
    launched: list[tuple[str, int]] = field(default_factory=list)
    recorded: list[RecordUnlaunched] = field(default_factory=list)
    rounds: int = 0

    def __post_init__(self) -> None:
        self.trials = {t.trial_id: t for t in self.grid.all_trials()}

    def observed(self, *, deleting: bool = False) -> Observed:
        return Observed(
            attempts={k: tuple(v) for k, v in self.attempts.items()},
            capacity=self.capacity,
            predicted_oom=self.predicted,
            deleting=deleting,
        )

    def active(self) -> list[tuple[GridPoint, int]]:
        return [
            (self.trials[tid], obs.attempt)
            for tid, observations in self.attempts.items()
            for obs in observations
            if not obs.state.is_terminal
        ]

    def _put(self, observation: AttemptObservation) -> None:
        observations = self.attempts.setdefault(observation.trial_id, [])
        for i, existing in enumerate(observations):
            if existing.attempt == observation.attempt:
                observations[i] = observation
                return
        observations.append(observation)

    def step(self, *, deleting: bool = False) -> Plan:
        """Plan, check, carry the actions out, and check that planning again is a no-op."""
        observed = self.observed(deleting=deleting)
        decided = plan(self.grid, self.spec, observed)
        assert plan(self.grid, self.spec, observed) == decided, "not a function of its inputs"
        for action in decided.actions:
            trial_id = action.trial.trial_id
            used = {o.attempt for o in self.attempts.get(trial_id, ())}
            if isinstance(action, LaunchTrial):
                assert action.attempt not in used, "reused an attempt number"
                self.launched.append((trial_id, action.attempt))
                self._put(AttemptObservation(trial_id, action.attempt, TrialState.PENDING))
            elif isinstance(action, RecordUnlaunched):
                assert action.attempt not in used, "recorded over an attempt"
                self.recorded.append(action)
                self._put(
                    AttemptObservation(
                        trial_id, action.attempt, action.state, action.oom_kind,
                        error=action.reason,
                    )
                )
            elif isinstance(action, CancelTrial):
                assert action.attempt in used
                self._put(AttemptObservation(trial_id, action.attempt, C, error=action.reason))
        active = self.active()
        assert len(active) <= self.spec.parallelism or not decided.launches
        assert Capacity.total(demand(t) for t, _ in active).fits(self.capacity)
        again = plan(self.grid, self.spec, self.observed(deleting=deleting))
        assert again.actions == (), f"planning again repeated {again.actions[:3]}"
        assert again.status == decided.status, "the status changed by carrying the plan out"
        self.rounds += 1
        return decided

    def finish(self, outcome: Outcome) -> None:
        """Every pending or running attempt ends, as `outcome` says."""
        for trial, attempt in self.active():
            self._put(outcome(trial, attempt))

    def run(self, outcome: Outcome, *, max_rounds: int = 1000) -> Plan:
        for _ in range(max_rounds):
            decided = self.step()
            if decided.status.phase.is_finished:
                assert not self.active()
                return decided
            assert self.active(), "stuck: nothing runs and the sweep is not finished"
            self.finish(outcome)
        raise AssertionError("the sweep did not finish")


def lanes_by_state(decided: Plan) -> dict[LaneState, int]:
    states: dict[LaneState, int] = {}
    for lane in decided.status.lanes:
        states[lane.state] = states.get(lane.state, 0) + 1
    return states


# -- whole sweeps ----------------------------------------------------------------------------


def test_paper_grid_runs_like_the_paper() -> None:
    """One trial at a time on all 8 GPUs: lane by lane, smallest model first, as they did."""
    spec = paper_spec()
    world = World(grid_of(spec), spec)
    final = world.run(paper_outcome)

    assert len(world.grid.lanes) == 25
    expected_order = []
    for lane in world.grid.lanes:
        for trial in world.grid.trials[lane.name]:
            expected_order.append((trial.trial_id, 1))
            if paper_outcome(trial, 1).state is not S:
                break
    assert world.launched == expected_order  # the paper's sequential procedure, exactly
    assert len(world.launched) == len(set(world.launched)) == 100

    status = final.status
    assert status.phase is SweepPhase.SUCCEEDED and status.reason == "Completed"
    assert status.counts[S] == 80  # 25 each on Small, Base, Large; 5 on XL, all QLoRA
    assert status.counts[OOM] == status.oom_count == 20
    assert status.counts[TrialState.SKIPPED] == status.counts[F] == 0
    assert status.trials_total == status.trials_done == 100
    assert lanes_by_state(final) == {LaneState.CAPPED: 20, LaneState.COMPLETED: 5}
    xl_runs = [t for t, _ in world.launched if world.trials[t].model == XL]
    xl_successes = [t for t in xl_runs if world.attempts[t][-1].state is S]
    assert {world.trials[t].lane.method for t in xl_successes} == {Method.QLORA}
    assert status.best == BestTrial(
        trial_id=world.grid.trials[world.grid.lanes[0].name][2].trial_id,
        lane="full-dss0.5-seed0",
        model=LARGE,
        eval_loss=pytest.approx(0.06384),
    )
    full = status.lanes[0]
    assert (full.name, full.ceiling_model, full.stopped_at_model, full.oom_kind) == (
        "full-dss0.5-seed0", LARGE, XL, OOMKind.GPU
    )


def test_packing_one_gpu_trials_gives_the_same_results_in_fewer_rounds() -> None:
    sequential_spec = paper_spec()
    sequential = World(grid_of(sequential_spec), sequential_spec)
    sequential.run(paper_outcome)

    spec = paper_spec(resources=ONE_GPU_BELOW_XL, parallelism=8)
    world = World(grid_of(spec), spec)
    final = world.run(paper_outcome)

    assert sorted(world.launched) == sorted(sequential.launched)
    assert final.status.counts == plan(
        sequential.grid, sequential_spec, sequential.observed()
    ).status.counts
    # 75 one-GPU trials 8 at a time, then the 25 eight-GPU XL trials one at a time.
    assert sequential.rounds == 101 and world.rounds <= 10 + 25 + 3
    assert final.status.best is not None and final.status.best.model == LARGE


def test_predicted_ooms_are_recorded_not_launched() -> None:
    """The estimator says full and LoRA XL won't fit: the 13 runs that would have run out of
    memory after launching are recorded at once instead."""
    spec = paper_spec()
    grid = grid_of(spec)
    predicted = frozenset(
        t.trial_id for t in grid.all_trials() if t.model == XL and t.lane.method is not Method.QLORA
    )
    world = World(grid, spec, predicted=predicted)
    final = world.run(paper_outcome)

    assert len(predicted) == 13
    assert not predicted & {t for t, _ in world.launched}
    assert len(world.launched) == 87
    assert {r.trial.trial_id for r in world.recorded} == predicted
    assert all(r.state is OOM and r.oom_kind is OOMKind.PREDICTED for r in world.recorded)
    assert final.status.counts[OOM] == 20 and final.status.counts[S] == 80
    assert final.status.lanes[0].oom_kind is OOMKind.PREDICTED


def test_an_early_oom_skips_the_rest_of_the_lane_once() -> None:
    def full_stops_at_base(trial: GridPoint, attempt: int) -> AttemptObservation:
        if trial.lane.method is Method.FULL and trial.model_index >= 1:
            return AttemptObservation(trial.trial_id, attempt, OOM, oom_kind=OOMKind.HOST)
        return paper_outcome(trial, attempt)

    spec = paper_spec()
    world = World(grid_of(spec), spec)
    final = world.run(full_stops_at_base)

    full = world.grid.trials["full-dss0.5-seed0"]
    skipped = [r for r in world.recorded if r.state is TrialState.SKIPPED]
    assert [(r.trial.model, r.attempt) for r in skipped] == [(LARGE, 1), (XL, 1)]
    assert all("flan-t5-base ran out of memory (host)" in r.reason for r in skipped)
    assert (full[2].trial_id, 1) not in world.launched
    assert final.status.counts[TrialState.SKIPPED] == 2
    assert final.status.trials_done == final.status.trials_total == 100
    lane = final.status.lanes[0]
    assert (lane.state, lane.ceiling_model, lane.stopped_at_model) == (
        LaneState.CAPPED, SMALL, BASE
    )


def test_failures_are_retried_with_new_attempt_numbers() -> None:
    def first_attempt_fails(trial: GridPoint, attempt: int) -> AttemptObservation:
        if attempt == 1 and trial.model_index == 0:
            return AttemptObservation(trial.trial_id, attempt, F, error="NCCL timeout")
        return paper_outcome(trial, attempt)

    spec = paper_spec(escalation={"retries": 1})
    world = World(grid_of(spec), spec)
    final = world.run(first_attempt_fails)

    smalls = [world.grid.trials[lane.name][0].trial_id for lane in world.grid.lanes]
    for trial_id in smalls:
        assert [a for t, a in world.launched if t == trial_id] == [1, 2]
    assert final.status.counts[S] == 80 and final.status.counts[F] == 0  # latest attempts
    assert final.status.phase is SweepPhase.SUCCEEDED


def test_exhausted_retries_fail_every_lane_and_the_sweep() -> None:
    def always_fails(trial: GridPoint, attempt: int) -> AttemptObservation:
        return AttemptObservation(trial.trial_id, attempt, F, error="boom")

    spec = paper_spec(escalation={"retries": 2}, resources=ONE_GPU_BELOW_XL, parallelism=8)
    world = World(grid_of(spec), spec)
    final = world.run(always_fails)

    assert len(world.launched) == 25 * 3
    assert lanes_by_state(final) == {LaneState.FAILED: 25}
    assert final.status.phase is SweepPhase.FAILED
    assert final.status.reason == "NoTrialSucceeded"
    assert final.status.counts[TrialState.SKIPPED] == 75
    assert final.status.best is None


# -- single plans ------------------------------------------------------------------------------


def test_a_fresh_sweep_launches_the_first_lane_head() -> None:
    spec = paper_spec()
    grid = grid_of(spec)
    decided = plan(grid, spec, Observed(attempts={}, capacity=PAPER_CLUSTER))
    first = grid.trials[grid.lanes[0].name][0]
    assert decided.actions == (LaunchTrial(first, 1),)
    assert decided.status.phase is SweepPhase.RUNNING
    assert decided.status.counts[TrialState.PENDING] == 1
    assert decided.status.lanes[0].state is LaneState.RUNNING
    assert decided.status.lanes[1].state is LaneState.PENDING


@pytest.mark.parametrize(
    ("parallelism", "capacity", "launches"),
    [
        pytest.param(1, PAPER_CLUSTER, 1, id="paper-parallelism"),
        pytest.param(3, PAPER_CLUSTER, 3, id="parallelism-bound"),
        pytest.param(25, PAPER_CLUSTER, 8, id="gpu-bound"),
        pytest.param(25, Capacity(gpus=8, cpus=5), 5, id="cpu-bound"),
        pytest.param(100, Capacity(gpus=64, cpus=512), 25, id="every-lane-head"),
    ],
)
def test_parallelism_and_capacity_bound_the_launches(
    parallelism: int, capacity: Capacity, launches: int
) -> None:
    spec = paper_spec(resources=ONE_GPU_BELOW_XL, parallelism=parallelism)
    grid = grid_of(spec)
    decided = plan(grid, spec, Observed(attempts={}, capacity=capacity))
    assert len(decided.launches) == launches
    heads = [grid.trials[lane.name][0] for lane in grid.lanes]
    assert [a.trial for a in decided.launches] == heads[:launches]  # the paper's order


def started_world(spec: SweepSpec, rounds: int = 3) -> World:
    world = World(grid_of(spec), spec)
    for _ in range(rounds):
        world.step()
        world.finish(paper_outcome)
    world.step()
    assert world.active()
    return world


@pytest.mark.parametrize(
    ("suspend", "deleting", "phase", "reason"),
    [
        pytest.param(True, False, SweepPhase.SUSPENDED, "the sweep is suspended", id="suspend"),
        pytest.param(False, True, SweepPhase.DELETING, "the sweep is being deleted", id="delete"),
        pytest.param(True, True, SweepPhase.DELETING, "the sweep is being deleted", id="both"),
    ],
)
def test_halting_cancels_every_active_attempt_and_launches_nothing(
    suspend: bool, deleting: bool, phase: SweepPhase, reason: str
) -> None:
    spec = paper_spec(resources=ONE_GPU_BELOW_XL, parallelism=8)
    world = started_world(spec)
    active = sorted((t.trial_id, a) for t, a in world.active())
    # Predicted OOMs would be recorded by a running sweep; a halted one only cancels.
    world.predicted = frozenset(t.trial_id for t in world.grid.all_trials())

    world.spec = spec.model_copy(update={"suspend": suspend})
    decided = world.step(deleting=deleting)

    assert all(isinstance(a, CancelTrial) for a in decided.actions)
    assert sorted((a.trial.trial_id, a.attempt) for a in decided.actions) == active
    assert {a.reason for a in decided.cancels} == {reason}
    assert decided.status.phase is phase
    assert decided.status.counts[C] == len(active)
    assert not world.active()


def test_resuming_relaunches_cancelled_attempts_as_new_attempts() -> None:
    spec = paper_spec(resources=ONE_GPU_BELOW_XL, parallelism=8)
    world = started_world(spec)
    cancelled = {t.trial_id: a for t, a in world.active()}
    world.spec = spec.model_copy(update={"suspend": True})
    world.step()
    assert world.step().actions == ()  # stays suspended, quietly

    world.spec = spec
    resumed = world.step()
    relaunched = {a.trial.trial_id: a.attempt for a in resumed.launches}
    assert relaunched == {t: a + 1 for t, a in cancelled.items()}
    world.finish(paper_outcome)
    assert world.run(paper_outcome).status.phase is SweepPhase.SUCCEEDED


def test_a_predicted_oom_caps_its_lane_in_the_same_plan() -> None:
    spec = paper_spec()
    grid = grid_of(spec)
    full = grid.trials["full-dss0.5-seed0"]
    observed = Observed(
        attempts={}, capacity=PAPER_CLUSTER, predicted_oom=frozenset({full[0].trial_id})
    )
    decided = plan(grid, spec, observed)

    assert decided.records[0] == RecordUnlaunched(
        full[0], 1, OOM, OOMKind.PREDICTED, decided.records[0].reason
    )
    assert "predicted out of memory" in decided.records[0].reason
    assert [(r.trial, r.state) for r in decided.records[1:]] == [
        (t, TrialState.SKIPPED) for t in full[1:]
    ]
    lane = decided.status.lanes[0]
    assert (lane.state, lane.ceiling_model, lane.stopped_at_model, lane.oom_kind) == (
        LaneState.CAPPED, None, SMALL, OOMKind.PREDICTED
    )
    # the next lane's head takes the free slot in the same plan
    assert [a.trial.lane.index for a in decided.launches] == [1]


@pytest.mark.parametrize(
    ("escalation", "expect_launch_of"),
    [
        pytest.param({"predictOOM": False}, SMALL, id="prediction-off"),
        pytest.param({"onOOM": "continue"}, BASE, id="continue-past-it"),
    ],
)
def test_predicted_oom_options(escalation: dict[str, object], expect_launch_of: str) -> None:
    spec = paper_spec(escalation=escalation)
    grid = grid_of(spec)
    full = grid.trials["full-dss0.5-seed0"]
    observed = Observed(
        attempts={}, capacity=PAPER_CLUSTER, predicted_oom=frozenset({full[0].trial_id})
    )
    decided = plan(grid, spec, observed)
    assert [a.trial.model for a in decided.launches] == [expect_launch_of]


def test_unschedulable_trials_are_recorded_failed_and_retried_per_escalation() -> None:
    """A laptop with 4 GPUs cannot run the paper's 8-worker trials."""
    spec = paper_spec(escalation={"retries": 1})
    grid = grid_of(spec)
    decided = plan(grid, spec, Observed(attempts={}, capacity=Capacity(gpus=4, cpus=16)))

    assert decided.launches == ()
    failed = [r for r in decided.records if r.state is F]
    assert len(failed) == 25 * 2  # attempt 1 and its one retry, per lane head
    assert "needs 8 GPUs and 8 CPUs, the sweep has 4 GPUs and 16 CPUs" in failed[0].reason
    assert decided.status.phase is SweepPhase.FAILED
    assert decided.status.counts[TrialState.SKIPPED] == 75


def test_only_the_trials_that_need_more_than_everything_are_unschedulable() -> None:
    spec = paper_spec(resources=ONE_GPU_BELOW_XL, escalation={"retries": 0}, parallelism=4)
    world = World(grid_of(spec), spec, capacity=Capacity(gpus=4, cpus=64))
    final = world.run(paper_outcome)
    failed = [r for r in world.recorded if r.state is F]
    assert {r.trial.model for r in failed} == {XL}
    assert len(failed) == 25
    assert final.status.counts[S] == 75
    assert lanes_by_state(final) == {LaneState.FAILED: 25}
    assert final.status.phase is SweepPhase.SUCCEEDED  # all lanes over, some trials succeeded


def test_an_empty_capacity_waits_instead_of_failing() -> None:
    spec = paper_spec()
    decided = plan(grid_of(spec), spec, Observed(attempts={}, capacity=Capacity(0, 0)))
    assert decided.actions == ()
    assert decided.status.phase is SweepPhase.PENDING
    assert decided.status.reason == "NoCapacity"


def observation(
    trial: GridPoint, attempt: int, state: TrialState, **kw: object
) -> AttemptObservation:
    return AttemptObservation(trial.trial_id, attempt, state, **kw)  # type: ignore[arg-type]


def test_counts_follow_the_latest_attempt_and_done_excludes_pending_relaunches() -> None:
    spec = paper_spec(escalation={"retries": 1})
    grid = grid_of(spec)
    lanes = [grid.trials[lane.name] for lane in grid.lanes]
    attempts = {
        lanes[0][0].trial_id: [observation(lanes[0][0], 2, S), observation(lanes[0][0], 1, F)],
        lanes[1][0].trial_id: [observation(lanes[1][0], 1, F)],  # to be retried
        lanes[2][0].trial_id: [observation(lanes[2][0], 1, C)],  # to be relaunched
    }
    status = plan(grid, spec, Observed(attempts=attempts, capacity=Capacity(0, 0))).status
    assert status.counts[S] == 1 and status.counts[F] == 1 and status.counts[C] == 1
    assert status.trials_done == 1
    assert status.phase is SweepPhase.RUNNING


def test_best_is_the_lowest_eval_loss_among_successes() -> None:
    spec = paper_spec()
    grid = grid_of(spec)
    a, b, c = (grid.trials[lane.name][0] for lane in grid.lanes[:3])
    attempts = {
        a.trial_id: [observation(a, 1, S, best_eval_loss=0.2)],
        b.trial_id: [observation(b, 1, S, best_eval_loss=0.1)],
        c.trial_id: [observation(c, 1, F, best_eval_loss=0.01)],  # failed: not a candidate
    }
    status = plan(grid, spec, Observed(attempts=attempts, capacity=Capacity(0, 0))).status
    assert status.best == BestTrial(b.trial_id, b.lane.name, SMALL, 0.1)


def test_status_dict_has_the_crd_shape() -> None:
    spec = paper_spec()
    world = World(grid_of(spec), spec)
    final = world.run(paper_outcome)
    body = status_dict(final.status, observed_generation=3)
    assert list(body) == [
        "phase", "observedGeneration", "trials", "ooms", "best", "lanes", "lanesOmitted",
        "reason", "message",
    ]
    assert body["lanesOmitted"] is None  # every lane is listed (MAX_STATUS_LANES)
    assert body["phase"] == "Succeeded"
    assert body["trials"] == {
        "total": 100, "done": 100, "pending": 0, "running": 0, "succeeded": 80, "oom": 20,
        "failed": 0, "skipped": 0, "cancelled": 0,
    }
    assert body["ooms"] == 20
    assert body["best"]["model"] == LARGE and body["best"]["lane"] == "full-dss0.5-seed0"
    assert set(body["best"]) == {"trialId", "lane", "model", "evalLoss"}
    assert body["lanes"][0] == {
        "name": "full-dss0.5-seed0", "state": "capped", "ceiling": LARGE, "stoppedAt": XL,
        "oomKind": "gpu",
    }
    assert "All 25 lanes finished" in body["message"]
    fresh = status_dict(plan(world.grid, spec, Observed({}, Capacity(0, 0))).status)
    assert "observedGeneration" not in fresh and fresh["best"] is None
    assert fresh["lanes"][0]["ceiling"] is None and fresh["lanes"][0]["oomKind"] is None


def test_attempts_of_unknown_trials_are_ignored() -> None:
    spec = paper_spec()
    grid = grid_of(spec)
    stray = {"not-a-trial": [AttemptObservation("not-a-trial", 1, TrialState.RUNNING)]}
    assert plan(grid, spec, Observed(stray, PAPER_CLUSTER)) == plan(
        grid, spec, Observed({}, PAPER_CLUSTER)
    )


# -- properties ----------------------------------------------------------------------------------

STATES = st.sampled_from([S, OOM, F, C])


@st.composite
def sweeps(draw: st.DrawFn) -> SweepSpec:
    models = draw(st.integers(1, 4))
    methods = draw(st.lists(st.sampled_from(list(Method)), min_size=1, max_size=3, unique=True))
    alphas = draw(st.lists(st.sampled_from([8, 16, 32]), min_size=1, max_size=2, unique=True))
    per_model = {
        f"m{i}": {"workers": draw(st.integers(1, 4)), "gpusPerWorker": draw(st.integers(0, 2))}
        for i in range(models)
    }
    return SweepSpec(
        ladder=[f"m{i}" for i in range(models)],
        methods=methods,
        adapters=[AdapterSet(rank=8, alphas=alphas)],
        resources={"overrides": per_model},
        escalation={
            "retries": draw(st.integers(0, 2)),
            "onOOM": draw(st.sampled_from(["stop-lane", "continue"])),
        },
        parallelism=draw(st.integers(1, 6)),
    )


@settings(max_examples=60, deadline=None)
@given(
    spec=sweeps(),
    capacity=st.builds(Capacity, gpus=st.integers(0, 8), cpus=st.integers(1, 16)),
    scripts=st.dictionaries(
        st.integers(0, 40), st.lists(STATES, min_size=1, max_size=3), max_size=40
    ),
    predicted=st.sets(st.integers(0, 40), max_size=5),
)
def test_any_sweep_runs_to_the_end_keeping_the_plan_promises(
    spec: SweepSpec,
    capacity: Capacity,
    scripts: dict[int, list[TrialState]],
    predicted: set[int],
) -> None:
    """Random grids, capacities and outcomes (trial i's attempt n ends as scripts[i][n-1],
    succeeding past the script): every plan is idempotent, bounded by parallelism and
    capacity, never launches an attempt twice, and the sweep ends with every trial done."""
    grid = grid_of(spec, "prop")
    trials = grid.all_trials()
    position = {t.trial_id: i for i, t in enumerate(trials)}

    def scripted(trial: GridPoint, attempt: int) -> AttemptObservation:
        script = scripts.get(position[trial.trial_id], [])
        state = script[attempt - 1] if attempt <= len(script) else S
        return AttemptObservation(
            trial.trial_id, attempt, state,
            oom_kind=OOMKind.GPU if state is OOM else None,
            best_eval_loss=1.0 / (1 + position[trial.trial_id]) if state is S else None,
        )

    world = World(
        grid, spec, capacity=capacity,
        predicted=frozenset(trials[i].trial_id for i in predicted if i < len(trials)),
    )
    final = world.run(scripted)
    assert len(world.launched) == len(set(world.launched))
    assert final.status.trials_done == final.status.trials_total == len(trials)
    assert all(lane.state.is_terminal for lane in final.status.lanes)
    assert not set(world.predicted) & {t for t, _ in world.launched}


def launches_of(actions: Iterable[object]) -> list[tuple[str, int]]:
    return [(a.trial.trial_id, a.attempt) for a in actions if isinstance(a, LaunchTrial)]


def test_plan_does_not_mutate_its_inputs() -> None:
    spec = paper_spec()
    grid = grid_of(spec)
    first = grid.trials[grid.lanes[0].name][0]
    attempts = {first.trial_id: (AttemptObservation(first.trial_id, 1, S),)}
    observed = Observed(attempts=attempts, capacity=PAPER_CLUSTER)
    before = replace(observed, attempts=dict(attempts))
    plan(grid, spec, observed)
    assert observed == before
    assert launches_of(plan(grid, spec, observed).actions) == [
        (grid.trials[grid.lanes[0].name][1].trial_id, 1)
    ]
