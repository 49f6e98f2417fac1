"""Which teacher answers become training examples, as the paper screened them (pure).

An answer is kept when it was not cut off, its label parses as JSON (and, for Query DSL, passes
the project's structural validator `worker.data.dsl_validation`), it agrees with the gold label
where the input has one (compared as parsed JSON: key order and spacing do not matter), and its
rationale is non-empty and mentions every field the label uses. Every failed check is reported,
not just the first, so the summary counts every reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from orchestrator.distill.parse import Parsed, Reason, parse_json
from worker.data.dsl_validation import validate_query_dsl

__all__ = ["Problem", "Task", "fields_used", "mentions", "screen"]


class Task(StrEnum):
    """What the labels are: Query DSL (validated, fields checked) or any JSON."""

    QUERYDSL = "querydsl"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason an answer was rejected, with the particulars."""

    reason: Reason
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else str(self.reason)


# Query clauses whose body is {field: ...}.
_FIELD_KEYED: Final = frozenset({
    "match", "match_phrase", "match_phrase_prefix", "match_bool_prefix", "term", "terms",
    "prefix", "wildcard", "regexp", "fuzzy", "range",
})
_NOT_FIELDS: Final = frozenset({"boost", "_name"})


def fields_used(label: Any) -> list[str]:
    """The index fields a Query DSL body names, in first-seen order: the keys of field-keyed
    clauses, `field` values (exists, aggregations), `fields` lists, sort keys and _source."""
    seen: dict[str, None] = {}
    for name in _walk(label):
        if name and not name.startswith("_"):
            seen.setdefault(name, None)
    return list(seen)


def _walk(node: Any) -> Iterator[str]:
    if isinstance(node, list):
        for item in node:
            yield from _walk(item)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in _FIELD_KEYED and isinstance(value, dict) and \
                not isinstance(value.get("field"), str):  # terms/range aggs name a field
            yield from (k for k in value if k not in _NOT_FIELDS)
        elif key == "field" and isinstance(value, str):
            yield value
        elif key == "fields" and isinstance(value, list):
            yield from (v.split("^")[0] for v in value if isinstance(v, str))
        elif key == "sort":
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    yield item
                elif isinstance(item, dict):
                    yield from item
            continue
        elif key == "_source":
            if isinstance(value, str):
                yield value
            elif isinstance(value, list):
                yield from (v for v in value if isinstance(v, str))
            continue
        yield from _walk(value)


def mentions(rationale: str, name: str) -> bool:
    """Whether the rationale names the field: as written, or with its `_` and `.` read as
    spaces ("origin warehouse"), case-insensitively and as whole words."""
    spaced = re.sub(r"[_.]+", " ", name)
    for form in {name, spaced}:
        pattern = r"(?<![\w])" + r"\s+".join(map(re.escape, form.split())) + r"(?![\w])"
        if re.search(pattern, rationale, flags=re.IGNORECASE):
            return True
    return False


def screen(
    parsed: Parsed, *, truncated: bool, gold: str | None, task: Task
) -> list[Problem]:
    """Every problem of one answer; empty when it is a usable example."""
    problems: list[Problem] = []
    if truncated:
        problems.append(Problem(Reason.TRUNCATED))
    if parsed.problem is not None:
        problems.append(Problem(parsed.problem, parsed.detail))
    if not parsed.rationale.strip():
        problems.append(Problem(Reason.EMPTY_RATIONALE))
    if parsed.problem is not None:
        return problems
    label = parsed.label
    if task is Task.QUERYDSL:
        invalid = validate_query_dsl(label)
        if invalid:
            problems.append(Problem(Reason.LABEL_INVALID_DSL, "; ".join(invalid[:3])))
    if gold is not None and parse_json(gold) != label:
        problems.append(Problem(Reason.GOLD_MISMATCH))
    if task is Task.QUERYDSL and parsed.rationale.strip():
        missing = [name for name in fields_used(label) if not mentions(parsed.rationale, name)]
        if missing:
            problems.append(Problem(Reason.RATIONALE_MISSES_FIELDS, ", ".join(missing)))
    return problems
