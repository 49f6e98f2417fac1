"""Bad DSS datasets (issue 8, "Bad input"): each is refused by `load_dss` with `path:line:` and
the problem, and a trial given one fails before any model code is imported.

tests/unit/worker/test_dss_loading.py holds the loader's main cases (empty, truncated JSON,
latin-1, missing columns, gigantic lines, non-JSON labels); this file adds the encodings,
truncations, headers, oversized fields and labels that it does not cover.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from worker.data import DatasetError, DSSExample, load_dss
from worker.data.dss import MAX_LINE_BYTES

REPO_ROOT = Path(__file__).resolve().parents[3]


def record(input_: str = "q", label: str = '{"size":1}', rationale: str = "r") -> bytes:
    return json.dumps({"input": input_, "label": label, "rationale": rationale}).encode() + b"\n"


GOOD = record()
GOOD_TEXT = GOOD.decode()
CSV_HEADER = b"input,label,rationale\r\n"
CSV_GOOD = b'q,"{""size"":1}",r\r\n'
BIG = MAX_LINE_BYTES * 6 // 10  # one physical line under the cap; two of them over it


BAD = [
    # --- encodings
    pytest.param("a.jsonl", GOOD_TEXT.encode("utf-16"), 1, "UTF-16 or UTF-32",
                 id="utf16-with-bom-jsonl"),
    pytest.param("a.csv", b"\xfe\xff" + (CSV_HEADER + CSV_GOOD).decode().encode("utf-16-be"), 1,
                 "UTF-16 or UTF-32", id="utf16-big-endian-bom-csv"),
    pytest.param("a.jsonl", GOOD_TEXT.encode("utf-32"), 1, "UTF-16 or UTF-32",
                 id="utf32-with-bom-jsonl"),
    pytest.param("a.jsonl", GOOD_TEXT.encode("utf-16-le"), 1, "NUL byte at column 2",
                 id="utf16-without-bom-jsonl"),
    pytest.param("a.csv", (CSV_HEADER + CSV_GOOD).decode().encode("utf-16-le"), 1, "NUL byte",
                 id="utf16-without-bom-csv"),
    pytest.param("a.jsonl", GOOD + b'{"input": "q\x00", "label": "{}", "rationale": "r"}\n', 2,
                 "NUL byte at column 13", id="nul-byte-in-a-later-line"),
    pytest.param("a.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 1,
                 "not valid UTF-8 (byte 0x89 at column 1)", id="binary-file"),
    pytest.param("a.jsonl", b'{"input": "na\xefve", "label": "{}", "rationale": "r"}\n', 1,
                 "not valid UTF-8 (byte 0xef", id="latin1-first-line"),
    pytest.param("a.csv", CSV_HEADER + CSV_GOOD + b"\x93q\x94,{},r\r\n", 3,
                 "not valid UTF-8 (byte 0x93 at column 1)", id="cp1252-smart-quotes-csv"),
    # --- empty and truncated files
    pytest.param("a.csv", b"", 1, "file is empty", id="empty-csv"),
    pytest.param("a.jsonl", b"\xef\xbb\xbf", 1, "file has no records", id="byte-order-mark-only"),
    pytest.param("a.csv", b"\r\n  \r\n", 1, "file has no header", id="blank-csv"),
    pytest.param("a.jsonl", GOOD + b'{"input": "q", "label"', 2, "line is not valid JSON",
                 id="truncated-after-a-key-jsonl"),
    pytest.param("a.csv", CSV_HEADER + CSV_GOOD + b'q,"{""size"":', 3, "malformed CSV",
                 id="truncated-inside-a-quoted-label-csv"),
    pytest.param("a.csv", CSV_HEADER + CSV_GOOD + b"q,{},", 3, "empty rationale",
                 id="truncated-after-a-comma-csv"),
    # --- columns
    pytest.param("a.jsonl", b'{"label": "{}", "rationale": "r"}\n', 1, "missing column 'input'",
                 id="missing-input-jsonl"),
    pytest.param("a.csv", b"input,rationale\r\nq,r\r\n", 1, "missing column(s) label",
                 id="missing-label-csv"),
    pytest.param("a.csv", b"Input,Label,Rationale\r\nq,{},r\r\n", 1,
                 "missing column(s) input, label, rationale", id="capitalised-header-csv"),
    pytest.param("a.csv", b"input,label,rationale,label\r\nq,{},r,{}\r\n", 1,
                 "header repeats column(s) label", id="repeated-header-column-csv"),
    pytest.param("a.jsonl", b'{"input": {"text": "q"}, "label": "{}", "rationale": "r"}\n', 1,
                 "column 'input' must be a string, got object", id="input-is-an-object"),
    # --- gigantic lines and fields
    pytest.param("a.jsonl", b'{"input": "' + b"x" * MAX_LINE_BYTES + b'"}\n', 1, "line too long",
                 id="gigantic-first-line-jsonl"),
    pytest.param("a.csv", CSV_HEADER + b'"' + (b"a" * BIG + b"\n") * 2 + b'",{},r\r\n', 2,
                 f"field too long (more than {MAX_LINE_BYTES} characters)",
                 id="gigantic-quoted-field-over-lines-csv"),
    # --- labels that are not JSON (the task requires JSON: labelsMustBeJson, the default)
    pytest.param("a.csv", CSV_HEADER + CSV_GOOD + b"q,size is one,r\r\n", 3,
                 "label is not valid JSON", id="label-plain-text-csv"),
    pytest.param("a.jsonl", record(label='{"size": 1'), 1, "label is not valid JSON",
                 id="label-truncated-json"),
    pytest.param("a.jsonl", record(label="{'size': 1}"), 1, "label is not valid JSON",
                 id="label-single-quoted"),
    pytest.param("a.jsonl", GOOD + record(label='{"size": Infinity}'), 2,
                 "Infinity is not valid JSON", id="label-infinity"),
]


@pytest.mark.parametrize(("name", "content", "line", "problem"), BAD)
def test_refused_with_file_and_line(
    tmp_path: Path, name: str, content: bytes, line: int, problem: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError) as info:
        load_dss(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert problem in message, message


def test_a_long_csv_field_under_the_cap_is_accepted(tmp_path: Path) -> None:
    """The csv module's own 128 KiB field limit no longer cuts below the documented cap."""
    path = tmp_path / "long.csv"
    text = "w" * (200 * 1024)
    path.write_bytes(CSV_HEADER + f'{text},"{{}}",r\r\n'.encode() * 2)
    assert load_dss(str(path)) == [DSSExample(text, "{}", "r")] * 2


