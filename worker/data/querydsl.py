"""A reproducible synthetic NL -> OpenSearch Query DSL dataset with step-by-step rationales.

The paper's dataset (1,000 teacher-labelled questions about OpenSearch indices) is not public,
so Ladder ships this stand-in with the same shape: each input is a long instruction preamble on
writing Query DSL, then the description of one index's fields, then the question at the end;
each label is a compact Query DSL JSON object; each rationale explains, step by step, how the
query is built and names every field it uses.

The questions are composed from parts (conditions, then an intent: list, top-N, count, metric,
breakdown, histogram) so that the label follows from the question by the rules the preamble
states: a model that learns the rules can reach exact match, which keeps exact match and JSON
validity meaningful as quality metrics. Everything is drawn from `random.Random` seeded per
example from (seed, index), so output is identical on every machine and process, and a smaller
`n` yields a prefix of a larger one.

No torch/transformers here: `ladder dataset querydsl` runs it with the controller's dependencies
only (see pyproject.toml).
"""

from __future__ import annotations

import csv
import json
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from worker.data.dsl_validation import validate_query_dsl
from worker.data.examples import COLUMNS, DSSExample
from worker.data.indices import INDICES, NUMERIC_TYPES, FieldSpec, IndexSpec

__all__ = [
    "INDICES",
    "FieldSpec",
    "IndexSpec",
    "generate_querydsl",
    "render_preamble",
    "validate_query_dsl",
    "write_dataset",
]

_NUMERIC: Final = NUMERIC_TYPES


# --- preambles -------------------------------------------------------------------------------

_FULL_INSTRUCTIONS: Final = """\
Translate the question into OpenSearch Query DSL: one JSON object usable as the body of a \
_search request, and nothing else.
Rules:
1. Use only the fields listed for the index below, spelled exactly as listed.
2. Keyword fields: term for one exact value, terms for several (case-sensitive, as given).
3. Text fields: match, or match_phrase when an exact phrase is asked for.
4. Numeric and date fields: range with gt, gte, lt or lte; "between a and b" is gte and lte. \
One numeric code (a status code) is a term.
5. Relative dates use date math rounded to the unit: "in the last 7 days" is gte "now-7d/d", \
lte "now/d" (weeks w, months M, hours h). Absolute dates are yyyy-MM-dd and the range adds \
"format":"yyyy-MM-dd".
6. One condition is the query itself. Several go in a bool query of lists: full-text in must; \
exact values, ranges and "has a value" (exists) in filter; exclusions and "has no value" in \
must_not; "either ... or" alternatives in should with minimum_should_match 1.
7. Top, highest, lowest, most recent or oldest N: sort on the field (desc for highest and most \
recent, asc otherwise) and size N. N documents without an order: size only.
8. Only a count: size 0 and track_total_hits true.
9. Totals, averages, extremes and breakdowns: aggs with size 0. Metrics sum, avg, max, min are \
named <op>_<field>; terms is named by_<field> with size 10 unless a number is given; \
date_histogram is named per_<interval> with calendar_interval day, week, month, quarter or \
year. A metric per group or period is a sub-aggregation of that bucket.
10. Key order: size, query, sort, aggs, track_total_hits. Add nothing the question does not \
need."""


def _describe_field(f: FieldSpec) -> str:
    line = f"- {f.name} ({f.type}): {f.description}"
    if f.type == "keyword" and f.values:
        line += "; values: " + ", ".join(f.values)
    elif f.type in _NUMERIC and f.unit and f.unit not in f.description:
        line += f"; in {f.unit}"
    return line + "."


def render_preamble(index: IndexSpec, preamble: str) -> str:
    """The input text before the question: instructions plus this index's field description.

    "full" mirrors the paper's long prompts (about 1,700 characters of instructions plus the
    fields, 2,300 to 2,700 in all); "short" keeps the field list but only a line of
    instructions, for fast CPU runs where a long input would dominate step time.
    """
    if preamble == "full":
        fields = "\n".join(_describe_field(f) for f in index.fields)
        return (
            f"{_FULL_INSTRUCTIONS}\n\nIndex: {index.name}\n{index.description}\n"
            f"Fields:\n{fields}\n\n"
        )
    if preamble == "short":
        parts = []
        for f in index.fields:
            if f.type == "keyword" and f.values:
                parts.append(f"{f.name} (keyword: {'|'.join(f.values)})")
            else:
                parts.append(f"{f.name} ({f.type})")
        return (
            f"Write the OpenSearch Query DSL JSON for the question. Index {index.name}.\n"
            f"Fields: {', '.join(parts)}\n"
        )
    raise ValueError(f"preamble must be 'full' or 'short', got {preamble!r}")


