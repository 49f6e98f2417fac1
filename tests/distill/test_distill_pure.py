"""The pure parts of `ladder distill`: prompt rendering, answer parsing, screening, the
template file, Retry-After, the cache key. No server, no files but tmp_path."""

from __future__ import annotations

import email.utils
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.distill.cache import Answer, AnswerCache, cache_key
from orchestrator.distill.client import chat_url, retry_after_seconds
from orchestrator.distill.command import DistillError, load_template, read_api_key
from orchestrator.distill.inputs import read_inputs
from orchestrator.distill.parse import Reason, parse_answer
from orchestrator.distill.prompt import (
    DEFAULT_TEMPLATE,
    Template,
    TemplateError,
    render_messages,
    template_from_mapping,
)
from orchestrator.distill.run import Settings
from orchestrator.distill.screen import Task, fields_used, mentions, screen
from worker.data.examples import DatasetError
from worker.data.querydsl import generate_querydsl

T = DEFAULT_TEMPLATE


def test_default_prompt_is_few_shot_chain_of_thought() -> None:
    messages = render_messages(T, "Question: {weird} braces {input} stay")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user",
                                             "assistant", "user"]
    assert "step by step" in messages[0]["content"]
    assert messages[-1]["content"] == "Question: {weird} braces {input} stay"
    # Every few-shot answer is itself a valid, screened example.
    for shot in T.examples:
        parsed = parse_answer(T.answer(shot.rationale, shot.label), T)
        assert screen(parsed, truncated=False, gold=shot.label, task=Task.QUERYDSL) == []


def test_builtin_dataset_answers_pass_screening() -> None:
    for ex in generate_querydsl(n=60, seed=1, preamble="short"):
        parsed = parse_answer(T.answer(ex.rationale, ex.label), T)
        assert parsed.problem is None
        assert screen(parsed, truncated=False, gold=ex.label, task=Task.QUERYDSL) == [], ex


@pytest.mark.parametrize("content", [
    'Rationale: uses status.\nQuery DSL: ```json\n{"query":{"term":{"status":"open"}}}\n```',
    'rationale: uses status.\nquery dsl: {"query":{"term":{"status":"open"}}} trailing words',
    'uses status.\nQuery DSL:\n{"query": {"term": {"status": "open"}}}',
])
def test_parse_tolerates_fences_case_and_missing_rationale_marker(content: str) -> None:
    parsed = parse_answer(content, T)
    assert parsed.problem is None
    assert parsed.rationale == "uses status."
    assert parsed.label == {"query": {"term": {"status": "open"}}}


def test_parse_failures_are_named() -> None:
    assert parse_answer("no marker at all", T).problem is Reason.NO_LABEL
    broken = parse_answer('Rationale: x\nQuery DSL: {"query": {"term": ', T)
    assert broken.problem is Reason.LABEL_NOT_JSON
    assert parse_answer("Rationale: x\nQuery DSL: {\"size\": NaN}", T).problem is \
        Reason.LABEL_NOT_JSON


def test_screen_reports_every_reason() -> None:
    parsed = parse_answer('Rationale:\nQuery DSL: {"query":{"nope":{}}}', T)
    reasons = {p.reason for p in screen(parsed, truncated=True, gold='{"size":1}',
                                        task=Task.QUERYDSL)}
    assert reasons == {Reason.TRUNCATED, Reason.EMPTY_RATIONALE, Reason.LABEL_INVALID_DSL,
                       Reason.GOLD_MISMATCH}
    # json task: any JSON, no DSL validation, no field check.
    parsed = parse_answer('Rationale: because.\nQuery DSL: {"anything": [1, 2]}', T)
    assert screen(parsed, truncated=False, gold='{"anything":[1,2]}', task=Task.JSON) == []


def test_gold_compared_as_parsed_json() -> None:
    parsed = parse_answer('Rationale: status.\nQuery DSL: { "query" : {"term":{"status":"a"}} }',
                          T)
    assert screen(parsed, truncated=False, gold='{"query":{"term":{"status":"a"}}}',
                  task=Task.QUERYDSL) == []


def test_fields_used_and_mentions() -> None:
    label = {
        "size": 0,
        "query": {"bool": {"filter": [{"term": {"origin_warehouse": "X"}},
                                      {"range": {"ship_date": {"gte": "now-7d/d"}}},
                                      {"exists": {"field": "delivery_date"}}],
                           "must": [{"multi_match": {"query": "q", "fields": ["a^2", "b"]}}]}},
        "sort": [{"freight_cost": "desc"}, "_score"],
        "aggs": {"by_carrier": {"terms": {"field": "carrier", "size": 10},
                                "aggs": {"avg_w": {"avg": {"field": "weight_kg"}}}}},
    }
    assert fields_used(label) == ["origin_warehouse", "ship_date", "delivery_date", "a", "b",
                                  "freight_cost", "carrier", "weight_kg"]
    assert mentions("the Origin Warehouse must be X", "origin_warehouse")
    assert mentions("on origin_warehouse.", "origin_warehouse")
    assert not mentions("the warehouse of origin", "origin_warehouse")
    assert not mentions("carriers", "carrier")