# A trial given a bad dataset: the worker's driver refuses it first, so no model, tokenizer or
# Ray runtime is touched (`worker.models` is never imported, `ray` never connected).
DRIVER = """
import json, sys
from orchestrator.core.grid import expand, attempt_spec
from orchestrator.core.spec import parse_sweep
from worker.train import run_trial

results = []
out, sources = sys.argv[1], sys.argv[2:]
for source in sources:
    sweep = parse_sweep({"ladder": ["ladder/t5-tiny-s"], "methods": ["full"],
                         "training": {"init": "random"}, "dataset": {"source": source}})
    trial = expand(sweep).all_trials()[0]
    result = run_trial(attempt_spec(sweep, trial, attempt=1, output_dir=out))
    results.append({"status": result.status.value, "error": result.error})
loaded = [m for m in ("worker.models", "transformers", "peft", "ray") if m in sys.modules]
print(json.dumps({"results": results, "loaded": loaded}))
"""


def test_a_trial_with_a_bad_dataset_fails_before_any_model(tmp_path: Path) -> None:
    files = {
        "utf16.jsonl": GOOD_TEXT.encode("utf-16"),
        "truncated.jsonl": GOOD + b'{"input": "q", "lab',
        "labels.csv": CSV_HEADER + b"q,not json,r\r\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    sources = [str(tmp_path / name) for name in files]
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / "out"), *sources],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], report
    for source, line, result in zip(sources, (1, 2, 2), report["results"], strict=True):
        assert result["status"] == "failed", result
        assert f"{source}:{line}: " in result["error"], result
