"""A teacher's answer split into rationale and label, and every reason to reject one (pure).

The answer format is the template's: `<rationale marker> ...` then `<label marker> {...}`. The
label is the first JSON value after the label marker (a Markdown code fence around it is
allowed); the rationale is the text between the rationale marker (or the start, when the
teacher left the marker out) and the label marker.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from orchestrator.distill.prompt import Template

__all__ = ["Parsed", "Reason", "canonical_json", "parse_answer", "parse_json"]


class Reason(StrEnum):
    """Why an answer (or an input) yields no example. The value is what files and summaries
    show; `describe` says it in words."""

    REQUEST_FAILED = "request-failed"
    TRUNCATED = "truncated"
    NO_LABEL = "no-label"
    LABEL_NOT_JSON = "label-not-json"
    LABEL_INVALID_DSL = "label-invalid-dsl"
    GOLD_MISMATCH = "gold-mismatch"
    EMPTY_RATIONALE = "empty-rationale"
    RATIONALE_MISSES_FIELDS = "rationale-misses-fields"

    @property
    def describe(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: Final = {
    Reason.REQUEST_FAILED: "the teacher gave no answer (HTTP error after retries)",
    Reason.TRUNCATED: "the answer was cut off at max tokens (finish_reason length)",
    Reason.NO_LABEL: "the answer has no label marker",
    Reason.LABEL_NOT_JSON: "the label does not parse as JSON",
    Reason.LABEL_INVALID_DSL: "the label is JSON but not valid Query DSL",
    Reason.GOLD_MISMATCH: "the label differs from the gold label (compared as parsed JSON)",
    Reason.EMPTY_RATIONALE: "the rationale is empty",
    Reason.RATIONALE_MISSES_FIELDS: "the rationale does not mention every field the label uses",
}

_FENCE: Final = re.compile(r"^\s*```[A-Za-z]*\s*")


@dataclass(frozen=True, slots=True)
class Parsed:
    """What could be read from one answer. `label` is None when `problem` says why."""

    rationale: str
    label_text: str
    label: Any = None
    problem: Reason | None = None
    detail: str = ""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str) -> Any:
    """`json.loads`, refusing NaN and Infinity (not JSON; OpenSearch refuses them)."""
    return json.loads(text, parse_constant=_reject_constant)


def canonical_json(value: Any) -> str:
    """The label as Ladder's datasets write it: compact, key order kept, UTF-8 as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _find(text: str, marker: str, start: int = 0) -> int:
    return text.lower().find(marker.lower(), start)


def parse_answer(content: str, template: Template) -> Parsed:
    """Split `content` into rationale and label by the template's markers."""
    label_at = _find(content, template.label_marker)
    if label_at < 0:
        return Parsed(content.strip(), "", problem=Reason.NO_LABEL,
                      detail=f"no {template.label_marker!r} in the answer")
    rationale_at = _find(content, template.rationale_marker)
    if 0 <= rationale_at < label_at:
        rationale = content[rationale_at + len(template.rationale_marker):label_at]
    else:
        rationale = content[:label_at]
    rationale = rationale.strip()
    tail = content[label_at + len(template.label_marker):]
    tail = _FENCE.sub("", tail, count=1).lstrip()
    try:
        value, end = json.JSONDecoder(parse_constant=_reject_constant).raw_decode(tail)
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        return Parsed(rationale, tail.strip(), problem=Reason.LABEL_NOT_JSON, detail=reason)
    except RecursionError:
        return Parsed(rationale, tail.strip(), problem=Reason.LABEL_NOT_JSON,
                      detail="nested too deeply")
    return Parsed(rationale, tail[:end], value)
