"""The built-in NL -> Query DSL generator: valid labels, faithful rationales, reproducibility."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.data import DatasetError, DSSExample, generate_querydsl, load_dss, write_dataset
from worker.data.indices import INDICES
from worker.data.querydsl import render_preamble, validate_query_dsl

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def full() -> list[DSSExample]:
    return generate_querydsl(1000, seed=0, preamble="full")


@pytest.fixture(scope="module")
def short() -> list[DSSExample]:
    return generate_querydsl(1000, seed=0, preamble="short")


# --- an independent reading of the labels ------------------------------------------------------

_FIELD_KEYED = {"match", "match_phrase", "term", "terms", "range", "prefix", "wildcard"}


def fields_in_query(body: dict[str, Any]) -> set[str]:
    """Every field name a search body refers to: in query clauses, aggregations and sort.

    Written from the Query DSL's shape, not from the generator, so the two check each other.
    """
    found: set[str] = set()

    def clause(c: dict[str, Any]) -> None:
        for kind, spec in c.items():
            if kind == "bool":
                for section, value in spec.items():
                    if section in ("must", "filter", "should", "must_not"):
                        for sub in value if isinstance(value, list) else [value]:
                            clause(sub)
            elif kind == "exists":
                found.add(spec["field"])
            elif kind in _FIELD_KEYED:
                found.update(k for k in spec if k != "boost")
            else:
                raise AssertionError(f"unexpected clause {kind}")

    def aggs(a: dict[str, Any]) -> None:
        for body_ in a.values():
            for key, spec in body_.items():
                if key in ("aggs", "aggregations"):
                    aggs(spec)
                elif "field" in spec:
                    found.add(spec["field"])

    if "query" in body:
        clause(body["query"])
    if "aggs" in body:
        aggs(body["aggs"])
    for item in body.get("sort", []):
        found.update([item] if isinstance(item, str) else item)
    return found


def walk(obj: Any) -> Iterator[tuple[str, Any]]:
    """(key, value) for every key of every object nested in obj."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk(v)


def question(ex: DSSExample) -> str:
    return ex.input.rsplit("Question: ", 1)[1]


# --- labels --------------------------------------------------------------------------------------


class TestLabels:
    def test_every_label_is_a_plausible_query(self, full: list[DSSExample]) -> None:
        assert len(full) == 1000
        for ex in full:
            body = json.loads(ex.label)
            assert validate_query_dsl(body) == [], ex.label

    def test_labels_are_compact_and_canonical(self, full: list[DSSExample]) -> None:
        for ex in full:
            assert ex.label == json.dumps(json.loads(ex.label), separators=(",", ":"))

    def test_top_level_keys_follow_the_stated_order(self, full: list[DSSExample]) -> None:
        order = ["size", "query", "sort", "aggs", "track_total_hits"]
        for ex in full:
            keys = list(json.loads(ex.label))
            assert keys == sorted(keys, key=order.index), ex.label

    def test_range_bounds_are_ordered(self, full: list[DSSExample]) -> None:
        for ex in full:
            for key, spec in walk(json.loads(ex.label)):
                if key != "range":
                    continue
                [bounds] = spec.values()
                if "gte" in bounds and "lte" in bounds:
                    # ISO dates compare correctly as strings; "now-7d/d" < "now/d" too.
                    assert bounds["gte"] < bounds["lte"], ex.label

    def test_labels_only_use_fields_of_their_index(self, full: list[DSSExample]) -> None:
        for ex in full:
            index = next(i for i in INDICES if f"Index: {i.name}\n" in ex.input)
            names = {f.name for f in index.fields}
            assert fields_in_query(json.loads(ex.label)) <= names, ex.label

    @pytest.mark.parametrize(
        "feature",
        [
            "match",
            "match_phrase",
            "term",
            "terms",
            "exists",
            "range:number",
            "range:relative-date",
            "range:iso-date",
            "bool:must",
            "bool:filter",
            "bool:should",
            "bool:must_not",
            "agg:terms",
            "agg:date_histogram",
            "agg:sum",
            "agg:avg",
            "agg:max",
            "agg:min",
            "agg:nested",
            "sort",
            "size",
            "track_total_hits",
        ],
    )
    def test_the_dataset_covers_each_construct(self, full: list[DSSExample], feature: str) -> None:
        def has(body: dict[str, Any]) -> bool:
            pairs = list(walk(body))
            kind, _, detail = feature.partition(":")
            if kind == "range":
                bounds = [
                    b for k, v in pairs if k == "range" for b in v.values() if isinstance(b, dict)
                ]
                values = [v for b in bounds for k, v in b.items() if k in ("gte", "lte", "lt")]
                return any(
                    (detail == "number" and isinstance(v, int))
                    or (detail == "relative-date" and isinstance(v, str) and "now" in v)
                    or (detail == "iso-date" and isinstance(v, str) and v[:2] == "20")
                    for v in values
                )
            if kind == "bool":
                return any(k == "bool" and detail in v for k, v in pairs)
            if kind == "agg":
                aggs = [v for k, v in pairs if k == "aggs"]
                if detail == "nested":
                    return any("aggs" in a for agg in aggs for a in agg.values())
                return any(detail in a for agg in aggs for a in agg.values())
            return (
                feature in body
                if feature in ("sort", "size", "track_total_hits")
                else any(k == feature for k, _ in pairs)
            )

        assert sum(has(json.loads(ex.label)) for ex in full) >= 5

    def test_every_index_is_asked_about(self, full: list[DSSExample]) -> None:
        for index in INDICES:
            assert sum(f"Index: {index.name}\n" in ex.input for ex in full) >= 50


