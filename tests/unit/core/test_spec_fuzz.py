"""Property-based fuzzing of spec parsing and grid expansion (hypothesis).

- Parsing: whatever JSON-like document (or YAML text) comes in, `parse_sweep` returns a Sweep
  or raises SpecError whose problems name a field; never another exception type.
- Expansion: valid generated specs expand deterministically, with unique trial ids and lane
  names, and as many lanes and trials as the product of the axes says.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.core.grid import expand
from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import (
    API_VERSION,
    KIND,
    SpecError,
    Sweep,
    SweepSpec,
    load_sweep_text,
    parse_sweep,
    sweep_manifest,
)

FUZZ = settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                               max_size=4),
    max_leaves=20,
)

# Field names the spec knows, so that fuzzing reaches the nested models, not only the top.
FIELDS = [
    "ladder", "methods", "adapters", "axes", "training", "dataset", "resources", "escalation",
    "parallelism", "maxTrials", "suspend", "execution", "rank", "alphas", "dssAlpha", "seed",
    "learningRate", "batchSize", "loraDropout", "epochs", "precision", "targetModules",
    "evalFraction", "source", "workers", "gpusPerWorker", "overrides", "onOOM", "memoryBudget",
    "lrPlateau", "factor", "tokenizer",
]
spec_like = st.recursive(
    scalars | st.sampled_from(["full", "lora", "qlora", "bf16", "fp16", "24Gi", "m", "512m"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=5),
    max_leaves=25,
)


def _parses_or_names_a_field(document: Any) -> None:
    try:
        sweep = parse_sweep(document, source="fuzz")
    except SpecError as error:
        assert error.problems, error
        for path, message in error.problems:
            assert isinstance(path, str) and path, error.problems
            assert isinstance(message, str) and message, error.problems
        return
    assert isinstance(sweep, Sweep)
    # What parses, round-trips through its manifest (what `ladder submit` sends).
    assert parse_sweep(sweep_manifest(sweep)) == sweep


class TestParsingNeverCrashes:
    @FUZZ
    @given(document=json_like)
    def test_any_json_like_document(self, document: Any) -> None:
        _parses_or_names_a_field(document)

    @FUZZ
    @given(spec=st.dictionaries(st.sampled_from(FIELDS), spec_like, max_size=8))
    def test_spec_shaped_documents(self, spec: dict[str, Any]) -> None:
        _parses_or_names_a_field(spec)

    @FUZZ
    @given(
        spec=spec_like,
        metadata=st.one_of(json_like, st.fixed_dictionaries({"name": json_like})),
        api_version=st.sampled_from([API_VERSION, "ladder.dev/v1", None]),
        kind=st.sampled_from([KIND, "Job", None]),
    )
    def test_manifests(self, spec: Any, metadata: Any, api_version: Any, kind: Any) -> None:
        document = {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}
        _parses_or_names_a_field(document)

    @FUZZ
    @given(text=st.text(max_size=200))
    def test_any_yaml_text(self, text: str) -> None:
        try:
            load_sweep_text(text, source="fuzz.yaml")
        except SpecError as error:
            assert error.problems


def test_non_json_values_are_spec_errors() -> None:
    for document in ({"ladder": [b"bytes"]}, {"ladder": {1, 2}}, {1: "x"},
                     {"ladder": [math.inf]}, {"ladder": ["m"], "execution": {"k": object()}}):
        try:
            parse_sweep(document)  # type: ignore[arg-type]
        except SpecError as error:
            assert error.problems
        else:  # pragma: no cover - the assertion message is the point
            raise AssertionError(f"{document!r} parsed")


def test_yaml_timestamps_are_strings_as_kubectl_sends_them() -> None:
    sweep = load_sweep_text("ladder: [m]\nexecution: {since: 2026-01-02}\n")
    assert sweep.spec.execution == {"since": "2026-01-02"}


# Valid specs: every axis, a few values each, within the grid limit.
small_unique = lambda values: st.lists(values, min_size=1, max_size=3, unique=True)  # noqa: E731


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    methods = draw(small_unique(st.sampled_from([m.value for m in Method])))
    spec: dict[str, Any] = {
        "ladder": draw(small_unique(st.text("abc/-.0123", min_size=1, max_size=12))),
        "methods": methods,
        "adapters": [
            {"rank": rank, "alphas": draw(small_unique(st.integers(1, 1024)))}
            for rank in draw(small_unique(st.integers(1, 512)))
        ],
        "axes": {
            "dssAlpha": draw(small_unique(st.floats(0, 1, allow_nan=False))),
            "seed": draw(small_unique(st.integers(-(2**31), 2**31))),
        },
        "maxTrials": 100_000,
    }
    for axis, values in (
        ("learningRate", st.floats(1e-7, 1.0, allow_nan=False)),
        ("batchSize", st.integers(1, 512)),
        ("loraDropout", st.floats(0, 0.99, allow_nan=False)),
    ):
        if draw(st.booleans()):
            spec["axes"][axis] = draw(small_unique(values))
    return spec


def _axes_product(spec: dict[str, Any]) -> int:
    methods = spec["methods"]
    pairs = sum(len(a["alphas"]) for a in spec["adapters"])
    per_point = ("full" in methods) + sum(m != "full" for m in methods) * pairs
    return per_point * math.prod(len(values) for values in spec["axes"].values())


class TestExpansion:
    @FUZZ
    @given(spec=valid_specs(), name=st.from_regex(r"[a-z][a-z0-9-]{0,30}[a-z0-9]", fullmatch=True))
    def test_counts_ids_and_determinism(self, spec: dict[str, Any], name: str) -> None:
        sweep = parse_sweep({"apiVersion": API_VERSION, "kind": KIND,
                             "metadata": {"name": name, "namespace": "ns"}, "spec": spec})
        grid = expand(sweep)
        lanes = _axes_product(spec)
        assert len(grid.lanes) == lanes == sweep.spec.lane_count
        trials = grid.all_trials()
        assert len(trials) == lanes * len(spec["ladder"]) == sweep.spec.potential_trials
        ids = [t.trial_id for t in trials]
        assert len(set(ids)) == len(ids)
        assert len({lane.name for lane in grid.lanes}) == len(grid.lanes)
        # Deterministic: again, and after a round trip through the manifest.
        assert [t.trial_id for t in expand(sweep).all_trials()] == ids
        again = parse_sweep(sweep_manifest(sweep))
        assert [t.trial_id for t in expand(again).all_trials()] == ids
        for lane in grid.lanes:
            assert [t.model for t in grid.trials[lane.name]] == spec["ladder"]

    @FUZZ
    @given(spec=valid_specs(), limit=st.integers(1, 400))
    def test_max_trials_is_the_limit(self, spec: dict[str, Any], limit: int) -> None:
        spec = {**spec, "maxTrials": limit}
        total = _axes_product(spec) * len(spec["ladder"])
        try:
            parsed = parse_sweep(spec)
        except SpecError as error:
            assert total > limit
            assert [p for p, _ in error.problems] == ["maxTrials"]
        else:
            assert total <= limit and parsed.spec.potential_trials == total

    def test_lane_count_property_matches_the_model_defaults(self) -> None:
        spec = SweepSpec.model_validate({"ladder": ["a", "b"]})
        assert spec.potential_trials == 2 * 25


@FUZZ
@given(value=st.integers(1, 10**6))
def test_integral_floats_are_integers_as_on_the_apiserver(value: int) -> None:
    """kube-apiserver accepts `epochs: 2.0` for an integer field and stores 2; so does
    `parse_sweep`. A fractional value is refused by both (see the invalid corpus)."""
    sweep = parse_sweep({"ladder": ["m"], "methods": ["full"], "parallelism": float(value),
                         "training": {"epochs": float(value)}})
    assert sweep.spec.parallelism == sweep.spec.training.epochs == value
    try:
        parse_sweep({"ladder": ["m"], "methods": ["full"], "parallelism": value + 0.5})
    except SpecError as error:
        assert [p for p, _ in error.problems] == ["parallelism"]
    else:  # pragma: no cover
        raise AssertionError("a fractional parallelism parsed")
