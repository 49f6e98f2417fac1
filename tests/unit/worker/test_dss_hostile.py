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
from collections.abc import Callable, Sequence
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


def test_a_trial_refuses_the_corpus_before_any_model(
    failed_trials: Callable[[Sequence[str]], list[str]],
) -> None:
    """The worker's own path: every corpus file fails the trial with its file:line message,
    before a model, tokenizer or Ray runtime is touched."""
    sources = [str(CORPUS / name) for name in sorted(EXPECTED)]
    for source, error in zip(sources, failed_trials(sources), strict=True):
        assert f"{source}:{EXPECTED[Path(source).name]['line']}: " in error, error
        assert "RecursionError" not in error


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


@pytest.mark.parametrize("bad", [DEEP, '{"input": "a", "input": "b"}', '{"input": NaN}', "[1]"])
def test_distillation_inputs_refuse_as_datasets_do(tmp_path: Path, bad: str) -> None:
    """`ladder distill` reads its JSON Lines inputs with the datasets' own record parser."""
    from orchestrator.distill.inputs import read_inputs

    path = tmp_path / "q.jsonl"
    path.write_text('{"input": "fine", "label": "{}", "rationale": "r"}\n' + bad + "\n")
    with pytest.raises(DatasetError, match=rf"^{path}:2: line is"):
        read_inputs(path)
    with pytest.raises(DatasetError) as same:
        load_dss(str(path))
    assert str(same.value).startswith(f"{path}:2: line is")


@pytest.mark.parametrize(("text", "says"), [
    ("input,input,label\na,b,{}\n", "1: header repeats column(s) input"),
    ("input,label\na,{}\nb,{},extra\n", "3: record has 3 fields but the header has 2"),
    ("question\nwhat\n", "1: header is missing column(s) input"),
])
def test_distillation_csv_inputs_are_checked_as_datasets_are(tmp_path: Path, text: str,
                                                             says: str) -> None:
    from orchestrator.distill.inputs import read_inputs

    path = tmp_path / "q.csv"
    path.write_text(text)
    with pytest.raises(DatasetError) as refused:
        read_inputs(path)
    assert str(refused.value).startswith(f"{path}:{says}"), str(refused.value)
