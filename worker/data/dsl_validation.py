"""A structural check that an object is a plausible OpenSearch search request body.

Not OpenSearch itself: it knows the top-level keys, the common query clauses and their body
shapes, range bounds, and the aggregation types, which is enough to tell a usable query from
JSON that merely parses. Used on every generated label, and usable to score generated DSL.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["validate_query_dsl"]

_TOP_LEVEL: Final = frozenset(
    {"query", "aggs", "aggregations", "sort", "size", "from", "_source", "track_total_hits"}
)
_FIELD_LEAVES: Final = frozenset(
    {
        "match",
        "match_phrase",
        "match_phrase_prefix",
        "match_bool_prefix",
        "term",
        "prefix",
        "wildcard",
        "regexp",
        "fuzzy",
    }
)
_RANGE_KEYS: Final = frozenset(
    {"gt", "gte", "lt", "lte", "format", "time_zone", "boost", "relation"}
)
_BOUNDS: Final = frozenset({"gt", "gte", "lt", "lte"})
_BOOL_KEYS: Final = frozenset(
    {"must", "filter", "should", "must_not", "minimum_should_match", "boost"}
)
_BUCKET_AGGS: Final = frozenset(
    {
        "terms",
        "date_histogram",
        "histogram",
        "range",
        "date_range",
        "filter",
        "filters",
        "composite",
        "significant_terms",
        "missing",
        "nested",
    }
)
_METRIC_AGGS: Final = frozenset(
    {
        "sum",
        "avg",
        "min",
        "max",
        "value_count",
        "cardinality",
        "stats",
        "extended_stats",
        "percentiles",
        "top_hits",
        "median_absolute_deviation",
    }
)
_CALENDAR_INTERVALS: Final = frozenset(
    {
        "minute",
        "1m",
        "hour",
        "1h",
        "day",
        "1d",
        "week",
        "1w",
        "month",
        "1M",
        "quarter",
        "1q",
        "year",
        "1y",
    }
)
_SCALAR = (str, int, float, bool)


def validate_query_dsl(obj: object) -> list[str]:
    """Problems that make `obj` an implausible OpenSearch search body; empty when it looks fine.

    This is a structural check, not OpenSearch itself: known top-level keys, known query
    clauses with well-formed bodies, range bounds, and aggregations with exactly one known type
    plus optional sub-aggregations. Used to check every generated label, and usable to score
    the JSON validity of generated DSL beyond "it parses".
    """
    problems: list[str] = []
    if not isinstance(obj, dict):
        return [f"$: search body must be an object, got {type(obj).__name__}"]
    for key, value in obj.items():
        path = f"$.{key}"
        if key not in _TOP_LEVEL:
            problems.append(f"{path}: unknown top-level key")
        elif key == "query":
            _check_clause(value, path, problems)
        elif key in ("aggs", "aggregations"):
            _check_aggs(value, path, problems)
        elif key == "sort":
            _check_sort(value, path, problems)
        elif key in ("size", "from"):
            if not _is_int(value) or value < 0:
                problems.append(f"{path}: must be a non-negative integer")
        elif key == "track_total_hits":
            if not (isinstance(value, bool) or (_is_int(value) and value >= 0)):
                problems.append(f"{path}: must be a boolean or a non-negative integer")
        elif key == "_source":
            _check_source(value, path, problems)
    if "aggs" in obj and "aggregations" in obj:
        problems.append("$: both aggs and aggregations given")
    return problems


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _single_key(value: object, path: str, what: str, problems: list[str]) -> tuple[str, Any]:
    if not isinstance(value, dict) or len(value) != 1:
        problems.append(f"{path}: {what} must be an object with exactly one key")
        return "", None
    return next(iter(value.items()))


def _check_clause(clause: object, path: str, problems: list[str]) -> None:
    kind, body = _single_key(clause, path, "a query clause", problems)
    if not kind:
        return
    here = f"{path}.{kind}"
    if kind == "bool":
        _check_bool(body, here, problems)
    elif kind in _FIELD_LEAVES:
        name, spec = _single_key(body, here, f"{kind}", problems)
        if name and not isinstance(spec, (*_SCALAR, dict)):
            problems.append(f"{here}.{name}: value must be a scalar or an object")
    elif kind == "terms":
        fields = {k: v for k, v in body.items() if k != "boost"} if isinstance(body, dict) else {}
        if len(fields) != 1:
            problems.append(f"{here}: terms needs exactly one field")
        for name, values in fields.items():
            if (
                not isinstance(values, list)
                or not values
                or not all(isinstance(v, _SCALAR) for v in values)
            ):
                problems.append(f"{here}.{name}: must be a non-empty list of values")
    elif kind == "range":
        name, bounds = _single_key(body, here, "range", problems)
        if name:
            _check_range(bounds, f"{here}.{name}", problems)
    elif kind == "exists":
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("field"), str)
            or set(body) - {"field", "boost"}
        ):
            problems.append(f'{here}: must be {{"field": <name>}}')
    elif kind in ("match_all", "match_none"):
        if not isinstance(body, dict) or set(body) - {"boost"}:
            problems.append(f"{here}: must be an empty object")
    elif kind == "multi_match":
        if (
            not isinstance(body, dict)
            or "query" not in body
            or not isinstance(body.get("fields", []), list)
        ):
            problems.append(f"{here}: needs query and a list of fields")
    elif kind in ("query_string", "simple_query_string"):
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            problems.append(f"{here}: needs a query string")
    elif kind == "ids":
        if not isinstance(body, dict) or not isinstance(body.get("values"), list):
            problems.append(f"{here}: needs a list of values")
    elif kind == "nested":
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            problems.append(f"{here}: needs a path")
        else:
            _check_clause(body.get("query"), f"{here}.query", problems)
    else:
        problems.append(f"{here}: unknown query clause")


def _check_bool(body: object, path: str, problems: list[str]) -> None:
    if not isinstance(body, dict):
        problems.append(f"{path}: must be an object")
        return
    for key, value in body.items():
        if key not in _BOOL_KEYS:
            problems.append(f"{path}.{key}: unknown bool key")
        elif key == "minimum_should_match":
            if not (_is_int(value) or isinstance(value, str)):
                problems.append(f"{path}.{key}: must be an integer or a string")
        elif key == "boost":
            if not isinstance(value, int | float) or isinstance(value, bool):
                problems.append(f"{path}.{key}: must be a number")
        else:
            clauses = value if isinstance(value, list) else [value]
            for i, clause in enumerate(clauses):
                _check_clause(clause, f"{path}.{key}[{i}]", problems)


def _check_range(bounds: object, path: str, problems: list[str]) -> None:
    if not isinstance(bounds, dict):
        problems.append(f"{path}: range bounds must be an object")
        return
    unknown = set(bounds) - _RANGE_KEYS
    if unknown:
        problems.append(f"{path}: unknown range keys {sorted(unknown)}")
    if not _BOUNDS & set(bounds):
        problems.append(f"{path}: range needs at least one of gt, gte, lt, lte")
    if {"gt", "gte"} <= set(bounds) or {"lt", "lte"} <= set(bounds):
        problems.append(f"{path}: range has two bounds on the same side")
    for key in _BOUNDS & set(bounds):
        if not isinstance(bounds[key], str | int | float) or isinstance(bounds[key], bool):
            problems.append(f"{path}.{key}: bound must be a number or a string")


def _check_aggs(aggs: object, path: str, problems: list[str]) -> None:
    if not isinstance(aggs, dict) or not aggs:
        problems.append(f"{path}: must be a non-empty object of named aggregations")
        return
    for name, body in aggs.items():
        here = f"{path}.{name}"
        if not isinstance(body, dict):
            problems.append(f"{here}: aggregation must be an object")
            continue
        sub_keys = [k for k in body if k in ("aggs", "aggregations")]
        types = [k for k in body if k not in ("aggs", "aggregations", "meta")]
        if len(types) != 1:
            problems.append(f"{here}: needs exactly one aggregation type, got {types}")
            continue
        kind = types[0]
        spec = body[kind]
        if kind not in _BUCKET_AGGS | _METRIC_AGGS:
            problems.append(f"{here}.{kind}: unknown aggregation type")
            continue
        if not isinstance(spec, dict):
            problems.append(f"{here}.{kind}: must be an object")
            continue
        if (
            kind in _METRIC_AGGS
            and kind != "top_hits"
            and "field" not in spec
            and ("script" not in spec)
        ):
            problems.append(f"{here}.{kind}: needs a field")
        if kind in ("terms", "histogram", "date_histogram") and not isinstance(
            spec.get("field"), str
        ):
            problems.append(f"{here}.{kind}: needs a field")
        if kind == "terms" and "size" in spec and (not _is_int(spec["size"]) or spec["size"] < 1):
            problems.append(f"{here}.terms.size: must be a positive integer")
        if kind == "date_histogram":
            intervals = [
                k for k in ("calendar_interval", "fixed_interval", "interval") if k in spec
            ]
            if len(intervals) != 1:
                problems.append(f"{here}.date_histogram: needs exactly one interval")
            elif "calendar_interval" in spec and spec["calendar_interval"] not in (
                _CALENDAR_INTERVALS
            ):
                problems.append(f"{here}.date_histogram.calendar_interval: unknown interval")
        if sub_keys:
            if len(sub_keys) > 1:
                problems.append(f"{here}: both aggs and aggregations given")
            if kind in _METRIC_AGGS:
                problems.append(f"{here}: a metric aggregation cannot have sub-aggregations")
            for key in sub_keys:
                _check_aggs(body[key], f"{here}.{key}", problems)


def _check_sort(sort: object, path: str, problems: list[str]) -> None:
    items = sort if isinstance(sort, list) else [sort]
    for i, item in enumerate(items):
        here = f"{path}[{i}]"
        if isinstance(item, str):
            continue
        name, spec = _single_key(item, here, "a sort entry", problems)
        if not name:
            continue
        order = (
            spec
            if isinstance(spec, str)
            else spec.get("order", "asc")
            if isinstance(spec, dict)
            else None
        )
        if order not in ("asc", "desc"):
            problems.append(f"{here}.{name}: order must be asc or desc")


def _check_source(value: object, path: str, problems: list[str]) -> None:
    if isinstance(value, bool | str):
        return
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return
    if isinstance(value, dict) and set(value) <= {"includes", "excludes"}:
        return
    problems.append(f"{path}: must be a boolean, a string, a list of strings or includes/excludes")