# --- rationales ----------------------------------------------------------------------------------


class TestRationales:
    def test_each_rationale_names_every_field_its_query_uses(self, full: list[DSSExample]) -> None:
        for ex in full:
            for name in fields_in_query(json.loads(ex.label)):
                assert name in ex.rationale, (name, ex.label, ex.rationale)

    def test_rationales_are_stepwise(self, full: list[DSSExample]) -> None:
        for ex in full:
            assert ex.rationale.startswith("Step 1: ")
            assert "Step 2: " in ex.rationale


# --- inputs --------------------------------------------------------------------------------------


class TestInputs:
    @pytest.mark.parametrize(
        ("preamble", "low", "high"),
        [("full", 1500, 3200), ("short", 250, 1000)],
        ids=["full", "short"],
    )
    def test_preamble_lengths(self, preamble: str, low: int, high: int) -> None:
        for index in INDICES:
            assert low <= len(render_preamble(index, preamble)) <= high, index.name

    @pytest.mark.parametrize("preamble", ["full", "short"])
    def test_preamble_lists_every_field_of_the_index(self, preamble: str) -> None:
        for index in INDICES:
            text = render_preamble(index, preamble)
            for f in index.fields:
                assert f"{f.name} ({f.type}" in text

    def test_indices_have_six_to_twelve_typed_fields(self) -> None:
        assert len(INDICES) >= 4
        for index in INDICES:
            assert 6 <= len(index.fields) <= 12
            assert {f.type for f in index.fields} >= {"keyword", "date"}

    def test_question_comes_last_after_the_preamble(self, full: list[DSSExample]) -> None:
        for ex in full:
            q = question(ex)
            assert ex.input.endswith(q)
            assert q[-1] in ".?"
            assert "\n" not in q

    def test_short_inputs_keep_the_question_and_are_shorter(
        self, full: list[DSSExample], short: list[DSSExample]
    ) -> None:
        for f_ex, s_ex in zip(full, short, strict=True):
            assert question(f_ex) == question(s_ex)
            assert f_ex.label == s_ex.label
            assert len(s_ex.input) < len(f_ex.input) / 2

    def test_inputs_are_unique(self, full: list[DSSExample]) -> None:
        assert len({ex.input for ex in full}) == len(full)

    def test_questions_vary_in_wording(self, full: list[DSSExample]) -> None:
        openers = {" ".join(question(ex).split()[:2]) for ex in full}
        assert len(openers) >= 15


# --- reproducibility -----------------------------------------------------------------------------


