"""`ladder dataset stats` and a distilled file as `dataset.source`: counts, token lengths
against the limits, duplicates, label validity; `ladder run`'s check of a dataset file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import _local_dataset, app
from orchestrator.core.spec import Dataset, SweepSpec
from worker.data.examples import TASK_PREFIXES, DSSExample
from worker.data.stats import dataset_stats, token_counter
from worker.tokenizer import ByteTokenizer


def _write(path: Path, records: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_byte_counter_is_the_byte_tokenizer() -> None:
    count = token_counter("byte")
    for text in ["", "predict: ", "héllo {\"a\": 1}", "\ud800 lone surrogate", "x" * 5000]:
        assert count(text) == len(ByteTokenizer().encode(text, 10**9))


def test_stats_counts_everything() -> None:
    ok = '{"query":{"term":{"status":"open"}}}'
    examples = [
        DSSExample("q1", ok, "r"),
        DSSExample("q1", ok, "r"),  # identical record
        DSSExample("q2", ok, "r"),
        DSSExample("q2", '{"size":3}', "r"),  # same input, another label
        DSSExample("q3", "not json", "r"),
        DSSExample("q4", '{"query":{"bogus":{}}}', "x" * 50),
    ]
    stats = dataset_stats(examples, token_counter("byte"), max_input_tokens=12,
                          max_output_tokens=40)
    assert stats.examples == 6 and stats.distinct_inputs == 4
    assert stats.repeated_inputs == 2 and stats.identical_records == 1
    assert stats.conflicting_inputs == 1
    assert stats.labels_not_json == [5] and stats.labels_not_dsl == [6]
    predict = stats.lengths["input (predict)"]
    assert predict.min == predict.max == len(TASK_PREFIXES[0]) + 2 + 1  # prefix, "qN", eos
    assert predict.over == 0
    assert stats.lengths["input (explain)"].over == 0
    assert stats.lengths["rationale"].over == 1 and stats.lengths["rationale"].max == 51
    assert stats.lengths["label"].limit == 40
    json_only = dataset_stats(examples, token_counter("byte"), max_input_tokens=12,
                              max_output_tokens=40, querydsl=False)
    assert json_only.labels_not_dsl == []


def test_tokenizer_json(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "predict:": 1, "a": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "tokenizer.json"))
    count = token_counter(str(tmp_path))
    assert count("a a b") == 4
    with pytest.raises(ValueError, match=r"tokenizer .*nothing-here"):
        token_counter(str(tmp_path / "nothing-here"))


def test_cli_stats(tmp_path: Path) -> None:
    data = tmp_path / "distilled.jsonl"
    _write(data, [{"input": "q1", "label": '{"size":1}', "rationale": "r"},
                  {"input": "q1", "label": '{"size":1}', "rationale": "r"},
                  {"input": "q2", "label": '{"bogus":1}', "rationale": "r"}])
    result = CliRunner().invoke(app, ["dataset", "stats", str(data), "--max-input-tokens",
                                      "10"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps at the terminal's width
    assert "3 examples, 2 distinct inputs" in text
    assert "1 repeated input(s)" in text
    assert "1 label(s) not valid Query DSL (records 3)" in text
    as_json = CliRunner().invoke(app, ["dataset", "stats", str(data), "--json"])
    document = json.loads(as_json.stdout)
    assert document["lengths"]["input (predict)"]["limit"] == 1400  # the spec's default
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "apiVersion: ladder.dev/v1alpha1\nkind: Sweep\nmetadata: {name: s}\nspec:\n"
        "  ladder: [google/flan-t5-small]\n  methods: [full]\n"
        f"  training: {{maxInputTokens: 64, maxOutputTokens: 32}}\n"
        f"  dataset: {{source: {json.dumps(str(data))}}}\n")
    from_spec = CliRunner().invoke(app, ["dataset", "stats", "--spec", str(sweep), "--json"])
    assert from_spec.exit_code == 0, from_spec.output
    assert json.loads(from_spec.stdout)["lengths"]["label"]["limit"] == 32
    assert json.loads(from_spec.stdout)["tokenizer"] == "byte"
    sweep.write_text(sweep.read_text().replace("maxOutputTokens: 32",
                                               "maxOutputTokens: 32, tokenizer: /no/such/tok"))
    named = CliRunner().invoke(app, ["dataset", "stats", "--spec", str(sweep)])
    assert named.exit_code == 1  # the spec's own tokenizer is used, and it is not there
    assert "tokenizer /no/such/tok: not" in " ".join(named.output.split())
    missing = CliRunner().invoke(app, ["dataset", "stats", str(tmp_path / "no.jsonl")])
    assert missing.exit_code == 1
    assert "no.jsonl:1: file not found" in " ".join(missing.output.split())


def test_run_takes_a_distilled_file_relative_to_here(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "distilled.jsonl",
           [{"input": "q", "label": '{"size":1}', "rationale": "r"}] * 2)
    spec = SweepSpec.model_validate({"ladder": ["google/flan-t5-small"], "methods": ["full"],
                                     "dataset": {"source": "distilled.jsonl"}})
    resolved = _local_dataset(spec)
    assert resolved.dataset.source == str(tmp_path / "distilled.jsonl")
    builtin = spec.model_copy(update={"dataset": Dataset()})
    assert _local_dataset(builtin).dataset.source == "builtin:querydsl"
