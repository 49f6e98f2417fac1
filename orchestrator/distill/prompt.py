"""The chain-of-thought prompt: a system message, few-shot turns, then the input (pure).

The default follows the shape of the paper's teacher prompt (DSS, Hsieh et al. 2023, as the
paper used it with Mixtral 8x22B): each input already carries the instructions on writing Query
DSL and the index's fields, then the question; the teacher is asked to reason step by step,
naming the fields it uses, and then to give the query. Few-shot answers show the exact answer
format (`Rationale: ...` then `Query DSL: {...}`) that `parse` reads back.

A template file (YAML or JSON) replaces any part: `system`, `user` (where `{input}` stands for
the input; no other braces are special, so JSON in a template is safe), the two markers, and
`examples` (a list of {input, rationale, label}). Its fingerprint goes into the cache key, so
editing the template never reuses answers to the old one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "DEFAULT_TEMPLATE",
    "FewShot",
    "Template",
    "TemplateError",
    "render_messages",
    "template_from_mapping",
]

INPUT_SLOT: Final = "{input}"

_DEFAULT_SYSTEM: Final = (
    "You are an expert in OpenSearch Query DSL. You are given instructions, the fields of an "
    "index and a question. Think step by step. First write a rationale: explain, step by "
    "step, how the query is built from the question, and name every field the query uses, "
    "spelled exactly as listed. Then write the query as one JSON object on one line.\n"
    "Answer in exactly this format and add nothing after the query:\n"
    "Rationale: <your step-by-step reasoning>\n"
    "Query DSL: <the JSON object>"
)

# Two worked examples in the style of the built-in dataset (short field lists, so the shots
# cost few tokens; the inputs being labelled carry their own, longer instructions).
_DEFAULT_EXAMPLES: Final = (
    {
        "input": "Index: shipments\nFields: carrier (keyword: DHL|FedEx|UPS), weight_kg "
        "(float), ship_date (date)\n\nQuestion: Show 20 FedEx shipments heavier than 100 kg.",
        "rationale": "Step 1: The question is about shipments, so the query uses the fields "
        "of the shipments index. Step 2: The carrier must be exactly \"FedEx\", so this is a "
        "term query on the keyword field carrier. Step 3: Heavier than 100 kg is a range "
        "with gt 100 on the numeric field weight_kg. Step 4: Both conditions only include or "
        "exclude documents, so they go in the filter of a bool query. Step 5: The question "
        "asks for 20 documents without an order, so size is 20.",
        "label": '{"size":20,"query":{"bool":{"filter":[{"term":{"carrier":"FedEx"}},'
        '{"range":{"weight_kg":{"gt":100}}}]}}}',
    },
    {
        "input": "Index: support_tickets\nFields: priority (keyword: low|high|urgent), "
        "resolution_hours (float)\n\nQuestion: What is the average resolution time of urgent "
        "tickets?",
        "rationale": "Step 1: The question is about tickets, so the query uses the fields of "
        "the support_tickets index. Step 2: The priority must be exactly \"urgent\", so this "
        "is a term query on the keyword field priority. Step 3: The average resolution time "
        "is an avg aggregation on resolution_hours, named avg_resolution_hours. Step 4: Only "
        "the aggregation is wanted, so size is 0.",
        "label": '{"size":0,"query":{"term":{"priority":"urgent"}},"aggs":'
        '{"avg_resolution_hours":{"avg":{"field":"resolution_hours"}}}}',
    },
)


class TemplateError(ValueError):
    """A template that cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class FewShot:
    """One worked example: the input, and the answer the teacher should imitate."""

    input: str
    rationale: str
    label: str


@dataclass(frozen=True, slots=True)
class Template:
    """Everything that shapes the prompt and the answer format."""

    system: str = _DEFAULT_SYSTEM
    user: str = INPUT_SLOT
    rationale_marker: str = "Rationale:"
    label_marker: str = "Query DSL:"
    examples: tuple[FewShot, ...] = field(
        default_factory=lambda: tuple(FewShot(**shot) for shot in _DEFAULT_EXAMPLES)
    )

    def answer(self, rationale: str, label: str) -> str:
        """An answer in the format `parse.parse_answer` reads (the few-shot turns use it)."""
        return f"{self.rationale_marker} {rationale}\n{self.label_marker} {label}"

    def fingerprint(self) -> str:
        """A digest of everything in the template (part of the cache key)."""
        document = {
            "system": self.system, "user": self.user,
            "markers": [self.rationale_marker, self.label_marker],
            "examples": [[s.input, s.rationale, s.label] for s in self.examples],
        }
        text = json.dumps(document, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


DEFAULT_TEMPLATE: Final = Template()


def render_messages(template: Template, text: str) -> list[dict[str, str]]:
    """The chat messages for one input: system, the few-shot turns, then the input."""
    messages = [{"role": "system", "content": template.system}] if template.system else []
    for shot in template.examples:
        messages.append({"role": "user", "content": template.user.replace(INPUT_SLOT, shot.input)})
        messages.append(
            {"role": "assistant", "content": template.answer(shot.rationale, shot.label)}
        )
    messages.append({"role": "user", "content": template.user.replace(INPUT_SLOT, text)})
    return messages


_KEYS: Final = frozenset({"system", "user", "rationale_marker", "label_marker", "examples"})


def template_from_mapping(document: Any, source: str) -> Template:
    """A Template from a parsed YAML/JSON document; keys it lacks keep the default.

    Raises TemplateError naming `source` and the key for anything unusable."""
    if not isinstance(document, Mapping):
        raise TemplateError(f"{source}: a template must be a mapping of keys")
    unknown = sorted(set(map(str, document)) - _KEYS)
    if unknown:
        raise TemplateError(
            f"{source}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})"
        )
    values: dict[str, Any] = {}
    for key in ("system", "user", "rationale_marker", "label_marker"):
        if key in document:
            value = document[key]
            if not isinstance(value, str):
                raise TemplateError(f"{source}: {key} must be a string")
            values[key] = value
    if "user" in values and INPUT_SLOT not in values["user"]:
        raise TemplateError(f"{source}: user must contain {INPUT_SLOT} (where the input goes)")
    for key in ("rationale_marker", "label_marker"):
        if key in values and not values[key].strip():
            raise TemplateError(f"{source}: {key} must not be empty")
    if "examples" in document:
        values["examples"] = _examples(document["examples"], source)
    return Template(**values)


def _examples(raw: Any, source: str) -> tuple[FewShot, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise TemplateError(f"{source}: examples must be a list of {{input, rationale, label}}")
    shots = []
    for i, item in enumerate(raw):
        where = f"{source}: examples[{i}]"
        if not isinstance(item, Mapping):
            raise TemplateError(f"{where} must be a mapping with input, rationale and label")
        for key in ("input", "rationale", "label"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise TemplateError(f"{where}.{key} must be a non-empty string")
        extra = sorted(set(map(str, item)) - {"input", "rationale", "label"})
        if extra:
            raise TemplateError(f"{where}: unknown key(s) {', '.join(extra)}")
        shots.append(FewShot(item["input"], item["rationale"], item["label"]))
    return tuple(shots)
