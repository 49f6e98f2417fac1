"""The DSS dataset: (input, label, rationale) triples, loaded strictly and split deterministically.

A trial that starts training on a broken dataset wastes a GPU slot and then fails somewhere far
from the cause, so `load_dss` validates every record before returning anything and names the
exact file and line of the first problem. Files are streamed line by line with a hard per-line
cap, so a gigantic or binary file is refused without being read whole into memory.

Built-in sources (`builtin:NAME`) come from the registry in `builtin.py`; the types shared
with the generators (`DSSExample`, `DatasetError`, `COLUMNS`) live in `examples.py`. No
torch/transformers here: the worker loads its data before it builds a model, and
`ladder dataset querydsl` runs the generator with the controller's dependencies only.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final, TypeVar

from worker.data.builtin import load_builtin
from worker.data.examples import BUILTIN_PREFIX, COLUMNS, DatasetError, DSSExample

__all__ = [
    "BUILTIN_PREFIX",
    "COLUMNS",
    "MAX_LINE_BYTES",
    "DSSExample",
    "DatasetError",
    "drop_duplicate_inputs",
    "load_dss",
    "records",
    "split_examples",
    "split_train_eval",
    "strict_json",
]

#: One physical line may not exceed this many bytes (newline excluded). Real records are a few
#: KiB; anything near this size is a corrupt or wrong file, and the cap bounds memory use.
MAX_LINE_BYTES: Final = 1024 * 1024

# UTF-32 LE begins with the UTF-16 LE mark, so the tuple is checked as a whole.
_WIDE_BOMS: Final = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
_JSONL_SUFFIXES: Final = frozenset({".jsonl", ".json"})
_CSV_SUFFIXES: Final = frozenset({".csv"})
# Python's JSON reader recurses once per nested array or object and stops at the interpreter's
# recursion limit (about 1000 levels) with a RecursionError: refused as a problem of the line.
TOO_DEEP: Final = "JSON nested too deeply (arrays or objects inside one another, about 1000 levels)"

T = TypeVar("T")


def load_dss(
    source: str,
    *,
    labels_must_be_json: bool = True,
    size: int | None = None,
    preamble: str = "full",
    seed: int = 0,
) -> list[DSSExample]:
    """Load a DSS dataset, refusing with `DatasetError` on the first invalid record.

    `source` is `builtin:querydsl` (the synthetic generator: `size` examples, default 1000,
    built with `preamble` and `seed`) or a path to a `.jsonl`/`.json` file (JSON Lines: one
    object per line) or a `.csv` file with a header naming at least input, label and rationale
    (extra columns are ignored). For files, `preamble` and `seed` do not apply; `size` keeps
    the first `size` records, but only after the whole file has been validated, so a small
    smoke run never hides a defect that the full run would hit.
    """
    if size is not None and size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    if source.startswith(BUILTIN_PREFIX):
        return load_builtin(source, size=size, preamble=preamble, seed=seed)

    path = Path(source)
    if not path.exists():
        raise DatasetError(source, 1, "file not found")
    if not path.is_file():
        raise DatasetError(source, 1, "not a regular file")
    suffix = path.suffix.lower()
    if suffix not in _JSONL_SUFFIXES | _CSV_SUFFIXES:
        known = ", ".join(sorted(_JSONL_SUFFIXES | _CSV_SUFFIXES))
        raise DatasetError(
            source, 1, f"unknown extension {path.suffix or '(none)'!r} (expected one of {known})"
        )
    if path.stat().st_size == 0:
        raise DatasetError(source, 1, "file is empty")

    try:
        with path.open("rb") as handle:
            examples = [_example(source, number, record, labels_must_be_json)
                        for number, record in records(source, handle, suffix, COLUMNS)]
    except OSError as exc:
        raise DatasetError(source, 1, f"cannot read file ({exc.strerror or exc})") from exc

    if not examples:
        raise DatasetError(source, 1, "file has no records")
    return examples if size is None else examples[:size]


def split_train_eval(
    examples: Sequence[T], eval_fraction: float, split_seed: int
) -> tuple[list[T], list[T]]:
    """Split into (train, eval) the same way on every machine, run and process.

    The split is a permutation drawn from `random.Random(split_seed)` (seeded from an int, so
    it does not depend on PYTHONHASHSEED), with round(n * eval_fraction) examples, clamped to
    [1, n - 1], going to eval. Each side keeps the original order, which makes the split easy
    to inspect and keeps it identical whatever later code does with the lists.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be strictly between 0 and 1, got {eval_fraction}")
    n = len(examples)
    if n < 2:
        raise ValueError(f"need at least 2 examples to split into train and eval, got {n}")
    n_eval = min(max(int(n * eval_fraction + 0.5), 1), n - 1)
    order = list(range(n))
    random.Random(split_seed).shuffle(order)
    eval_ids = set(order[:n_eval])
    train = [ex for i, ex in enumerate(examples) if i not in eval_ids]
    evaluation = [ex for i, ex in enumerate(examples) if i in eval_ids]
    return train, evaluation