class TestReproducibility:
    @pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
    def test_same_seed_same_bytes(self, tmp_path: Path, suffix: str) -> None:
        a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
        write_dataset(a, generate_querydsl(300, seed=7))
        write_dataset(b, generate_querydsl(300, seed=7))
        assert a.read_bytes() == b.read_bytes()

    def test_different_seeds_differ(self) -> None:
        a, b = generate_querydsl(100, seed=0), generate_querydsl(100, seed=1)
        assert sum(x != y for x, y in zip(a, b, strict=True)) > 90

    def test_a_smaller_n_is_a_prefix(self, full: list[DSSExample]) -> None:
        assert generate_querydsl(50, seed=0) == full[:50]

    def test_independent_of_the_hash_seed(self) -> None:
        code = (
            "import hashlib, json;"
            "from worker.data import generate_querydsl;"
            "ex = generate_querydsl(150, seed=3, preamble='short');"
            "print(hashlib.sha256(json.dumps([e.label + e.input + e.rationale for e in ex])"
            ".encode()).hexdigest())"
        )
        digests = set()
        for hash_seed in ("1", "2"):
            env = {**os.environ, "PYTHONHASHSEED": hash_seed}
            out = subprocess.run(
                [sys.executable, "-c", code],
                env=env,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            digests.add(out.stdout.strip())
        expected = generate_querydsl(150, seed=3, preamble="short")
        here = json.dumps([e.label + e.input + e.rationale for e in expected]).encode()
        digests.add(hashlib.sha256(here).hexdigest())
        assert len(digests) == 1

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [({"preamble": "medium"}, "preamble"), ({"n": -1}, "non-negative")],
        ids=["unknown-preamble", "negative-n"],
    )
    def test_bad_arguments_are_refused(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            generate_querydsl(**kwargs)


# --- writing and loading back --------------------------------------------------------------------


class TestRoundTrip:
    @pytest.mark.parametrize("preamble", ["full", "short"])
    @pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
    def test_write_then_load_gives_the_same_examples(
        self, tmp_path: Path, preamble: str, suffix: str
    ) -> None:
        examples = generate_querydsl(120, seed=5, preamble=preamble)
        path = tmp_path / "nested" / "dir" / f"data{suffix}"
        assert write_dataset(path, examples) == 120
        assert load_dss(str(path)) == examples

    def test_write_refuses_an_unknown_extension(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="unknown extension"):
            write_dataset(tmp_path / "data.parquet", generate_querydsl(2))
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize("preamble", ["full", "short"])
    def test_builtin_source_is_the_generator(self, preamble: str) -> None:
        got = load_dss("builtin:querydsl", size=40, preamble=preamble, seed=2)
        assert got == generate_querydsl(40, seed=2, preamble=preamble)

    def test_builtin_default_size_is_the_papers(self) -> None:
        assert len(load_dss("builtin:querydsl", preamble="short")) == 1000

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"source": "builtin:nope"}, "unknown built-in dataset"),
            ({"source": "builtin:querydsl", "preamble": "medium"}, "preamble"),
        ],
        ids=["unknown-builtin", "unknown-preamble"],
    )
    def test_builtin_errors_name_the_source(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(DatasetError, match=message) as info:
            load_dss(**kwargs)
        assert str(info.value).startswith(kwargs["source"])


# --- the validator itself ------------------------------------------------------------------------


class TestValidator:
    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"query": {"match_all": {}}},
            {"query": {"match": {"title": {"query": "a b", "operator": "and"}}}},
            {"size": 0, "aggregations": {"a": {"stats": {"field": "x"}}}},
            {"sort": ["_score", {"t": "desc"}], "from": 10, "_source": ["a", "b"]},
            {"query": {"bool": {"must": {"term": {"a": 1}}, "minimum_should_match": "50%"}}},
            {"aggs": {"h": {"date_histogram": {"field": "d", "fixed_interval": "30m"}}}},
            {"track_total_hits": 10000},
        ],
        ids=[
            "empty",
            "match_all",
            "match-long-form",
            "stats-aggregations",
            "sort-forms",
            "bool-single-clause",
            "fixed-interval",
            "track-total-hits-int",
        ],
    )
    def test_accepts_valid_shapes(self, body: dict[str, Any]) -> None:
        assert validate_query_dsl(body) == []

    @pytest.mark.parametrize(
        ("body", "problem"),
        [
            ([], "must be an object"),
            ({"querry": {}}, "unknown top-level key"),
            ({"query": {"trm": {"a": 1}}}, "unknown query clause"),
            ({"query": {"term": {"a": 1}, "match": {"b": 2}}}, "exactly one key"),
            ({"query": {"range": {"a": {"gte": 1, "from": 2}}}}, "unknown range keys"),
            ({"query": {"range": {"a": {"format": "yyyy"}}}}, "at least one of"),
            ({"query": {"range": {"a": {"gt": 1, "gte": 2}}}}, "same side"),
            ({"query": {"terms": {"a": []}}}, "non-empty list"),
            ({"query": {"bool": {"must": [{"nope": {}}]}}}, "bool.must[0].nope"),
            ({"query": {"bool": {"mustnt": []}}}, "unknown bool key"),
            ({"query": {"exists": {"name": "a"}}}, "exists"),
            ({"aggs": {"a": {"sum": {"field": "x"}, "avg": {"field": "x"}}}}, "exactly one"),
            ({"aggs": {"a": {"median": {"field": "x"}}}}, "unknown aggregation type"),
            ({"aggs": {"a": {"sum": {}}}}, "needs a field"),
            (
                {"aggs": {"a": {"sum": {"field": "x"}, "aggs": {"b": {"avg": {"field": "y"}}}}}},
                "cannot have sub-aggregations",
            ),
            (
                {"aggs": {"h": {"date_histogram": {"field": "d", "calendar_interval": "2d"}}}},
                "unknown interval",
            ),
            ({"aggs": {"t": {"terms": {"field": "x", "size": 0}}}}, "positive integer"),
            ({"size": -1}, "non-negative integer"),
            ({"size": True}, "non-negative integer"),
            ({"sort": [{"a": {"order": "up"}}]}, "asc or desc"),
            ({"aggs": {}, "aggregations": {}}, "both aggs and aggregations"),
        ],
        ids=[
            "not-an-object",
            "unknown-top-level",
            "unknown-clause",
            "two-clauses-in-one",
            "bad-range-key",
            "range-without-bound",
            "range-two-lower-bounds",
            "empty-terms",
            "nested-unknown-clause",
            "unknown-bool-key",
            "exists-without-field",
            "two-agg-types",
            "unknown-agg-type",
            "metric-without-field",
            "metric-with-sub-aggs",
            "bad-calendar-interval",
            "terms-size-zero",
            "negative-size",
            "boolean-size",
            "bad-sort-order",
            "aggs-and-aggregations",
        ],
    )
    def test_reports_implausible_shapes(self, body: Any, problem: str) -> None:
        problems = validate_query_dsl(body)
        assert any(problem in p for p in problems), problems
