"""Hostile input, class 8 ("datasets"): deeply nested JSON is refused with file:line (never a
RecursionError), a dataset too small to split names the file and the count, and no input is
in both train and eval: repeats of an earlier input are dropped before the split and counted
(docs/reliability.md, "Hostile input").

The corpus tests/data/invalid-datasets/ holds one file per case and EXPECTED.yaml the message
each must be refused with; the trial path runs the real worker driver (`run_trial`), which
refuses before any model is imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.data import (
    DatasetError,
    DSSExample,
    drop_duplicate_inputs,
    load_dss,
    split_examples,
)
from worker.generation import parse_json

REPO_ROOT = Path(__file__).resolve().parents[3]
CORPUS = REPO_ROOT / "tests" / "data" / "invalid-datasets"
EXPECTED: dict[str, dict] = yaml.safe_load((CORPUS / "EXPECTED.yaml").read_text())
DEEP = "[" * 100_000 + "]" * 100_000


def refusal(path: Path) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        examples = load_dss(str(path))
        split_examples(str(path), examples, 0.2, 0)
    return info.value


def test_the_corpus_is_complete() -> None:
    assert sorted(EXPECTED) == sorted(p.name for p in CORPUS.iterdir() if p.suffix != ".yaml")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_corpus_is_refused_with_file_line_and_count(name: str) -> None:
    path = CORPUS / name
    error = refusal(path)
    expected = EXPECTED[name]
    assert str(error).startswith(f"{path}:{expected['line']}: "), str(error)
    assert expected["says"] in str(error), str(error)


@pytest.mark.parametrize("where", ["record", "label", "csv-label"])
def test_nesting_far_past_the_limit_is_one_problem_of_its_line(
    tmp_path: Path, where: str
) -> None:
    good = json.dumps({"input": "q0", "label": "{}", "rationale": "r"}) + "\n"
    if where == "record":
        path, bad = tmp_path / "d.jsonl", '{"input": "q", "x": ' + DEEP + "}\n"
    elif where == "label":
        path = tmp_path / "d.jsonl"
        bad = json.dumps({"input": "q", "label": DEEP, "rationale": "r"}) + "\n"
    else:
        path, good = tmp_path / "d.csv", "input,label,rationale\nq0,{},r\n"
        bad = f"q,{DEEP},r\n"
    path.write_text(good + bad, encoding="utf-8")
    error = refusal(path)
    line = 3 if where == "csv-label" else 2  # the CSV header is line 1
    assert str(error).startswith(f"{path}:{line}: ") and "nested too deeply" in str(error)
    assert error.__cause__ is None and error.__suppress_context__  # no RecursionError chain


def test_nesting_under_the_limit_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    label = "[" * 200 + "]" * 200
    path.write_text("".join(json.dumps({"input": f"q{i}", "label": label, "rationale": "r"})
                            + "\n" for i in range(3)), encoding="utf-8")
    assert len(load_dss(str(path))) == 3


def test_a_generated_answer_nested_too_deeply_is_just_not_json() -> None:
    """What a model generates is scored, never trusted: `[[[[...` is invalid JSON there."""
    assert parse_json(DEEP) is not None and parse_json("[1]") == [1]
    assert parse_json(DEEP) is parse_json("{")  # the not-JSON sentinel


def test_too_small_for_the_split_names_the_file_and_the_count(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        split_examples("builtin:querydsl", [DSSExample("q", "{}", "r")], 0.2, 0)
    assert str(info.value).startswith("builtin:querydsl: 1 distinct example(s)")


def example(i: int, label: str = "{}") -> DSSExample:
    return DSSExample(f"question {i}", label, f"rationale {i}")


def test_repeats_are_dropped_first_kept_and_counted() -> None:
    examples = [example(1), example(2, '{"a": 1}'), example(1, '{"b": 2}'), example(3),
                example(2)]
    kept, dropped = drop_duplicate_inputs(examples)
    assert dropped == 2
    assert kept == [example(1), example(2, '{"a": 1}'), example(3)]


@settings(max_examples=200, deadline=None)
@given(inputs=st.lists(st.integers(0, 30), min_size=2, max_size=120),
       fraction=st.floats(0.01, 0.99), seed=st.integers(0, 2**32))
def test_no_input_is_in_both_train_and_eval(inputs: list[int], fraction: float,
                                            seed: int) -> None:
    examples = [example(i, label=f'{{"n": {n}}}') for n, i in enumerate(inputs)]
    distinct = len(set(inputs))
    if distinct < 2:
        with pytest.raises(DatasetError, match=f"{distinct} distinct example"):
            split_examples("data.jsonl", examples, fraction, seed)
        return
    train, evaluation, dropped = split_examples("data.jsonl", examples, fraction, seed)
    assert not {e.input for e in train} & {e.input for e in evaluation}
    assert dropped == len(inputs) - distinct
    assert len(train) + len(evaluation) == distinct and train and evaluation


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


def test_a_trial_refuses_the_corpus_before_any_model(tmp_path: Path) -> None:
    """The worker's own path: every corpus file fails the trial with its file:line message,
    before a model, tokenizer or Ray runtime is touched."""
    sources = [str(CORPUS / name) for name in sorted(EXPECTED)]
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / "out"), *sources],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], report
    for source, result in zip(sources, report["results"], strict=True):
        assert result["status"] == "failed", result
        assert f"{source}:{EXPECTED[Path(source).name]['line']}: " in result["error"], result
        assert "RecursionError" not in result["error"]


def test_a_trial_drops_repeats_before_the_split_and_logs_how_many(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from orchestrator.core.grid import attempt_spec, expand
    from orchestrator.core.spec import parse_sweep
    from worker.train import load_split

    path = tmp_path / "repeats.jsonl"
    rows = [{"input": f"q{i % 6}", "label": "{}", "rationale": f"r{i}"} for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    sweep = parse_sweep({"ladder": ["ladder/t5-tiny-s"], "methods": ["full"],
                         "dataset": {"source": str(path), "evalFraction": 0.5}})
    trial = attempt_spec(sweep, expand(sweep).all_trials()[0], attempt=1, output_dir="/tmp/x")
    train, evaluation = load_split(trial)
    assert len(train) + len(evaluation) == 6
    assert not {e.input for e in train} & {e.input for e in evaluation}
    assert f"{path}: dropped 4 example(s) whose input repeats an earlier one" in caplog.text
