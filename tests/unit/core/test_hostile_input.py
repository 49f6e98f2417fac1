"""Hostile input, classes 1 to 4 of issue 12 (docs/security.md, "Hostile input").

1. Size and shape: grids counted before expansion, maxTrials' ceiling, files refused from
   their stat and size, alias expansion and nesting bounded.
2. What validates must reconcile: what the worker, the store and the RayJob builder refuse is
   refused by the spec (the reconcile property itself is
   tests/integration/operator/test_validated_specs_reconcile.py).
3. Identity: lane names and trial ids are injective; validate, plan and status agree.
4. YAML as kubectl reads it: YAML 1.2 numbers, duplicate keys, non-JSON values refused
   naming the field, trailing `---`, names matched whole.

Also the YAML corpus (tests/data/invalid-yaml/): files that kubectl refuses or reads
differently from PyYAML, each refused by `ladder validate` and `ladder submit` with the place
its `# expect:` line names.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from orchestrator import crd
from orchestrator.cli import PLAN_TABLE_ROWS, app
from orchestrator.core import grid as grid_module
from orchestrator.core.grid import attempt_spec, expand
from orchestrator.core.lifecycle import LaneState
from orchestrator.core.manifest_yaml import (
    MAX_DEPTH,
    MAX_MANIFEST_BYTES,
    MAX_NODES,
    ManifestError,
    load_documents,
)
from orchestrator.core.plan import (
    MAX_STATUS_LANES,
    LaneStatus,
    Observed,
    SweepPhase,
    SweepStatus,
    plan,
    status_dict,
)
from orchestrator.core.scheduler import Capacity
from orchestrator.core.spec import (
    BUILTIN_DATASETS,
    INT32_MAX,
    INT64_MAX,
    MAX_TRIALS,
    QUANTITY_RE,
    SpecError,
    load_sweep_text,
    parse_quantity,
    parse_sweep,
)
from orchestrator.files import load_sweep
from orchestrator.operator.controller import manifests_of

CORPUS = Path(__file__).resolve().parents[2] / "data" / "invalid-yaml"
EXPECT = "# expect: "
HEAD = "apiVersion: ladder.dev/v1alpha1\nkind: Sweep\nmetadata: {name: hostile}\n"
BASE: dict[str, Any] = {"ladder": ["m1", "m2"], "methods": ["full"]}


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        load_sweep_text(text, source="t.yaml")
    return caught.value.problems


def refused_at(spec: dict[str, Any], name: str = "hostile") -> list[str]:
    document = {"apiVersion": "ladder.dev/v1alpha1", "kind": "Sweep",
                "metadata": {"name": name}, "spec": spec}
    with pytest.raises(SpecError) as caught:
        parse_sweep(document)
    return [path for path, _ in caught.value.problems]


def with_(**fields: Any) -> dict[str, Any]:
    return {**BASE, **fields}


# --- class 1: size and shape -----------------------------------------------------------------


class TestSizeAndShape:
    def test_max_trials_has_a_ceiling_in_the_model_and_the_crd(self) -> None:
        assert refused_at(with_(maxTrials=MAX_TRIALS + 1)) == ["spec.maxTrials"]
        assert parse_sweep(with_(maxTrials=MAX_TRIALS)).spec.max_trials == MAX_TRIALS
        schema = crd.spec_schema()["properties"]["maxTrials"]
        assert schema["maximum"] == MAX_TRIALS == 100_000

    def test_a_huge_grid_is_counted_not_expanded(self) -> None:
        # 32**5 axes points x 32 models: 1.07e9 potential trials, refused in milliseconds.
        axes = {"seed": list(range(32)), "dssAlpha": [i / 32 for i in range(32)],
                "learningRate": [(i + 1) * 1e-5 for i in range(32)],
                "batchSize": list(range(1, 33)), "loraDropout": [i / 40 for i in range(32)]}
        started = time.perf_counter()
        with pytest.raises(SpecError) as caught:
            parse_sweep(with_(ladder=[f"m{i}" for i in range(32)], axes=axes,
                              maxTrials=MAX_TRIALS))
        assert time.perf_counter() - started < 1.0
        (path, message), = caught.value.problems
        assert path == "maxTrials" and f"{32**6} potential trials" in message

    def test_a_file_over_the_etcd_limit_is_refused_before_parsing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "big.yaml"
        path.write_text("ladder: [m]\n" + "#" * MAX_MANIFEST_BYTES + "\n")

        def no_parse(text: str) -> list[Any]:
            raise AssertionError("parsed a file over the limit")

        monkeypatch.setattr("orchestrator.core.spec.load_documents", no_parse)
        with pytest.raises(SpecError) as caught:
            load_sweep(path)
        ((where, message),) = caught.value.problems
        assert where == "file" and str(MAX_MANIFEST_BYTES) in message
        # The same text, given as text (the controller's and `submit`'s path), is refused too.
        with pytest.raises(ManifestError):
            load_documents(path.read_text())

    @pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
    def test_a_fifo_is_refused_without_being_opened(self, tmp_path: Path) -> None:
        fifo = tmp_path / "sweep.yaml"
        os.mkfifo(fifo)
        outcome: list[Any] = []
        worker = threading.Thread(target=lambda: outcome.append(self._load(fifo)), daemon=True)
        worker.start()
        worker.join(5)
        if worker.is_alive():  # unblock the reader before failing
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            pytest.fail("reading the FIFO blocked")
        assert outcome == [("file", "is not a regular file (a device, FIFO or socket)")]

    def test_a_device_and_a_directory_are_refused(self, tmp_path: Path) -> None:
        assert self._load(tmp_path) == ("file", "is a directory, not a Sweep file")
        if Path("/dev/zero").exists():
            assert self._load(Path("/dev/zero"))[0] == "file"

    @staticmethod
    def _load(path: Path) -> tuple[str, str]:
        try:
            load_sweep(path)
        except SpecError as error:
            return error.problems[0]
        raise AssertionError("loaded")

    def test_billion_laughs_is_refused_in_well_under_a_second(self) -> None:
        lines = ["ladder: [m]", "execution:", "  l0: &l0 [a, a, a, a, a, a, a, a, a, a]"]
        lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]"
                  for i in range(1, 10)]
        started = time.perf_counter()
        found = problems("\n".join(lines))
        assert time.perf_counter() - started < 0.5
        assert "aliases expand to more than" in found[0][1]

    def test_a_wide_file_is_refused_after_its_first_nodes(self) -> None:
        text = "ladder: [m]\nexecution: {x: [" + "1," * 700_000 + "1]}\n"
        assert len(text.encode()) < MAX_MANIFEST_BYTES
        started = time.perf_counter()
        found = problems(text)
        assert f"more than {MAX_NODES} YAML nodes" in found[0][1]
        assert time.perf_counter() - started < 10  # 20,000 nodes, not 700,000

    def test_an_alias_inside_its_own_anchor_is_refused(self) -> None:
        found = problems("ladder: [m]\nexecution: &a {x: [*a]}\n")
        assert "an alias refers to a node that contains it" in found[0][1]

    def test_aliases_within_bounds_are_fine(self) -> None:
        sweep = load_sweep_text(
            "ladder: [m]\nmethods: [lora]\nadapters:\n- &pair {rank: 8, alphas: [16]}\n"
            "execution: {a: &x [1, 2], b: *x}\n"
        )
        assert sweep.spec.execution == {"a": [1, 2], "b": [1, 2]}

    @pytest.mark.parametrize("style", ["flow", "block", "flow-mapping"])
    def test_deep_nesting_is_refused_with_a_message(self, style: str) -> None:
        depth = 5000
        if style == "flow":
            value = "[" * depth + "]" * depth
        elif style == "flow-mapping":
            value = "{a: " * depth + "1" + "}" * depth
        else:
            value = "\n" + "".join("  " * (i + 2) + "- \n" for i in range(depth // 10))
        found = problems(f"ladder: [m]\nexecution:\n  deep: {value}\n")
        assert f"nested deeper than {MAX_DEPTH} levels" in found[0][1]

    def test_deep_bodies_from_the_apiserver_are_refused_naming_the_path(self) -> None:
        deep: Any = 1
        for _ in range(MAX_DEPTH + 5):
            deep = [deep]
        paths = refused_at(with_(execution={"deep": deep}))
        assert paths[0].startswith("spec.execution.deep[0]")

    def test_the_status_lists_a_bounded_number_of_lanes(self) -> None:
        lanes = tuple(
            LaneStatus(f"lane-{i}", LaneState.CAPPED if i % 7 == 0 else LaneState.PENDING,
                       None, None, None)
            for i in range(MAX_STATUS_LANES + 500)
        )
        status = SweepStatus(SweepPhase.RUNNING, {}, 4 * len(lanes), 0, 0, lanes, None,
                             "TrialsRunning", "")
        body = status_dict(status)
        assert len(body["lanes"]) == MAX_STATUS_LANES
        assert body["lanesOmitted"] == 500
        shown = {lane["name"] for lane in body["lanes"]}
        assert all(lane.name in shown for lane in lanes if lane.state is LaneState.CAPPED)
        assert [lane["name"] for lane in body["lanes"]] == sorted(
            shown, key=lambda n: int(n.split("-")[1]))  # lane order kept
        small = status_dict(SweepStatus(SweepPhase.RUNNING, {}, 4, 0, 0, lanes[:3], None,
                                        "TrialsRunning", ""))
        assert len(small["lanes"]) == 3 and small["lanesOmitted"] is None

    def test_plan_prints_a_bounded_table(self, tmp_path: Path) -> None:
        path = tmp_path / "s.yaml"
        path.write_text("ladder: [m]\nmethods: [full]\naxes: {seed: [" +
                        ", ".join(str(i) for i in range(32)) + "], dssAlpha: [" +
                        ", ".join(str(i / 32) for i in range(32)) + "]}\nmaxTrials: 2000\n")
        result = CliRunner().invoke(app, ["plan", str(path)], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert f"… and {1024 - PLAN_TABLE_ROWS} more lanes" in result.output

    @settings(max_examples=40, deadline=None)
    @given(depth=st.integers(1, 3 * MAX_DEPTH), flow=st.booleans())
    def test_any_nesting_parses_or_is_refused(self, depth: int, flow: bool) -> None:
        """Property: no depth of nesting makes loading raise anything but SpecError."""
        value = ("[" * depth + "]" * depth) if flow else "{a: " * depth + "1" + "}" * depth
        try:
            load_sweep_text(f"ladder: [m]\nexecution: {{x: {value}}}\n")
        except SpecError as error:
            assert "nested deeper" in error.problems[0][1]
            assert depth >= MAX_DEPTH - 3


# --- class 2: what validates must reconcile --------------------------------------------------


class TestWhatValidatesReconciles:
    @pytest.mark.parametrize("budget", ["0", "0Gi", "0.0", "0.000Ki"])
    def test_a_budget_under_one_byte_is_refused(self, budget: str) -> None:
        assert refused_at(with_(escalation={"memoryBudget": budget})) == [
            "spec.escalation.memoryBudget"]
        assert QUANTITY_RE.fullmatch(budget) is None  # the CRD's pattern refuses it too

    def test_fractions_round_up_to_whole_bytes_and_reach_the_worker(self) -> None:
        assert parse_quantity("0.5") == 1 and parse_quantity("1.5Ki") == 1536
        sweep = parse_sweep(with_(escalation={"memoryBudget": "0.5"}))
        trial = expand(sweep).all_trials()[0]
        payload = attempt_spec(sweep, trial, attempt=1, output_dir="/tmp/x")
        assert payload.memory_budget_bytes == 1

    def test_a_budget_beyond_int64_is_refused(self) -> None:
        assert refused_at(with_(escalation={"deviceMemory": "8Ei"})) == [
            "spec.escalation.deviceMemory"]
        assert parse_quantity("7Ei") <= INT64_MAX

    @pytest.mark.parametrize(("spec", "path"), [
        (with_(ladder=["m\x00", "m2"]), "spec.ladder[0]"),
        (with_(training={"tokenizer": "t\x00"}), "spec.training.tokenizer"),
        (with_(execution={"image": "i\x00"}), "spec.execution.image"),
        (with_(execution={"env": [{"name": "A", "value": "\ud800"}]}),
         "spec.execution.env[0].value"),
        (with_(execution={"k\x00": 1}), "spec.execution.k\x00"),
    ])
    def test_strings_the_store_cannot_hold_are_refused_naming_the_path(
        self, spec: dict[str, Any], path: str
    ) -> None:
        assert refused_at(spec) == [path]

    @pytest.mark.parametrize(("spec", "path"), [
        (with_(axes={"seed": [2**63]}), "spec.axes.seed[0]"),
        (with_(axes={"seed": [-(2**63) - 1]}), "spec.axes.seed[0]"),
        (with_(dataset={"splitSeed": 2**64}), "spec.dataset.splitSeed"),
        (with_(methods=["lora"], adapters=[{"rank": 2**31, "alphas": [1]}]),
         "spec.adapters[0].rank"),
        (with_(training={"epochs": 2**31}), "spec.training.epochs"),
        (with_(escalation={"retries": 2**31 - 1}), "spec.escalation.retries"),
        (with_(resources={"workers": 2**31}), "spec.resources.workers"),
        (with_(execution={"ttlSecondsAfterFinished": 10**20}),
         "spec.execution.ttlSecondsAfterFinished"),
    ])
    def test_integers_beyond_what_stores_and_runs_them_are_refused(
        self, spec: dict[str, Any], path: str
    ) -> None:
        assert refused_at(spec) == [path]

    def test_int64_seeds_reach_the_worker(self) -> None:
        sweep = parse_sweep(with_(axes={"seed": [2**63 - 1, -(2**63)]}))
        seeds = {attempt_spec(sweep, t, attempt=1, output_dir="/x").seed
                 for t in expand(sweep).all_trials()}
        assert seeds == {2**63 - 1, -(2**63)}

    def test_unknown_builtin_datasets_are_refused_here_and_in_the_crd(self) -> None:
        assert refused_at(with_(dataset={"source": "builtin:imdb"})) == ["spec.dataset.source"]
        assert parse_sweep(with_(dataset={"source": "builtin:querydsl"}))
        assert parse_sweep(with_(dataset={"source": "data/train.jsonl"}))
        rules = crd.spec_schema()["properties"]["dataset"]["x-kubernetes-validations"]
        assert "builtin:querydsl" in rules[0]["rule"] and rules[0]["fieldPath"] == ".source"

    def test_the_spec_knows_the_workers_builtin_datasets(self) -> None:
        from worker.data.builtin import BUILTINS

        assert set(BUILTIN_DATASETS) == set(BUILTINS)

    def test_the_crd_bounds_integers_as_the_model_does(self) -> None:
        props = crd.spec_schema()["properties"]
        assert props["adapters"]["items"]["properties"]["rank"]["maximum"] == INT32_MAX
        # int64 seeds: the apiserver's `integer` is int64 (it refuses a +-2**63 bound).
        assert "maximum" not in props["axes"]["properties"]["seed"]["items"]
        assert props["ladder"]["items"]["pattern"] == "^[^\\x00]*$"

    @pytest.mark.parametrize("runtime_env", [
        {"env_vars": ["A=1"]}, {"env_vars": "A=1"}, {"env_vars": {"A": {"nested": 1}}},
    ])
    def test_runtime_env_shapes_are_refused_by_validate(
        self, tmp_path: Path, runtime_env: dict[str, Any]
    ) -> None:
        path = tmp_path / "s.yaml"
        path.write_text(
            HEAD + f"spec:\n  ladder: [m]\n  execution: {{runtimeEnv: {runtime_env}}}\n"
        )
        result = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "300"})
        assert result.exit_code == 1, result.output
        assert "spec.execution.runtimeEnv: " in result.output, result.output
        with pytest.raises(SpecError):
            manifests_of(path.read_text(), source="s.yaml", namespace=None)

    @pytest.mark.parametrize(("execution", "path"), [
        ("{worker: {memory: 16GB}}", "spec.execution.worker.memory"),
        ("{head: {cpu: '-1'}}", "spec.execution.head.cpu"),
        ("{head: {resources: {ephemeral-storage: lots}}}", "spec.execution.head.resources"),
        ("{sharedMemory: 2 GiB}", "spec.execution.sharedMemory"),
    ])
    def test_pod_quantities_the_apiserver_refuses_are_refused_by_validate(
        self, tmp_path: Path, execution: str, path: str
    ) -> None:
        file = tmp_path / "s.yaml"
        file.write_text(HEAD + f"spec:\n  ladder: [m]\n  execution: {execution}\n")
        result = CliRunner().invoke(app, ["validate", str(file)], env={"COLUMNS": "300"})
        assert result.exit_code == 1 and f"{path}: " in result.output, result.output

    def test_a_namespace_must_be_a_dns_label(self) -> None:
        document = {"apiVersion": "ladder.dev/v1alpha1", "kind": "Sweep",
                    "metadata": {"name": "ok", "namespace": "Bad\x00"}, "spec": BASE}
        with pytest.raises(SpecError) as caught:
            parse_sweep(document)
        assert [p for p, _ in caught.value.problems] == ["metadata.namespace"]


# --- class 3: identity -----------------------------------------------------------------------


class TestIdentity:
    def test_values_past_the_sixth_digit_make_two_lanes(self, tmp_path: Path) -> None:
        spec = with_(axes={"learningRate": [1.0000001e-5, 1.0000002e-5],
                           "dssAlpha": [0.1234561, 0.1234562]})
        sweep = parse_sweep(spec)
        grid = expand(sweep)
        names = [lane.name for lane in grid.lanes]
        assert len(set(names)) == len(names) == 4
        ids = [t.trial_id for t in grid.all_trials()]
        assert len(set(ids)) == len(ids) == sweep.spec.potential_trials == 8
        status = plan(grid, sweep.spec, Observed(attempts={}, capacity=Capacity(1, 1))).status
        assert status.trials_total == 8
        # validate and plan print the same count.
        path = tmp_path / "s.yaml"
        path.write_text("ladder: [m1, m2]\nmethods: [full]\n"
                        "axes: {learningRate: [1.0000001e-5, 1.0000002e-5], "
                        "dssAlpha: [0.1234561, 0.1234562]}\n")
        for command in ("validate", "plan"):
            result = CliRunner().invoke(app, [command, str(path)], env={"COLUMNS": "300"})
            assert result.exit_code == 0 and "= 8 potential trials" in result.output, \
                result.output

    def test_existing_lane_names_keep_their_short_form(self) -> None:
        grid = expand(parse_sweep(with_(axes={"learningRate": [5e-5, 1e-4]})))
        assert [lane.name for lane in grid.lanes] == [
            "full-dss0.5-seed0-lr5e-05", "full-dss0.5-seed0-lr0.0001"]

    def test_one_number_spelled_twice_is_a_repeat_naming_the_field(self) -> None:
        found = problems("ladder: [m]\nmethods: [full]\naxes: {learningRate: [1e-5, 0.00001]}\n")
        assert [p for p, _ in found] == ["axes.learningRate"]

    @settings(max_examples=60, deadline=None)
    @given(values=st.lists(st.floats(min_value=1e-12, max_value=1.0, exclude_min=True,
                                     allow_subnormal=False), min_size=1, max_size=6,
                           unique=True))
    def test_lane_names_are_injective(self, values: list[float]) -> None:
        sweep = parse_sweep(with_(axes={"learningRate": values, "dssAlpha": values}))
        grid = expand(sweep)
        assert len({lane.name for lane in grid.lanes}) == len(values) ** 2
        assert len({t.trial_id for t in grid.all_trials()}) == sweep.spec.potential_trials

    def test_a_trial_id_collision_takes_the_long_form(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real = grid_module.trial_id

        def colliding(sweep: Any, lane: str, model: str, length: int = 10) -> str:
            return "0" * 10 if length == 10 else real(sweep, lane, model, length)

        monkeypatch.setattr(grid_module, "trial_id", colliding)
        trials = expand(parse_sweep(BASE)).all_trials()
        assert trials[0].trial_id == "0" * 10
        assert len(trials[1].trial_id) == grid_module.LONG_TRIAL_ID_LENGTH
        assert len({t.trial_id for t in trials}) == 2


# --- class 4: YAML as kubectl reads it -------------------------------------------------------


class TestYamlAsKubectlReadsIt:
    def test_duplicate_keys_are_refused_naming_the_key(self) -> None:
        found = problems("ladder: [m]\ntraining:\n  epochs: 1\n  epochs: 2\n")
        assert found[0][0] == "line 4, column 3"
        assert "duplicate key 'epochs' (first at line 3)" in found[0][1]

    @pytest.mark.parametrize(("text", "value"), [
        ("5e-5", 5e-5), ("1E3", 1000), ("0x10", 16), ("0o17", 15), ("0777", 777),
        ("+12", 12), (".5", 0.5), ("1.", 1),
    ])
    def test_numbers_are_read_as_yaml_1_2(self, text: str, value: float) -> None:
        (document,) = load_documents(f"x: {text}\n")
        assert document["x"] == value and not isinstance(document["x"], str)

    @pytest.mark.parametrize("text", ["1_000", "0b101", "1:30", "2026-01-02", "yes_no"])
    def test_what_yaml_1_2_does_not_call_a_number_is_a_string(self, text: str) -> None:
        (document,) = load_documents(f"x: {text}\n")
        assert document["x"] == text

    def test_5e_5_is_a_learning_rate(self) -> None:
        sweep = load_sweep_text("ladder: [m]\ntraining: {learningRate: 5e-5}\n")
        assert sweep.spec.training.learning_rate == 5e-5

    @pytest.mark.parametrize(("value", "path"), [
        (".inf", "training.learningRate"), ("-.Inf", "training.learningRate"),
        (".NaN", "training.learningRate"),
    ])
    def test_non_finite_numbers_are_refused_naming_the_field(self, value: str,
                                                              path: str) -> None:
        assert [p for p, _ in problems(f"ladder: [m]\ntraining: {{learningRate: {value}}}\n")] \
            == [path]

    @pytest.mark.parametrize(("text", "path"), [
        ("execution: {blob: !!binary aGk=}", "spec.execution.blob"),
        ("axes: {seed: !!set {1: null}}", "spec.axes.seed"),
        ("execution: {nodeSelector: {1: gpu}}", "spec.execution.nodeSelector"),
        ("execution: {? [a, b] : c}", "line 6, column 17"),
    ])
    def test_non_json_values_are_refused_naming_the_field(self, text: str, path: str) -> None:
        found = problems(HEAD + f"spec:\n  ladder: [m]\n  {text}\n")
        assert found[0][0] == path, found

    @pytest.mark.parametrize("tagged", [
        "!!int abc", "!!float abc", "!!timestamp nope", "!!bool maybe", "!foo x",
        "!!python/object:os.system x", "!!str [1]",
    ])
    def test_explicit_tags_that_do_not_read_are_refused_with_a_line(self, tagged: str) -> None:
        found = problems(f"ladder: [m]\nexecution: {{x: {tagged}}}\n")
        assert found[0][0].startswith("line "), found

    @pytest.mark.parametrize("text", [
        HEAD + "spec: {ladder: [m]}\n---\n", "---\n" + HEAD + "spec: {ladder: [m]}\n---\n---\n",
        HEAD + "spec: {ladder: [m]}\n...\n---\n",
    ])
    def test_empty_documents_are_dropped_by_every_command(self, tmp_path: Path,
                                                          text: str) -> None:
        path = tmp_path / "s.yaml"
        path.write_text(text)
        assert load_sweep(path).name == "hostile"
        assert len(manifests_of(text, source="s", namespace="ns")) == 1
        for command in ("validate", "plan"):
            result = CliRunner().invoke(app, [command, str(path)], env={"COLUMNS": "300"})
            assert result.exit_code == 0, result.output

    def test_several_sweeps_are_for_submit_only(self) -> None:
        text = (CORPUS / "two-sweeps.yaml").read_text()
        assert [m["metadata"]["name"] for m in manifests_of(text, source="s", namespace="n")] \
            == ["first", "second"]

    @pytest.mark.parametrize("name", ["ok\n", "ok\n\n", "\nok"])
    def test_names_are_matched_whole(self, name: str) -> None:
        assert refused_at(BASE, name=name) == ["metadata.name"]

    def test_quantities_are_matched_whole(self) -> None:
        assert refused_at(with_(escalation={"memoryBudget": "24Gi\n"})) == [
            "spec.escalation.memoryBudget"]

    @settings(max_examples=80, deadline=None)
    @given(value=st.floats(allow_nan=False, allow_infinity=False))
    def test_every_float_python_writes_reads_back_as_that_float(self, value: float) -> None:
        """Property: `repr` of a float (what JSON and kubectl write) is a YAML 1.2 number."""
        (document,) = load_documents(f"x: {value!r}\n")
        assert isinstance(document["x"], float) and (
            document["x"] == value or (math.isnan(value) and math.isnan(document["x"])))


# --- the YAML corpus -------------------------------------------------------------------------

FILES = sorted(CORPUS.glob("*.yaml"))


def test_the_yaml_corpus_covers_classes_1_and_4() -> None:
    assert len(FILES) >= 8
    comments = " ".join(p.read_text().splitlines()[1] for p in FILES)
    assert "size and shape" in comments and "kubectl" in comments


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in FILES])
def test_validate_and_submit_refuse_the_yaml_corpus(path: Path) -> None:
    where = path.read_text().splitlines()[0].removeprefix(EXPECT).strip()
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "100000"})
    assert time.perf_counter() - started < 2
    assert result.exit_code == 1, result.output
    assert f"{where}: " in result.output, result.output
    assert "Traceback" not in result.output
    if path.stem != "two-sweeps":
        with pytest.raises(SpecError) as caught:
            manifests_of(path.read_text(), source=str(path), namespace="ns")
        assert where in [p for p, _ in caught.value.problems]
