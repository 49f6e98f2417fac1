"""The file of inputs to distil: JSON Lines or CSV, an `input` each, a gold `label` optional.

Other columns (a `rationale` too) are ignored, so a DSS file can be fed back in to relabel it
or to measure a teacher against its labels. Every record is checked before any token is paid
for; a problem is a `DatasetError` naming the file and line.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

from orchestrator.distill.parse import parse_json
from orchestrator.files import MAX_INPUTS_BYTES, UserFileError, read_user_bytes
from worker.data.dss import records
from worker.data.examples import DatasetError

__all__ = ["Item", "read_inputs"]


@dataclass(frozen=True, slots=True)
class Item:
    """One input to label, where it came from, and its gold label if the file had one."""

    line: int
    input: str
    gold: str | None = None


def read_inputs(path: Path) -> list[Item]:
    """The records of `path` (.jsonl/.json or .csv) in file order."""
    source = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise DatasetError(source, 1, f"unknown extension {path.suffix or '(none)'!r} "
                                      "(expected .csv, .json or .jsonl)")
    if not path.exists():
        raise DatasetError(source, 1, "file not found")
    try:
        data = read_user_bytes(path, max_bytes=MAX_INPUTS_BYTES, what="distillation input")
    except UserFileError as exc:
        raise DatasetError(source, 1, str(exc)) from None
    # The datasets' own reader: every line checked, strict JSON, CSV headers checked.
    rows = records(source, io.BytesIO(data), suffix, required=("input",), optional=("label",))
    items = [_item(source, line, record) for line, record in rows]
    if not items:
        raise DatasetError(source, 1, "file has no records")
    return items


def _item(source: str, line: int, record: dict[str, object]) -> Item:
    text = record.get("input")
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(source, line, "missing or empty input")
    gold = record.get("label")
    if gold in (None, ""):
        return Item(line, text)
    if isinstance(gold, dict | list):
        gold = json.dumps(gold, ensure_ascii=False, separators=(",", ":"))
    if not isinstance(gold, str):
        raise DatasetError(source, line, "label must be a string of JSON (or a JSON object)")
    try:
        parse_json(gold)
    except ValueError as exc:
        raise DatasetError(source, line, f"gold label is not valid JSON ({exc})") from None
    return Item(line, text, gold)