# --- conditions ------------------------------------------------------------------------------

Role = Literal["must", "filter", "must_not"]


@dataclass(slots=True)
class _Cond:
    """One condition of a question: its query clause, its wordings and its explanation."""

    clause: dict[str, Any]
    role: Role
    phrase: str  # postnominal: "tickets <phrase>"
    clause_phrase: str  # sentence form for "either ... or ...": "the priority is high"
    explain: str  # rationale step, naming the field
    field: str


def _nice_number(rng: random.Random, f: FieldSpec) -> int:
    """A round threshold inside the field's range, as people write them in questions."""
    span = f.high - f.low
    if span <= 10:
        return rng.randint(int(f.low) + 1, int(f.high) - 1)
    magnitude = 10 ** max(len(str(int(span))) - 2, 0)
    raw = f.low + span * rng.uniform(0.1, 0.9)
    return max(round(raw / magnitude) * magnitude, magnitude)


def _two_numbers(rng: random.Random, f: FieldSpec) -> tuple[int, int]:
    """Two distinct thresholds, ordered, for "between a and b"."""
    if f.high - f.low <= 10:
        lo, hi = sorted(rng.sample(range(int(f.low), int(f.high) + 1), 2))
        return lo, hi
    a = _nice_number(rng, f)
    for _ in range(100):
        b = _nice_number(rng, f)
        if b != a:
            break
    else:  # pragma: no cover - the ranges in INDICES hold many round numbers
        b = a * 2
    lo, hi = sorted((a, b))
    return lo, hi


def _plural(noun: str) -> str:
    if noun.endswith("s"):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    return noun + "s"


def _fmt_num(v: int, unit: str) -> str:
    text = f"{v:,}" if abs(v) >= 10000 else str(v)
    if not unit:
        return text
    return f"{text}{unit}" if unit in ("ms", "kg") else f"{text} {unit}"


def _fill(template: str, v: str) -> str:
    return template.replace("{v}", v)


def _keyword_cond(rng: random.Random, f: FieldSpec) -> _Cond:
    style = rng.random()
    if style < 0.22 and len(f.values) >= 3:
        picked = rng.sample(f.values, rng.choice((2, 3)) if len(f.values) > 3 else 2)
        listed = ", ".join(picked[:-1]) + " or " + picked[-1]
        phrase = rng.choice(
            (
                f"whose {f.noun} is {listed}",
                f"with {f.noun} {listed}",
                f"where the {f.noun} is any of {listed}",
            )
        )
        return _Cond(
            {"terms": {f.name: list(picked)}},
            "filter",
            phrase,
            f"the {f.noun} is {listed}",
            f"The question accepts several exact values of {f.noun} ({', '.join(picked)}), so "
            f"a terms query on the keyword field {f.name} lists them all.",
            f.name,
        )
    v = rng.choice(f.values)
    if style < 0.34:
        phrase = rng.choice(
            (
                f"whose {f.noun} is not {v}",
                f"excluding those with {f.noun} {v}",
                f"not {_fill(rng.choice(f.phrases), v) if f.phrases else f'with {f.noun} {v}'}",
            )
        )
        return _Cond(
            {"term": {f.name: v}},
            "must_not",
            phrase,
            f"the {f.noun} is not {v}",
            f"Documents whose {f.noun} is {v} must be left out: a term query on the keyword "
            f'field {f.name} for "{v}" describes them, to be excluded.',
            f.name,
        )
    wordings = [_fill(p, v) for p in f.phrases] + [f"whose {f.noun} is {v}", f"with {f.noun} {v}"]
    return _Cond(
        {"term": {f.name: v}},
        "filter",
        rng.choice(wordings),
        f"the {f.noun} is {v}",
        f'The {f.noun} must be exactly "{v}", so this is a term query on the keyword field '
        f"{f.name}.",
        f.name,
    )


