"""Loading DSS files strictly, with errors that point at file and line, and the split."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.data import DatasetError, DSSExample, load_dss, split_train_eval
from worker.data.dss import MAX_LINE_BYTES

REPO_ROOT = Path(__file__).resolve().parents[3]


def record(input_: str = "q", label: str = '{"size":1}', rationale: str = "r") -> bytes:
    return json.dumps({"input": input_, "label": label, "rationale": rationale}).encode() + b"\n"


GOOD = record()
CSV_HEADER = b"input,label,rationale\r\n"
CSV_GOOD = b'q,"{""size"":1}",r\r\n'


@dataclass(frozen=True)
class BadFile:
    """A file that must be refused, where, and why."""

    name: str
    content: bytes | None  # None: the file does not exist
    line: int
    problem: str


BAD_FILES = [
    BadFile("empty.jsonl", b"", 1, "file is empty"),
    BadFile("blank.jsonl", b"\n  \n\n", 1, "file has no records"),
    BadFile(
        "truncated.jsonl",
        GOOD + GOOD + b'{"input": "q", "label": "{}", "rati',
        3,
        "line is not valid JSON (Unterminated string",
    ),
    BadFile("array.jsonl", GOOD + b"[1, 2]\n", 2, "line is not a JSON object (got array)"),
    BadFile(
        "pretty.json", b'[\n  {"input": "q"}\n]\n', 1, "read as JSON Lines: one object per line"
    ),
    BadFile(
        "missing-column.jsonl",
        GOOD + b'{"input": "q", "label": "{}"}\n',
        2,
        "missing column 'rationale'",
    ),
    BadFile("empty-label.jsonl", GOOD + GOOD + record(label=""), 3, "empty label"),
    BadFile("blank-input.jsonl", record(input_="  \t"), 1, "empty input"),
    BadFile(
        "number-label.jsonl",
        b'{"input": "q", "label": 5, "rationale": "r"}\n',
        1,
        "column 'label' must be a string, got number",
    ),
    BadFile(
        "null-rationale.jsonl",
        b'{"input": "q", "label": "{}", "rationale": null}\n',
        1,
        "column 'rationale' must be a string, got null",
    ),
    BadFile(
        "non-json-label.jsonl",
        GOOD + record(label='{"size": 1 "from": 2}'),
        2,
        "label is not valid JSON (Expecting ',' delimiter: line 1 column 12)",
    ),
    BadFile(
        "nan-label.jsonl",
        record(label='{"size": NaN}'),
        1,
        "label is not valid JSON (NaN is not valid JSON)",
    ),
    BadFile(
        "latin1.jsonl",
        GOOD + GOOD + b'{"input": "caf\xe9", "label": "{}"}\n',
        3,
        "not valid UTF-8 (byte 0xe9 at column 15)",
    ),
    BadFile("gigantic.jsonl", GOOD + b"x" * (MAX_LINE_BYTES + 1) + b"\n", 2, "line too long"),
    BadFile("data.txt", GOOD, 1, "unknown extension '.txt'"),
    BadFile("data", GOOD, 1, "unknown extension '(none)'"),
    BadFile("absent.jsonl", None, 1, "file not found"),
    BadFile(
        "no-rationale-column.csv",
        b"input,label\r\nq,{}\r\n",
        1,
        "header is missing column(s) rationale",
    ),
    BadFile(
        "short-record.csv",
        CSV_HEADER + CSV_GOOD + b"q,{}\r\n",
        3,
        "record has 2 fields but the header has 3",
    ),
    BadFile(
        "multiline-bad-label.csv",
        CSV_HEADER + b'"two\r\nlines",{},r\r\n' + b'"three\nphysical\nlines",{oops},r\r\n',
        4,
        "label is not valid JSON",
    ),
    BadFile("empty-label.csv", CSV_HEADER + CSV_GOOD + b"q,,r\r\n", 3, "empty label"),
    BadFile("latin1.csv", CSV_HEADER + CSV_GOOD + b"caf\xe9,{},r\r\n", 3, "not valid UTF-8"),
    BadFile("unclosed-quote.csv", CSV_HEADER + b'"q,{},r\r\n', 2, "malformed CSV"),
    BadFile("header-only.csv", CSV_HEADER, 1, "no records (only a header)"),
    BadFile("gigantic.csv", CSV_HEADER + b"y" * (MAX_LINE_BYTES + 5), 2, "line too long"),
]


class TestRefusals:
    @pytest.mark.parametrize("bad", BAD_FILES, ids=[b.name for b in BAD_FILES])
    def test_message_names_file_line_and_problem(self, tmp_path: Path, bad: BadFile) -> None:
        path = tmp_path / bad.name
        if bad.content is not None:
            path.write_bytes(bad.content)
        with pytest.raises(DatasetError) as info:
            load_dss(str(path))
        message = str(info.value)
        assert message.startswith(f"{path}:{bad.line}: "), message
        assert bad.problem in message, message
        assert (info.value.path, info.value.line) == (str(path), bad.line)

    def test_a_directory_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "d.jsonl").mkdir()
        with pytest.raises(DatasetError, match=r"d\.jsonl:1: not a regular file"):
            load_dss(str(tmp_path / "d.jsonl"))

    def test_nothing_is_returned_when_the_last_line_is_bad(self, tmp_path: Path) -> None:
        path = tmp_path / "late.jsonl"
        path.write_bytes(GOOD * 500 + record(label="nope"))
        with pytest.raises(DatasetError, match=r"late\.jsonl:501: label is not valid JSON"):
            load_dss(str(path), size=10)

    def test_a_gigantic_line_is_refused_without_reading_it_whole(self, tmp_path: Path) -> None:
        path = tmp_path / "huge.jsonl"
        with path.open("wb") as handle:
            handle.write(GOOD)
            chunk = b"z" * (1 << 20)
            for _ in range(32):  # a 32 MiB line
                handle.write(chunk)
        tracemalloc.start()
        try:
            with pytest.raises(DatasetError, match=r"huge\.jsonl:2: line too long"):
                load_dss(str(path))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 8 * MAX_LINE_BYTES

    def test_the_error_survives_pickling(self) -> None:
        # Errors cross Ray process boundaries by pickle.
        error = DatasetError("data/x.jsonl", 17, "label is not valid JSON")
        again = pickle.loads(pickle.dumps(error))
        assert str(again) == "data/x.jsonl:17: label is not valid JSON"
        assert (again.path, again.line, again.problem) == (error.path, 17, error.problem)
        assert isinstance(again, ValueError)

    def test_size_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="size"):
            load_dss("builtin:querydsl", size=0)


class TestAccepted:
    def test_labels_need_not_be_json_when_not_required(self, tmp_path: Path) -> None:
        path = tmp_path / "free.jsonl"
        path.write_bytes(record(label="SELECT * FROM t"))
        assert load_dss(str(path), labels_must_be_json=False) == [
            DSSExample("q", "SELECT * FROM t", "r")
        ]

    @pytest.mark.parametrize(
        ("name", "content"),
        [
            ("bom-crlf.jsonl", b"\xef\xbb\xbf" + GOOD.replace(b"\n", b"\r\n") * 2),
            ("blank-lines.jsonl", b"\n" + GOOD + b"\n   \n" + GOOD),
            ("no-final-newline.jsonl", GOOD + GOOD.rstrip(b"\n")),
            ("extra-keys.jsonl", GOOD.replace(b"{", b'{"id": 1, ', 1) * 2),
            ("bom.csv", b"\xef\xbb\xbf" + CSV_HEADER + CSV_GOOD * 2),
            (
                "extra-columns.csv",
                b'id,rationale,label,input,note\n1,r,"{""size"":1}",q,x\n2,r,"{""size"":1}",q,y\n',
            ),
            ("blank-line-between.csv", CSV_HEADER + CSV_GOOD + b"\r\n" + CSV_GOOD),
        ],
        ids=[
            "bom-crlf",
            "blank-lines",
            "no-final-newline",
            "extra-keys",
            "csv-bom",
            "csv-extra-columns-any-order",
            "csv-blank-line",
        ],
    )
    def test_tolerated_variations(self, tmp_path: Path, name: str, content: bytes) -> None:
        path = tmp_path / name
        path.write_bytes(content)
        assert load_dss(str(path)) == [DSSExample("q", '{"size":1}', "r")] * 2

    def test_csv_fields_may_span_lines(self, tmp_path: Path) -> None:
        path = tmp_path / "multi.csv"
        path.write_bytes(CSV_HEADER + b'"line one\nline two","{""a"":\n1}","r1\r\nr2"\r\n')
        assert load_dss(str(path)) == [DSSExample("line one\nline two", '{"a":\n1}', "r1\r\nr2")]

    def test_a_line_of_exactly_the_limit_is_accepted(self, tmp_path: Path) -> None:
        head = b'{"input": "'
        tail = b'", "label": "{}", "rationale": "r"}'
        line = head + b"a" * (MAX_LINE_BYTES - len(head) - len(tail)) + tail
        assert len(line) == MAX_LINE_BYTES
        path = tmp_path / "limit.jsonl"
        path.write_bytes(line + b"\r\n")
        assert len(load_dss(str(path))[0].input) == MAX_LINE_BYTES - len(head) - len(tail)

    def test_size_keeps_the_first_records(self, tmp_path: Path) -> None:
        path = tmp_path / "many.jsonl"
        path.write_bytes(b"".join(record(input_=f"q{i}") for i in range(10)))
        assert [ex.input for ex in load_dss(str(path), size=3)] == ["q0", "q1", "q2"]


def numbered(n: int) -> list[int]:
    return list(range(n))


class TestSplit:
    def test_eighty_twenty_of_a_thousand(self) -> None:
        train, evaluation = split_train_eval(numbered(1000), 0.2, split_seed=0)
        assert (len(train), len(evaluation)) == (800, 200)

    def test_same_seed_same_split(self) -> None:
        assert split_train_eval(numbered(500), 0.2, 3) == split_train_eval(numbered(500), 0.2, 3)

    def test_different_seeds_differ(self) -> None:
        assert split_train_eval(numbered(500), 0.2, 0) != split_train_eval(numbered(500), 0.2, 1)

    def test_sides_keep_the_original_order(self) -> None:
        train, evaluation = split_train_eval(numbered(100), 0.3, 9)
        assert train == sorted(train)
        assert evaluation == sorted(evaluation)

    @settings(max_examples=200, deadline=None)
    @given(
        n=st.integers(2, 400),
        fraction=st.floats(0.001, 0.999),
        seed=st.integers(-(2**40), 2**40),
    )
    def test_disjoint_complete_and_never_empty(self, n: int, fraction: float, seed: int) -> None:
        train, evaluation = split_train_eval(numbered(n), fraction, seed)
        assert train and evaluation
        assert not set(train) & set(evaluation)
        assert sorted(train + evaluation) == numbered(n)

    def test_works_on_examples(self) -> None:
        examples = [DSSExample(f"q{i}", "{}", "r") for i in range(10)]
        train, evaluation = split_train_eval(examples, 0.2, 0)
        assert len(evaluation) == 2
        assert set(train) | set(evaluation) == set(examples)

    def test_independent_of_the_hash_seed(self) -> None:
        code = (
            "from worker.data import split_train_eval;"
            "print(split_train_eval([str(i) for i in range(300)], 0.2, 11)[1])"
        )
        outputs = {
            subprocess.run(
                [sys.executable, "-c", code],
                env={**os.environ, "PYTHONHASHSEED": seed},
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for seed in ("0", "1", "2")
        }
        assert len(outputs) == 1

    @pytest.mark.parametrize(
        ("n", "fraction", "message"),
        [(10, 0.0, "eval_fraction"), (10, 1.0, "eval_fraction"), (1, 0.2, "at least 2")],
        ids=["fraction-zero", "fraction-one", "one-example"],
    )
    def test_refuses_impossible_splits(self, n: int, fraction: float, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            split_train_eval(numbered(n), fraction, 0)


def test_loading_needs_neither_torch_nor_transformers() -> None:
    # The controller image validates datasets and has no torch.
    code = (
        "import sys, worker.data, worker.tokenizer;"
        "worker.data.load_dss('builtin:querydsl', size=5, preamble='short');"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