def drop_duplicate_inputs(examples: Sequence[DSSExample]) -> tuple[list[DSSExample], int]:
    """The examples with every repeat of an earlier `input` left out (the first is kept, label
    and all), and how many were left out. A repeated input could otherwise land on both sides
    of the split, and evaluation would score what training saw."""
    seen: set[str] = set()
    kept: list[DSSExample] = []
    for example in examples:
        if example.input not in seen:
            seen.add(example.input)
            kept.append(example)
    return kept, len(examples) - len(kept)


def split_examples(
    source: str, examples: Sequence[DSSExample], eval_fraction: float, split_seed: int
) -> tuple[list[DSSExample], list[DSSExample], int]:
    """(train, eval, duplicates dropped): `drop_duplicate_inputs`, then `split_train_eval`.

    No input is in both train and eval. Too few distinct examples to split is a DatasetError
    that names the file and the count."""
    unique, dropped = drop_duplicate_inputs(examples)
    if len(unique) < 2:
        repeats = f" ({dropped} repeated input(s) dropped)" if dropped else ""
        raise DatasetError(
            source, None if source.startswith(BUILTIN_PREFIX) else 1,
            f"{len(unique)} distinct example(s){repeats}: too few to split into train and "
            "eval (need at least 2)",
        )
    train, evaluation = split_train_eval(unique, eval_fraction, split_seed)
    return train, evaluation, dropped


# --- physical lines --------------------------------------------------------------------------


def _lines(source: str, handle: IO[bytes]) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line with its line ending) from a binary stream.

    Each read is capped at MAX_LINE_BYTES + 2 bytes (room for "\\r\\n"), so an over-long line
    is detected after reading about 1 MiB of it rather than after buffering all of it.
    """
    number = 0
    while True:
        raw = handle.readline(MAX_LINE_BYTES + 2)
        if not raw:
            return
        number += 1
        content = raw
        if content.endswith(b"\n"):
            content = content[:-1]
            if content.endswith(b"\r"):
                content = content[:-1]
        if len(content) > MAX_LINE_BYTES:
            raise DatasetError(source, number, f"line too long (more than {MAX_LINE_BYTES} bytes)")
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # A UTF-8 byte order mark (spreadsheet exports) is not data.
        elif number == 1 and raw.startswith(_WIDE_BOMS):
            raise DatasetError(source, number, "file is UTF-16 or UTF-32 (byte order mark); "
                               "save it as UTF-8")
        if b"\x00" in content:
            # Valid UTF-8, but never in text: UTF-16 without a byte order mark, or binary data.
            column = content.index(b"\x00") + 1
            raise DatasetError(
                source, number,
                f"NUL byte at column {column} (a UTF-16 or binary file? save it as UTF-8 text)",
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(
                source,
                number,
                f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
            ) from exc
        yield number, text


# --- JSON Lines ------------------------------------------------------------------------------


def records(
    source: str, handle: IO[bytes], suffix: str, required: Sequence[str],
    optional: Sequence[str] = (),
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(first line number, record) of every record of a JSON Lines (`.jsonl`/`.json`) or CSV
    stream, each physical line checked first (length, byte order marks, NUL bytes, UTF-8).
    A CSV header must name each `required` column, and no column read (`required` or
    `optional`) twice; a CSV record holds those columns. DatasetError names file and line.
    Shared by every reader of record files: datasets (`load_dss`) and `ladder distill`'s
    inputs."""
    if suffix.lower() in _CSV_SUFFIXES:
        yield from _csv_records(source, handle, required, optional)
        return
    hint = ""
    if suffix.lower() == ".json":
        hint = " (.json files are read as JSON Lines: one object per line)"
    for number, text in _lines(source, handle):
        if text.strip():  # Blank lines (a trailing one especially) carry no record.
            yield number, _json_record(source, number, text, hint)


def _json_record(source: str, number: int, text: str, hint: str = "") -> dict[str, Any]:
    """One JSON Lines record: an object, strict JSON (no NaN, no repeated key, nesting the
    reader can follow); DatasetError naming the file and line otherwise."""
    record = _strict_json(source, number, text, "line", hint)
    if not isinstance(record, dict):
        raise DatasetError(
            source, number, f"line is not a JSON object (got {_json_type(record)}){hint}"
        )
    return record