def _text_cond(rng: random.Random, f: FieldSpec) -> _Cond:
    q = rng.choice(f.values)
    if rng.random() < 0.25:
        phrase = rng.choice(
            (
                f'whose {f.noun} contains the exact phrase "{q}"',
                f'with the exact phrase "{q}" in the {f.noun}',
            )
        )
        return _Cond(
            {"match_phrase": {f.name: q}},
            "must",
            phrase,
            f'the {f.noun} contains the exact phrase "{q}"',
            f'The question wants the exact phrase "{q}" in the free-text field {f.name}, so a '
            "match_phrase query is used.",
            f.name,
        )
    phrase = rng.choice(
        (
            f'mentioning "{q}" in the {f.noun}',
            f'whose {f.noun} mentions "{q}"',
            f'with "{q}" in the {f.noun}',
            f'whose {f.noun} is about "{q}"',
        )
    )
    return _Cond(
        {"match": {f.name: q}},
        "must",
        phrase,
        f'the {f.noun} mentions "{q}"',
        f'"{q}" is searched in the text field {f.name}, which is analyzed, so this is a match '
        "query.",
        f.name,
    )


def _numeric_cond(rng: random.Random, f: FieldSpec) -> _Cond:
    if f.values and rng.random() < 0.5:
        code = rng.choice(f.values)
        return _Cond(
            {"term": {f.name: int(code)}},
            "filter",
            rng.choice((f"with {f.noun} {code}", f"that returned {f.noun} {code}")),
            f"the {f.noun} is {code}",
            f"A single {f.noun} {code} is an exact value, so a term query on the numeric field "
            f"{f.name} matches it.",
            f.name,
        )
    kind = rng.choice(("gt", "gte", "lt", "lte", "between"))
    a = _nice_number(rng, f)
    n, u = f.noun, f.unit
    if kind == "between":
        lo, hi = _two_numbers(rng, f)
        bounds: dict[str, Any] = {"gte": lo, "lte": hi}
        phrase = rng.choice(
            (
                f"with a {n} between {_fmt_num(lo, u)} and {_fmt_num(hi, u)}",
                f"whose {n} is from {_fmt_num(lo, u)} to {_fmt_num(hi, u)}",
            )
        )
        said, bound_words = f"the {n} is between {lo} and {hi}", f"gte {lo} and lte {hi}"
    else:
        words = {
            "gt": ("above", "over", "greater than", "more than"),
            "gte": ("at least", "no less than"),
            "lt": ("below", "under", "less than"),
            "lte": ("at most", "no more than", "up to"),
        }[kind]
        w = rng.choice(words)
        bounds = {kind: a}
        phrase = rng.choice(
            (f"with a {n} {w} {_fmt_num(a, u)}", f"whose {n} is {w} {_fmt_num(a, u)}")
        )
        said, bound_words = f"the {n} is {w} {_fmt_num(a, u)}", f"{kind} {a}"
    return _Cond(
        {"range": {f.name: bounds}},
        "filter",
        phrase,
        said,
        f"The condition on {n} is a numeric bound, so a range query on {f.name} with "
        f"{bound_words} is used.",
        f.name,
    )


_REL_UNITS: Final = (
    ("day", "d", (1, 3, 7, 14, 30, 90)),
    ("week", "w", (1, 2, 4, 8)),
    ("month", "M", (1, 3, 6, 12)),
    ("hour", "h", (1, 6, 12, 24, 48)),
)


def _iso(rng: random.Random) -> tuple[int, int, int]:
    return rng.randint(2021, 2024), rng.randint(1, 12), rng.randint(1, 28)


def _date_cond(rng: random.Random, f: FieldSpec) -> _Cond:
    style = rng.random()
    verb = f.verb
    if style < 0.55:
        unit, code, choices = rng.choice(_REL_UNITS)
        k = rng.choice(choices)
        span = f"{unit}s" if k > 1 else unit
        ago = f"{k} {span}" if k > 1 else span
        phrase = rng.choice(
            (
                f"{verb} in the last {ago}",
                f"{verb} during the past {ago}",
                f"{verb} within the last {ago}",
                f"{verb} over the previous {ago}",
            )
        )
        bounds: dict[str, Any] = {"gte": f"now-{k}{code}/{code}", "lte": f"now/{code}"}
        return _Cond(
            {"range": {f.name: bounds}},
            "filter",
            phrase,
            f"it was {phrase}",
            f'"{phrase}" is a relative time window on the date field {f.name}: a range from '
            f'"now-{k}{code}/{code}" to "now/{code}", rounded to the {unit}.',
            f.name,
        )
    y, m, d = _iso(rng)
    start = f"{y:04d}-{m:02d}-{d:02d}"
    if style < 0.7:
        bounds = {"gte": start, "format": "yyyy-MM-dd"}
        phrase = rng.choice((f"{verb} since {start}", f"{verb} on or after {start}"))
        words = f"gte {start}"
    elif style < 0.82:
        bounds = {"lt": start, "format": "yyyy-MM-dd"}
        phrase = rng.choice((f"{verb} before {start}", f"{verb} earlier than {start}"))
        words = f"lt {start}"
    else:
        y2 = y + rng.choice((0, 1))
        m2 = rng.randint(m, 12) if y2 == y else rng.randint(1, 12)
        d2 = rng.randint(d + 1, 28) if (y2, m2) == (y, m) and d < 28 else rng.randint(1, 28)
        if (y2, m2, d2) <= (y, m, d):
            y2 = y + 1
        end = f"{y2:04d}-{m2:02d}-{d2:02d}"
        bounds = {"gte": start, "lte": end, "format": "yyyy-MM-dd"}
        phrase = rng.choice((f"{verb} between {start} and {end}", f"{verb} from {start} to {end}"))
        words = f"gte {start} and lte {end}"
    return _Cond(
        {"range": {f.name: bounds}},
        "filter",
        phrase,
        f"it was {phrase}",
        f"The absolute dates call for a range query on the date field {f.name} with {words} and "
        'format "yyyy-MM-dd" so the dates are parsed as written.',
        f.name,
    )