def test_template_file(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("system: Be brief.\nuser: 'Q: {input}'\nlabel_marker: 'Answer:'\n"
                    "examples:\n  - input: a\n    rationale: b\n    label: '{}'\n")
    template = load_template(path)
    assert template.system == "Be brief." and template.label_marker == "Answer:"
    assert render_messages(template, "x")[-1]["content"] == "Q: x"
    assert template.fingerprint() != T.fingerprint()
    assert template.rationale_marker == T.rationale_marker  # unset keys keep the default
    with pytest.raises(TemplateError, match="user must contain"):
        template_from_mapping({"user": "no slot"}, "t.yaml")
    with pytest.raises(TemplateError, match=r"examples\[0\]\.label"):
        template_from_mapping({"examples": [{"input": "a", "rationale": "b"}]}, "t.yaml")
    with pytest.raises(TemplateError, match="unknown key"):
        template_from_mapping({"sytem": "typo"}, "t.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("system: [unclosed\n")
    with pytest.raises(DistillError, match=r"bad\.yaml"):
        load_template(bad)


def test_cache_key_covers_input_template_model_sampling(tmp_path: Path) -> None:
    messages = render_messages(T, "q")
    settings = Settings(template=T)
    base = cache_key("m", messages, settings.sampling(0), T.fingerprint())
    assert base == cache_key("m", render_messages(T, "q"), settings.sampling(0), T.fingerprint())
    assert base != cache_key("m2", messages, settings.sampling(0), T.fingerprint())
    assert base != cache_key("m", render_messages(T, "q2"), settings.sampling(0),
                             T.fingerprint())
    assert base != cache_key("m", messages, settings.sampling(1), T.fingerprint())
    assert base != cache_key("m", messages, settings.sampling(0), Template(system="x")
                             .fingerprint())
    cache = AnswerCache(tmp_path / "c.sqlite")
    cache.put(base, Answer("hi", "stop", 3, 4))
    cache.close()
    assert AnswerCache(tmp_path / "c.sqlite").get(base) == Answer("hi", "stop", 3, 4)


def test_sampling_warms_up_and_caps() -> None:
    settings = Settings(template=T, temperature=0.2, temperature_step=0.5, max_tokens=64,
                        seed=7)
    assert settings.sampling(0) == {"temperature": 0.2, "max_tokens": 64, "seed": 7}
    assert settings.sampling(2)["temperature"] == 1.2
    assert settings.sampling(9)["temperature"] == 2.0


def test_retry_after_and_url() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    later = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds(later, now=1_000_000) == pytest.approx(30)
    assert chat_url("http://h:1/v1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/chat/completions/") == "http://h:1/v1/chat/completions"


def test_inputs_and_key(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"input": "a", "label": {"size": 1}}\n\n{"input": "b"}\n')
    items = read_inputs(path)
    assert [(i.line, i.input, i.gold) for i in items] == [(1, "a", '{"size":1}'), (3, "b", None)]
    path.write_text('{"input": "a"}\n{"input": "b", "label": "{not json"}\n')
    with pytest.raises(DatasetError, match=r"q\.jsonl:2: gold label is not valid JSON"):
        read_inputs(path)
    path.write_text('{"question": "a"}\n')
    with pytest.raises(DatasetError, match=r"q\.jsonl:1: missing or empty input"):
        read_inputs(path)
    key = tmp_path / "key"
    key.write_text("sk-file\n")
    monkeypatch.setenv("K", "sk-env")
    assert read_api_key("K", key) == "sk-file"
    assert read_api_key("K", None) == "sk-env"
    assert read_api_key("UNSET_VARIABLE_X", None) is None
    with pytest.raises(DistillError, match="--api-key-file"):
        read_api_key("K", tmp_path / "missing")
    assert json.loads(json.dumps(read_api_key("K", None)))  # a plain string


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400), st.sampled_from(["", "Query DSL:", "Rationale: a\nQuery DSL: ",
                                                 "Query DSL: ```json\n", "Query DSL: {"]))
def test_any_answer_is_parsed_and_screened_without_raising(tail: str, head: str) -> None:
    parsed = parse_answer(head + tail, T)
    problems = screen(parsed, truncated=False, gold='{"size":1}', task=Task.QUERYDSL)
    assert (parsed.problem is None) == (parsed.label is not None or parsed.label_text == "null")
    assert all(isinstance(p.reason, Reason) for p in problems)
