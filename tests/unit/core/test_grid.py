"""Grid expansion: counts, the paper's order, stable ids, resolved trial payloads."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.core.grid import TRIAL_ID_LENGTH, attempt_spec, expand
from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import PAPER_LADDER, Sweep, SweepSpec
from orchestrator.files import load_sweep

ROOT = Path(__file__).resolve().parents[3]


def paper() -> Sweep:
    return load_sweep(ROOT / "k8s/examples/paper-grid.yaml")


class TestCounts:
    def test_paper_grid(self) -> None:
        grid = expand(paper())
        assert len(grid.lanes) == 25
        assert len(grid.all_trials()) == 100
        methods = [lane.method for lane in grid.lanes]
        assert methods.count(Method.FULL) == 1
        assert methods.count(Method.LORA) == methods.count(Method.QLORA) == 12

    def test_ablation(self) -> None:
        grid = expand(load_sweep(ROOT / "k8s/examples/ablation.yaml"))
        # 2 dss weights x 2 seeds x (full + 1 pair x {lora, qlora}) = 12 lanes, 3 models each.
        assert len(grid.lanes) == 12
        assert len(grid.all_trials()) == 36
        assert {(lane.dss_alpha, lane.seed) for lane in grid.lanes} == {
            (0.5, 0), (0.5, 1), (1.0, 0), (1.0, 1)
        }


class TestOrder:
    def test_paper_order_adapter_set_then_method_then_model(self) -> None:
        grid = expand(paper())
        names = [lane.name for lane in grid.lanes]
        assert names[:5] == [
            "full-dss0.5-seed0",
            "lora-r32-a32-dss0.5-seed0", "qlora-r32-a32-dss0.5-seed0",
            "lora-r32-a64-dss0.5-seed0", "qlora-r32-a64-dss0.5-seed0",
        ]
        assert names[-1] == "qlora-r128-a512-dss0.5-seed0"
        for lane in grid.lanes:
            assert [t.model for t in grid.trials[lane.name]] == list(PAPER_LADDER)
            assert [t.model_index for t in grid.trials[lane.name]] == [0, 1, 2, 3]


class TestIds:
    def test_ids_are_stable_and_unique(self) -> None:
        first, second = expand(paper()), expand(paper())
        ids = [t.trial_id for t in first.all_trials()]
        assert ids == [t.trial_id for t in second.all_trials()]
        assert len(set(ids)) == len(ids)
        assert all(len(i) == TRIAL_ID_LENGTH and i.isalnum() for i in ids)

    def test_ids_depend_on_the_sweep_name(self) -> None:
        sweep = paper()
        renamed = sweep.model_copy(update={"name": "other"})
        assert expand(sweep).all_trials()[0].trial_id != expand(renamed).all_trials()[0].trial_id

    def test_lane_names_are_label_safe(self) -> None:
        spec = SweepSpec.model_validate(
            {"ladder": ["m"], "axes": {"learningRate": [1e-4, 5e-5], "batchSize": [8]}},
            by_alias=True,
        )
        grid = expand(Sweep(name="s", spec=spec))
        for lane in grid.lanes:
            assert len(lane.name) <= 63
            assert all(c.isalnum() or c in "-_." for c in lane.name), lane.name


class TestTrialPayload:
    def test_per_model_resources_and_axes_applied(self) -> None:
        sweep = paper()
        grid = expand(sweep)
        small, *_, xl = grid.trials[grid.lanes[0].name]
        assert small.resources.workers == 1 and small.resources.gpus == 1
        assert xl.resources.workers == 8 and xl.resources.gpus == 8
        spec = attempt_spec(sweep, xl, attempt=2, output_dir="/tmp/x")
        assert spec.attempt == 2 and spec.model == "google/flan-t5-xl"
        assert spec.training == sweep.spec.training

    def test_training_axis_overrides_the_recipe(self) -> None:
        spec = SweepSpec.model_validate(
            {"ladder": ["m"], "methods": ["full"], "axes": {"learningRate": [1e-3, 1e-4]}},
            by_alias=True,
        )
        sweep = Sweep(name="lr", spec=spec)
        grid = expand(sweep)
        rates = [attempt_spec(sweep, grid.trials[lane.name][0], attempt=1, output_dir="o")
                 .training.learning_rate for lane in grid.lanes]
        assert rates == [1e-3, 1e-4]


@given(
    ranks=st.lists(st.integers(1, 256), min_size=1, max_size=3, unique=True),
    alphas=st.lists(st.integers(1, 512), min_size=1, max_size=3, unique=True),
    models=st.integers(1, 4),
    seeds=st.lists(st.integers(0, 9), min_size=1, max_size=3, unique=True),
    methods=st.lists(st.sampled_from(list(Method)), min_size=1, max_size=3, unique=True),
)
def test_expansion_matches_the_spec_counts(
    ranks: list[int], alphas: list[int], models: int, seeds: list[int], methods: list[Method]
) -> None:
    spec = SweepSpec(
        ladder=[f"m{i}" for i in range(models)],
        methods=methods,
        adapters=[{"rank": r, "alphas": alphas} for r in ranks],
        axes={"seed": seeds},
    )
    grid = expand(Sweep(name="prop", spec=spec))
    assert len(grid.lanes) == spec.lane_count
    assert len(grid.all_trials()) == spec.potential_trials
    assert len({t.trial_id for t in grid.all_trials()}) == spec.potential_trials
    assert len({lane.name for lane in grid.lanes}) == len(grid.lanes)


@pytest.mark.parametrize("name", ["quickstart"], ids=["quickstart"])
def test_quickstart_ladder_climbs_three_models(name: str) -> None:
    grid = expand(load_sweep(ROOT / f"examples/{name}.yaml"))
    assert len(grid.lanes) == 5
    assert all(len(grid.trials[lane.name]) == 3 for lane in grid.lanes)