def _exists_cond(rng: random.Random, f: FieldSpec) -> _Cond:
    a = "an" if f.noun[0] in "aeiou" else "a"
    if rng.random() < 0.5:
        return _Cond(
            {"exists": {"field": f.name}},
            "filter",
            rng.choice((f"that have {a} {f.noun}", f"with {a} {f.noun} set")),
            f"the {f.noun} is set",
            f"Only documents with a value in {f.name} qualify, so an exists query on {f.name} "
            "checks for it.",
            f.name,
        )
    return _Cond(
        {"exists": {"field": f.name}},
        "must_not",
        rng.choice((f"without {a} {f.noun}", f"that have no {f.noun}")),
        f"the {f.noun} is missing",
        f"Documents must have no value in {f.name}: an exists query on {f.name} describes the "
        "ones that do, to be excluded.",
        f.name,
    )


def _condition(rng: random.Random, f: FieldSpec) -> _Cond:
    if f.exists_ok and rng.random() < 0.25:
        return _exists_cond(rng, f)
    if f.type == "keyword":
        return _keyword_cond(rng, f)
    if f.type == "text":
        return _text_cond(rng, f)
    if f.type == "date":
        return _date_cond(rng, f)
    return _numeric_cond(rng, f)


def _filterable(index: IndexSpec) -> list[FieldSpec]:
    """Fields questions may put conditions on (identifiers without a vocabulary are not)."""
    return [f for f in index.fields if f.values or f.type == "date" or f.type in _NUMERIC]


# --- the query as a whole --------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    """Everything one example is made of, before it is rendered into text and JSON."""

    index: IndexSpec
    conds: list[_Cond] = field(default_factory=list)
    either: tuple[_Cond, _Cond] | None = None
    body: dict[str, Any] = field(default_factory=dict)
    question: str = ""
    steps: list[str] = field(default_factory=list)