# --- CSV -------------------------------------------------------------------------------------


def _csv_records(
    source: str, handle: IO[bytes], required: Sequence[str], optional: Sequence[str],
) -> Iterator[tuple[int, dict[str, str]]]:
    lines = _lines(source, handle)
    # The csv module joins physical lines into records itself (quoted fields may span lines),
    # so the number of the first physical line of each record is tracked through this feed.
    last_line = 0

    def feed() -> Iterator[str]:
        nonlocal last_line
        for number, text in lines:
            last_line = number
            yield text

    # A quoted field may span lines, so the per-line cap alone does not bound a field: the csv
    # module's own field limit (128 KiB by default, process-wide) is raised to the same cap,
    # and a longer field is reported as such rather than as "malformed CSV".
    if csv.field_size_limit() < MAX_LINE_BYTES:
        csv.field_size_limit(MAX_LINE_BYTES)
    reader = csv.reader(feed(), strict=True)
    header: list[str] | None = None
    columns: dict[str, int] = {}
    count = 0
    record_start = 1
    while True:
        record_start = last_line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                raise DatasetError(
                    source, record_start,
                    f"field too long (more than {csv.field_size_limit()} characters)",
                ) from exc
            raise DatasetError(source, record_start, f"malformed CSV ({exc})") from exc
        if not row or all(not cell.strip() for cell in row):
            continue  # Blank line between records.
        if header is None:
            header = [name.strip() for name in row]
            missing = [name for name in required if name not in header]
            if missing:
                raise DatasetError(
                    source,
                    record_start,
                    f"header is missing column(s) {', '.join(missing)} "
                    f"(found: {', '.join(header)})",
                )
            repeated = [name for name in (*required, *optional) if header.count(name) > 1]
            if repeated:
                raise DatasetError(
                    source, record_start, f"header repeats column(s) {', '.join(repeated)}"
                )
            columns = {name: header.index(name) for name in (*required, *optional)
                       if name in header}
            continue
        if len(row) != len(header):
            raise DatasetError(
                source,
                record_start,
                f"record has {len(row)} fields but the header has {len(header)}",
            )
        count += 1
        yield record_start, {name: row[index] for name, index in columns.items()}
    if header is None:
        raise DatasetError(source, 1, "file has no header")
    if not count:
        raise DatasetError(source, 1, "file has no records (only a header)")


# --- records ---------------------------------------------------------------------------------


def _example(
    source: str, line: int, record: dict[str, Any], labels_must_be_json: bool
) -> DSSExample:
    values: dict[str, str] = {}
    for name in COLUMNS:
        if name not in record:
            raise DatasetError(source, line, f"missing column {name!r}")
        value = record[name]
        if not isinstance(value, str):
            raise DatasetError(
                source, line, f"column {name!r} must be a string, got {_json_type(value)}"
            )
        if not value.strip():
            raise DatasetError(source, line, f"empty {name}")
        values[name] = value
    if labels_must_be_json:
        _strict_json(source, line, values["label"], "label")
    return DSSExample(input=values["input"], label=values["label"], rationale=values["rationale"])


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which are not JSON and which OpenSearch rejects.
    raise ValueError(f"{name} is not valid JSON")


class JSONTooDeep(ValueError):
    """JSON nested deeper than the reader can follow."""


def strict_json(text: str) -> Any:
    """`text` parsed as strict JSON: no NaN or Infinity, no key twice in one object, nesting
    the reader can follow (deeper is JSONTooDeep, never a RecursionError). ValueError says
    what is wrong, in one line."""
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise JSONTooDeep(TOO_DEEP) from None
    except json.JSONDecodeError as exc:
        raise ValueError(_json_reason(exc)) from None


def _strict_json(source: str, number: int, text: str, what: str, hint: str = "") -> Any:
    """`strict_json`, with DatasetError naming the file, line and `what` otherwise."""
    try:
        return strict_json(text)
    except JSONTooDeep:
        raise DatasetError(source, number, f"{what} is {TOO_DEEP}{hint}") from None
    except ValueError as exc:
        raise DatasetError(source, number, f"{what} is not valid JSON ({exc}){hint}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated key keeps only its last value in Python's json: the first would be lost
    # without a word (which `input` or `label` did the file mean?).
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise ValueError(f"key {key!r} appears twice in one object")
        record[key] = value
    return record


def _json_reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg}: line {exc.lineno} column {exc.colno}"
    return str(exc)


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__