def _join(parts: Sequence[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _the_clauses(conds: Sequence[_Cond]) -> str:
    fields = _join([c.field for c in conds])
    return f"the {fields} clause goes" if len(conds) == 1 else f"the {fields} clauses go"


def _build_query(plan: _Plan) -> tuple[dict[str, Any] | None, list[str]]:
    """The `query` object and the rationale steps that explain how the conditions combine."""
    conds, either = plan.conds, plan.either
    if not conds and either is None:
        return None, []
    steps = [c.explain for c in conds]
    if either is None and len(conds) == 1 and conds[0].role != "must_not":
        steps.append("With a single condition no bool wrapper is needed; that clause is the query.")
        return conds[0].clause, steps
    if either is not None:
        steps += [either[0].explain, either[1].explain]
    bool_q: dict[str, Any] = {}
    placement: list[str] = []
    for role, why in (
        ("must", "so they contribute to relevance"),
        ("filter", "because they only include or exclude documents and need no scoring"),
    ):
        chosen = [c for c in conds if c.role == role]
        if chosen:
            bool_q[role] = [c.clause for c in chosen]
            placement.append(f"{_the_clauses(chosen)} in {role} {why}")
    if either is not None:
        bool_q["should"] = [either[0].clause, either[1].clause]
        placement.append(
            f"the question accepts either {either[0].clause_phrase} or "
            f"{either[1].clause_phrase}, so the {either[0].field} and {either[1].field} clauses "
            "go in should with minimum_should_match 1"
        )
    negated = [c for c in conds if c.role == "must_not"]
    if negated:
        bool_q["must_not"] = [c.clause for c in negated]
        placement.append(
            f"{_the_clauses(negated)} in must_not to exclude what "
            f"{'it matches' if len(negated) == 1 else 'they match'}"
        )
    if either is not None:
        bool_q["minimum_should_match"] = 1
    steps.append(
        "Several conditions are combined in one bool query whose sections are lists: "
        + "; ".join(placement)
        + "."
    )
    return {"bool": bool_q}, steps


_INTERVALS: Final = ("day", "week", "month", "quarter", "year")
_METRICS: Final = {
    "sum": ("total", "sum of"),
    "avg": ("average", "mean"),
    "max": ("maximum", "highest"),
    "min": ("minimum", "lowest"),
}


def _metric_agg(rng: random.Random, f: FieldSpec) -> tuple[str, dict[str, Any], str, str]:
    op = rng.choice([op for op in _METRICS if op != "sum" or f.summable])
    # "the total total amount" reads badly; prefer the other wording when they collide.
    words = [w for w in _METRICS[op] if w.split()[0] != f.noun.split()[0]] or _METRICS[op]
    word = rng.choice(words)
    name = f"{op}_{f.name}"
    article = "an" if op == "avg" else "a"
    why = (
        f"The {word} {f.noun} is {article} {op} aggregation on the numeric field {f.name}, "
        f"named {name}."
    )
    return name, {op: {"field": f.name}}, f"the {word} {f.noun}", why


def _terms_agg(rng: random.Random, f: FieldSpec) -> tuple[str, dict[str, Any], str, str, str]:
    top = rng.choice((None, None, 3, 5))
    size = 10 if top is None else top
    name = f"by_{f.name}"
    noun = f"top {top} {_plural(f.noun)}" if top else f.noun
    per = (
        rng.choice((f"per {f.noun}", f"by {f.noun}", f"for each {f.noun}"))
        if top is None
        else (f"for the {noun}")
    )
    why = "the question asks for" if top else "no number is given, so the default is"
    return (
        name,
        {"terms": {"field": f.name, "size": size}},
        per,
        noun,
        (
            f"Grouping by {f.noun} is a terms aggregation on the keyword field {f.name}, named "
            f"{name}, with size {size} because {why} {size} buckets."
        ),
    )


def _histogram_agg(rng: random.Random, f: FieldSpec) -> tuple[str, dict[str, Any], str, str]:
    interval = rng.choice(_INTERVALS)
    name = f"per_{interval}"
    adverb = {
        "day": "daily",
        "week": "weekly",
        "month": "monthly",
        "quarter": "quarterly",
        "year": "yearly",
    }[interval]
    per = rng.choice((f"per {interval}", f"for each {interval}", f"{adverb}"))
    return (
        name,
        {"date_histogram": {"field": f.name, "calendar_interval": interval}},
        per,
        (
            f"Buckets per {interval} come from a date_histogram on the date field {f.name} with "
            f'calendar_interval "{interval}", named {name}.'
        ),
    )


def _scope(plan: _Plan) -> str:
    """The conditions as a postnominal phrase: "tickets <scope>"."""
    parts = [c.phrase for c in plan.conds]
    if plan.either is not None:
        parts.append(
            f"where either {plan.either[0].clause_phrase} or {plan.either[1].clause_phrase}"
        )
    return _join(parts)


def _with_scope(head: str, plan: _Plan) -> str:
    scope = _scope(plan)
    return f"{head} {scope}" if scope else head


def _pick_conditions(rng: random.Random, plan: _Plan, low: int, high: int) -> None:
    candidates = _filterable(plan.index)
    fields = rng.sample(candidates, rng.randint(low, high))
    plan.conds = [_condition(rng, f) for f in fields]
    if plan.conds and all(c.role == "must_not" for c in plan.conds):
        # A question that only excludes reads oddly ("requests but not from ...") and maps to
        # a bare must_not; put a positive condition first.
        rest = [f for f in candidates if f.name not in {c.field for c in plan.conds}]
        plan.conds.insert(0, _positive(rng, rng.choice(rest)))
    if plan.conds and rng.random() < 0.15:
        used = {c.field for c in plan.conds}
        options = [
            f
            for f in plan.index.fields
            if f.name not in used and ((f.type == "keyword" and f.values) or f.type in _NUMERIC)
        ]
        if len(options) >= 2:
            a, b = rng.sample(options, 2)
            plan.either = (_positive(rng, a, single=True), _positive(rng, b, single=True))


def _positive(rng: random.Random, f: FieldSpec, *, single: bool = False) -> _Cond:
    """A condition that includes documents (not a must_not).

    With `single`, also one value rather than a terms list, so that "either A or B" never
    reads as "either A or B or C".
    """
    for _ in range(100):
        c = _condition(rng, f)
        if c.role != "must_not" and not (single and "terms" in c.clause):
            return c
    raise AssertionError(f"no positive condition for {f.name}")  # pragma: no cover


def _intent_list(rng: random.Random, plan: _Plan) -> None:
    _pick_conditions(rng, plan, 1, 3)
    p, s = plan.index.plural, plan.index.singular
    n = rng.choice((None, None, None, 20, 50))
    if n is None:
        head = rng.choice(
            (
                f"Show me all {p}",
                f"List the {p}",
                f"Find {p}",
                f"Get every {s}",
                f"Retrieve the {p}",
                f"Which are the {p}",
            )
        )
    else:
        head = rng.choice((f"Show {n} {p}", f"Give me {n} {p}", f"Fetch {n} {p}"))
    query, steps = _build_query(plan)
    if n is not None:
        plan.body["size"] = n
    plan.body["query"] = query
    if n is not None:
        steps.append(f"The question asks for {n} documents without an order, so size is {n}.")
    end = "?" if head.startswith("Which") else "."
    plan.question = _with_scope(head, plan) + end
    plan.steps = steps


def _intent_top(rng: random.Random, plan: _Plan) -> None:
    _pick_conditions(rng, plan, 0, 2)
    p = plan.index.plural
    n = rng.choice((1, 3, 5, 10, 20))
    # "the 1 tickets" reads wrong; a single document is asked for in the singular.
    them = f"{n} {p}" if n > 1 else plan.index.singular
    numeric = [f for f in plan.index.by_type(*_NUMERIC) if not f.is_code]
    order = rng.choice(("desc", "asc"))
    if rng.random() < 0.35 and plan.index.main_date:
        f = next(x for x in plan.index.fields if x.name == plan.index.main_date)
        word = "most recent" if order == "desc" else "oldest"
        them = f"{n} {word} {p}" if n > 1 else f"{word} {plan.index.singular}"
        verb = "What are" if n > 1 else "What is"
        head = rng.choice((f"Show the {them}", f"{verb} the {them}"))
        if len(plan.index.by_type("date")) > 1:
            head += f" by {f.noun}"  # Say which date "recent" refers to when there are several.
        reason = f"the {word} {p if n > 1 else plan.index.singular} by {f.noun}"
    else:
        f = rng.choice(numeric)
        word = "highest" if order == "desc" else "lowest"
        options = [
            f"Show the {them} with the {word} {f.noun}",
            f"List the {them} with the {word} {f.noun}",
        ]
        if order == "desc" and n > 1:
            options.append(f"List the top {them} by {f.noun}")
        head = rng.choice(options)
        reason = f"the {p if n > 1 else plan.index.singular} with the {word} {f.noun}"
    query, steps = _build_query(plan)
    plan.body["size"] = n
    if query is not None:
        plan.body["query"] = query
    plan.body["sort"] = [{f.name: {"order": order}}]
    steps.append(f"To get {reason}, sort on {f.name} in {order} order and set size to {n}.")
    end = "?" if head.startswith("What") else "."
    plan.question = _with_scope(head, plan) + end
    plan.steps = steps


def _intent_count(rng: random.Random, plan: _Plan) -> None:
    _pick_conditions(rng, plan, 1, 3)
    p = plan.index.plural
    head = rng.choice((f"How many {p} are there", f"Count the {p}", f"What is the number of {p}"))
    query, steps = _build_query(plan)
    plan.body["size"] = 0
    plan.body["query"] = query
    plan.body["track_total_hits"] = True
    steps.append(
        "Only the number of matching documents is asked, so size is 0 and track_total_hits is "
        "true for an exact count."
    )
    end = "." if head.startswith("Count") else "?"
    plan.question = _with_scope(head, plan) + end
    plan.steps = steps


@dataclass(slots=True)
class _Aggregation:
    """An aggregation question's parts: the `aggs` body, the question's head (no scope, no
    punctuation) and the reasoning steps that explain the aggregation."""

    aggs: dict[str, Any]
    head: str
    steps: list[str]


def _aggregation_fields(
    plan: _Plan,
) -> tuple[list[FieldSpec], list[FieldSpec], list[FieldSpec]]:
    """The fields an aggregation can use: numeric (not codes), groupable keywords (those the
    filters do not already pin, when any remain) and dates."""
    index = plan.index
    numeric = [f for f in index.by_type(*_NUMERIC) if not f.is_code]
    groupable = [f for f in index.by_type("keyword") if f.values]
    used = {c.field for c in plan.conds}
    if plan.either is not None:
        used |= {plan.either[0].field, plan.either[1].field}
    groupable = [f for f in groupable if f.name not in used] or groupable
    return numeric, groupable, index.by_type("date")


def _metric_question(rng: random.Random, p: str, numeric: list[FieldSpec]) -> _Aggregation:
    """One metric over every matching document (average, sum, max, ...)."""
    name, body, what, why = _metric_agg(rng, rng.choice(numeric))
    head = rng.choice(
        (f"What is {what} of {p}", f"Compute {what} of {p}", f"Tell me {what} across {p}")
    )
    return _Aggregation({name: body}, head, [why])


def _terms_question(
    rng: random.Random, p: str, groupable: list[FieldSpec], numeric: list[FieldSpec], *,
    with_metric: bool,
) -> _Aggregation:
    """A terms breakdown: counts per value, or a metric per value as a sub-aggregation."""
    name, body, per, noun, why = _terms_agg(rng, rng.choice(groupable))
    if not with_metric:
        head = (
            rng.choice((f"How many {p} are there {per}", f"Count {p} {per}"))
            if not noun.startswith("top")
            else f"Which are the {noun} by number of {p}"
        )
        return _Aggregation({name: body}, head, [why])
    m_name, m_body, what, m_why = _metric_agg(rng, rng.choice(numeric))
    head = rng.choice((f"What is {what} {per} of {p}", f"Break down {what} {per} of {p}"))
    if noun.startswith("top"):
        head = f"What is {what} {per} of {p}"
    return _Aggregation(
        {name: {**body, "aggs": {m_name: m_body}}},
        head,
        [why, m_why, f"Because the {m_name} value is wanted per bucket, it is a "
                     f"sub-aggregation inside {name}."],
    )


def _histogram_question(
    rng: random.Random, p: str, dates: list[FieldSpec], groupable: list[FieldSpec],
    numeric: list[FieldSpec], *, inner: Literal["metric", "terms"] | None,
) -> _Aggregation:
    """A date histogram: counts per period, or a metric or a terms split inside each period."""
    d = rng.choice(dates)
    name, body, per, why = _histogram_agg(rng, d)
    if inner is None:
        heads = [f"Count {p} {per} by {d.noun}", f"How many {p} are there {per} by {d.noun}"]
        if not d.verb.endswith("ing"):  # "were resolved per day", not "were arriving"
            heads += [f"How many {p} were {d.verb} {per}", f"Count {p} {d.verb} {per}"]
        return _Aggregation({name: body}, rng.choice(heads), [why])
    if inner == "metric":
        m_name, m_body, what, m_why = _metric_agg(rng, rng.choice(numeric))
        head = rng.choice(
            (f"Show {what} of {p} {per} by {d.noun}", f"What is {what} of {p} {per}, by {d.noun}")
        )
        return _Aggregation(
            {name: {**body, "aggs": {m_name: m_body}}},
            head,
            [why, m_why, f"Because the {m_name} value is wanted per period, it is a "
                         f"sub-aggregation inside {name}."],
        )
    t_name, t_body, t_per, _noun, t_why = _terms_agg(rng, rng.choice(groupable))
    head = rng.choice(
        (
            f"Break down {p} {per} by {d.noun} and then {t_per}",
            f"How many {p} are there {per} by {d.noun}, split {t_per}",
        )
    )
    return _Aggregation(
        {name: {**body, "aggs": {t_name: t_body}}},
        head,
        [why, t_why,
         f"The split inside each period makes {t_name} a sub-aggregation of {name}."],
    )


# What a date histogram nests inside each period, by aggregation shape.
_INNER: Final[dict[str, Literal["metric", "terms"] | None]] = {
    "hist": None, "hist_metric": "metric", "hist_terms": "terms",
}


def _intent_aggregate(rng: random.Random, plan: _Plan) -> None:
    """Metrics, terms breakdowns and date histograms, possibly nested: pick the filters, the
    shape, build the aggregation (`_metric_question`, `_terms_question`,
    `_histogram_question`), then the query around it."""
    _pick_conditions(rng, plan, 0, 2)
    p = plan.index.plural
    numeric, groupable, dates = _aggregation_fields(plan)
    shape = rng.choice(("metric", "terms", "terms_metric", "hist", "hist_metric", "hist_terms"))
    if shape == "metric":
        agg = _metric_question(rng, p, numeric)
    elif shape in ("terms", "terms_metric"):
        agg = _terms_question(rng, p, groupable, numeric, with_metric=shape == "terms_metric")
    else:
        agg = _histogram_question(rng, p, dates, groupable, numeric, inner=_INNER[shape])
    query, steps = _build_query(plan)
    plan.body["size"] = 0
    if query is not None:
        plan.body["query"] = query
    plan.body["aggs"] = agg.aggs
    steps += agg.steps
    steps.append("Only aggregation results are needed, not documents, so size is 0.")
    end = "." if agg.head.split()[0] in ("Compute", "Tell", "Count", "Break", "Show") else "?"
    scope = _scope(plan)
    plan.question = f"{agg.head}{' ' + scope if scope else ''}{end}"
    plan.steps = steps


_INTENTS: Final[tuple[tuple[Callable[[random.Random, _Plan], None], float], ...]] = (
    (_intent_list, 0.3),
    (_intent_top, 0.2),
    (_intent_count, 0.15),
    (_intent_aggregate, 0.35),
)


def _make_example(rng: random.Random, preamble: str) -> DSSExample:
    index = rng.choice(INDICES)
    plan = _Plan(index)
    intents, weights = zip(*_INTENTS, strict=True)
    rng.choices(intents, weights=weights)[0](rng, plan)
    label = json.dumps(plan.body, separators=(",", ":"), ensure_ascii=False)
    keys = _join([f'"{k}"' for k in plan.body])
    steps = [
        f"The question is about {index.plural}, so the query uses the fields of the "
        f"{index.name} index.",
        *plan.steps,
        f"The final request body has the keys {keys}, in the required order."
        if len(plan.body) > 1
        else f"The final request body has the single key {keys}.",
    ]
    rationale = " ".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1))
    text = f"{render_preamble(index, preamble)}Question: {plan.question}"
    return DSSExample(input=text, label=label, rationale=rationale)


def generate_querydsl(n: int = 1000, seed: int = 0, preamble: str = "full") -> list[DSSExample]:
    """`n` synthetic examples; the same (n, seed, preamble) always gives identical output.

    Example i is drawn from its own generator seeded from (seed, i, attempt), so a smaller n
    gives a prefix of a larger one and `load_dss(size=...)` subsets stay comparable. A draw
    whose question repeats an earlier one is redrawn, so train and eval never share an input.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if preamble not in ("full", "short"):
        raise ValueError(f"preamble must be 'full' or 'short', got {preamble!r}")
    examples: list[DSSExample] = []
    seen: set[str] = set()
    for i in range(n):
        for attempt in range(1000):
            # A str seed is hashed with SHA-512 by random.seed, not with hash(), so it is
            # independent of PYTHONHASHSEED.
            rng = random.Random(f"querydsl:{seed}:{i}:{attempt}")
            example = _make_example(rng, preamble)
            if example.input not in seen:
                break
        else:  # pragma: no cover - the space of questions is far larger than any n in use
            raise RuntimeError(f"could not draw a new question for example {i}")
        seen.add(example.input)
        examples.append(example)
    return examples


# --- writing ---------------------------------------------------------------------------------


def write_dataset(path: str | os.PathLike[str], examples: Iterable[DSSExample]) -> int:
    """Write examples as `.jsonl`/`.json` (JSON Lines) or `.csv` by extension; return the count.

    The file is written to a temporary sibling and renamed into place, so a reader (or a
    crashed writer) never sees half a dataset. Output is byte-for-byte reproducible: fixed
    column order, `\\n` line endings for JSON Lines and the csv module's `\\r\\n` for CSV.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise ValueError(f"{target}: unknown extension {target.suffix!r} (use .jsonl or .csv)")
    target.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            if suffix == ".csv":
                writer = csv.writer(handle)
                writer.writerow(COLUMNS)
                for ex in examples:
                    writer.writerow((ex.input, ex.label, ex.rationale))
                    count += 1
            else:
                for ex in examples:
                    record = {"input": ex.input, "label": ex.label, "rationale": ex.rationale}
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    count += 1
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count
