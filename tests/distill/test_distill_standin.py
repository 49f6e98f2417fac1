"""`ladder distill` end to end against the teacher STAND-IN (a real HTTP server on 127.0.0.1
with scripted answers, tests/distill/teacher_standin.py): retries on 429 (Retry-After) and
500, a truncated answer asked again warmer, a label that is JSON but not Query DSL, a gold
mismatch, a rationale that skips a field, an answer with no label; the DSS file in input
order that `load_dss` reads; a run killed half-way (SIGKILL) and rerun pays only for the rest.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.distill.teacher_standin import Reply, TeacherStandin, answer, error
from worker.data.dss import load_dss
from worker.data.querydsl import generate_querydsl

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-standin-secret-0123456789"


def _examples(n: int):
    return generate_querydsl(n=n, seed=3, preamble="short")


def _write_inputs(path: Path, examples, without_gold: set[int] = frozenset()) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for i, ex in enumerate(examples):
            record = {"input": ex.input}
            if i not in without_gold:
                record["label"] = ex.label
            handle.write(json.dumps(record) + "\n")


def _default(examples):
    by_input = {ex.input: ex for ex in examples}

    def reply(text: str) -> Reply:
        ex = by_input[text]
        return answer(ex.rationale, ex.label, prompt_tokens=len(text) // 4,
                      completion_tokens=len(ex.rationale + ex.label) // 4)

    return reply


def test_happy_path_with_scripted_failures(tmp_path: Path, monkeypatch) -> None:
    examples = _examples(12)
    e = examples
    good = _default(examples)
    wrong_dsl = '{"query":{"bogus_clause":{"status":"x"}}}'
    other = json.loads(e[5].label)
    other["size"] = 999 if other.get("size") != 999 else 998
    script = {
        e[0].input: [error(429, retry_after="1"), good(e[0].input)],
        e[1].input: [error(500), good(e[1].input)],
        e[2].input: [Reply(good(e[2].input).content[:60], finish_reason="length"),
                     good(e[2].input)],
        e[3].input: [answer(e[3].rationale, wrong_dsl)],
        e[4].input: [answer("Step 1: It is a search.", e[4].label)],
        e[5].input: [answer(e[5].rationale, json.dumps(other))],
        e[6].input: [Reply("I think the answer is a bool query.")],
    }
    inputs = tmp_path / "questions.jsonl"
    _write_inputs(inputs, examples, without_gold={3, 4})
    out = tmp_path / "distilled.jsonl"
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with TeacherStandin(script, default=good) as teacher:
        started = time.monotonic()
        result = CliRunner().invoke(app, [
            "distill", str(inputs), "--url", teacher.url, "--model", "standin-teacher",
            "--out", str(out), "--api-key-env", "TEACHER_KEY", "--screen-retries", "1",
            "--concurrency", "3", "--input-price", "2", "--output-price", "6",
            "--no-progress",
        ])
        elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert elapsed >= 1.0  # Retry-After: 1 was honoured

    # Kept examples: the file Ladder trains on, in input order, labels as the teacher wrote.
    kept = load_dss(str(out))
    expected = [ex for i, ex in enumerate(examples) if i not in (3, 4, 5, 6)]
    assert [k.input for k in kept] == [ex.input for ex in expected]
    assert [json.loads(k.label) for k in kept] == [json.loads(ex.label) for ex in expected]
    assert [k.rationale for k in kept] == [ex.rationale for ex in expected]

    # Rejected: every one with its reasons, in input order.
    rejected = [json.loads(line) for line in (tmp_path / "distilled.rejected.jsonl").open()]
    assert [r["line"] for r in rejected] == [4, 5, 6, 7]
    reasons = {r["line"]: [x.split(":")[0] for x in r["reasons"]] for r in rejected}
    assert reasons[4] == ["label-invalid-dsl"]
    assert reasons[5] == ["rationale-misses-fields"]
    assert reasons[6] == ["gold-mismatch"]
    assert reasons[7] == ["no-label"]
    assert all(r["attempts"] == 2 for r in rejected)  # each asked once more, warmer

    summary = json.loads((tmp_path / "distilled.summary.json").read_text())
    assert summary["inputs"] == 12 and summary["accepted"] == 8 and summary["rejected"] == 4
    assert summary["reasons"] == {"gold-mismatch": 1, "label-invalid-dsl": 1, "no-label": 1,
                                  "rationale-misses-fields": 1}
    # The truncated answer also lacks its label, and was asked again for both reasons.
    assert summary["retried"] == {"gold-mismatch": 1, "label-invalid-dsl": 1, "no-label": 2,
                                  "rationale-misses-fields": 1, "truncated": 1}
    # 12 first answers + 5 warmer retries (truncated, and the 4 rejected) = 17 paid answers;
    # plus one 429 and one 500 = 19 requests. The server agrees.
    assert summary["answers_paid"] == teacher.total_served == 17
    assert summary["requests"] == teacher.total_requests == 19
    assert teacher.requests[e[0].input] == 2 and teacher.requests[e[1].input] == 2
    assert summary["prompt_tokens"] > 0 and summary["cost_usd"] == pytest.approx(
        (summary["prompt_tokens"] * 2 + summary["completion_tokens"] * 6) / 1e6)
    # The warmer retry really was warmer, and concurrency stayed bounded.
    temps = sorted({b["temperature"] for b in teacher.bodies})
    assert temps == [0.0, 0.3]
    assert 1 < teacher.max_in_flight <= 3
    # The key went to the server and nowhere else.
    assert set(teacher.authorization) == {f"Bearer {SECRET}"}
    assert SECRET not in result.output
    for path in tmp_path.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path

    # The output is a dataset Ladder trains on; the summary line says what was written.
    assert "wrote 8 examples" in result.output


def test_rerun_is_free_and_bad_key_is_one_line(tmp_path: Path) -> None:
    examples = _examples(4)
    inputs = tmp_path / "q.csv"
    with inputs.open("w", newline="") as handle:  # CSV, quoted fields spanning lines
        csv.writer(handle).writerows([("input",), *((ex.input,) for ex in examples)])
    out = tmp_path / "d.jsonl"
    args = ["distill", str(inputs), "--model", "m", "--out", str(out), "--no-progress"]
    with TeacherStandin(default=_default(examples)) as teacher:
        trial = CliRunner().invoke(app, [*args, "--url", teacher.url, "--limit", "2"])
        assert trial.exit_code == 0, trial.output
        assert teacher.total_requests == 2 and len(load_dss(str(out))) == 2
        first = CliRunner().invoke(app, [*args, "--url", teacher.url])
        assert first.exit_code == 0, first.output
        assert teacher.total_requests == 4  # the trial run's two answers were not paid again
        again = CliRunner().invoke(app, [*args, "--url", teacher.url + "/chat/completions"])
        assert again.exit_code == 0, again.output
        assert teacher.total_requests == 4  # the rerun was answered from the cache
    assert out.read_bytes() and load_dss(str(out))
    with TeacherStandin(default=lambda _t: error(401)) as teacher:
        refused = CliRunner().invoke(app, [*args, "--url", teacher.url, "--cache",
                                           str(tmp_path / "other.sqlite")])
    assert refused.exit_code == 1
    assert "refused the API key" in refused.output and "Traceback" not in refused.output


def test_killed_half_way_rerun_pays_only_for_the_rest(tmp_path: Path) -> None:
    examples = _examples(16)
    inputs = tmp_path / "questions.jsonl"
    _write_inputs(inputs, examples)
    out = tmp_path / "distilled.jsonl"
    cache = tmp_path / "distilled.cache.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def command(url: str) -> list[str]:
        return [sys.executable, "-m", "orchestrator.cli", "distill", str(inputs), "--url", url,
                "--model", "standin-teacher", "--out", str(out), "--concurrency", "2"]

    with TeacherStandin(default=_default(examples), delay_s=0.15) as teacher:
        process = subprocess.Popen(command(teacher.url), cwd=tmp_path, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while teacher.total_served < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        first_run_served = teacher.total_served
    assert process.returncode == -signal.SIGKILL
    assert 6 <= first_run_served < 16
    assert not out.exists()  # nothing half-written
    with sqlite3.connect(cache) as db:
        kept = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    # Every answer that reached the client before the kill was committed, but for at most
    # those in flight at the moment of the kill (2).
    assert first_run_served - 2 <= kept <= first_run_served

    with TeacherStandin(default=_default(examples)) as teacher:
        rerun = subprocess.run(command(teacher.url), cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert teacher.total_requests == 16 - kept  # only the rest was paid for
    summary = json.loads((tmp_path / "distilled.summary.json").read_text())
    assert summary["answers_cached"] == kept and summary["answers_paid"] == 16 - kept
    assert [ex.input for ex in load_dss(str(out))] == [ex.input for ex in examples]


def test_ctrl_c_is_one_line_and_keeps_what_was_paid(tmp_path: Path) -> None:
    examples = _examples(8)
    inputs = tmp_path / "questions.jsonl"
    _write_inputs(inputs, examples)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with TeacherStandin(default=_default(examples), delay_s=0.2) as teacher:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "distill", str(inputs), "--url",
             teacher.url, "--model", "m", "--out", str(tmp_path / "d.jsonl"),
             "--concurrency", "1", "--no-progress"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while teacher.total_served < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 130, output  # as `ladder run` does
    assert "Interrupted" in output and "Run the same command again" in output
    assert "Traceback" not in output
    with sqlite3.connect(tmp_path / "d.cache.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] >= 1


def test_a_429_holds_back_every_request(tmp_path: Path) -> None:
    examples = _examples(8)
    good = _default(examples)
    script = {examples[0].input: [error(429, retry_after="1"), good(examples[0].input)]}
    inputs = tmp_path / "q.jsonl"
    _write_inputs(inputs, examples)
    with TeacherStandin(script, default=good, delay_s=0.05) as teacher:
        result = CliRunner().invoke(app, [
            "distill", str(inputs), "--url", teacher.url, "--model", "m", "--out",
            str(tmp_path / "d.jsonl"), "--concurrency", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    refused = next(t for t, _, status in teacher.arrivals if status == 429)
    # Requests already on their way when the 429 was sent may land just after it; every later
    # one waited out the Retry-After, whichever input it was for.
    later = [t - refused for t, _, _ in teacher.arrivals if t - refused > 0.2]
    assert later and min(later) >= 0.95
    assert teacher.total_requests == 9


def test_the_same_input_twice_is_paid_once(tmp_path: Path) -> None:
    examples = _examples(3)
    inputs = tmp_path / "q.jsonl"
    _write_inputs(inputs, [examples[0], examples[1], examples[0], examples[2], examples[0]])
    with TeacherStandin(default=_default(examples), delay_s=0.2) as teacher:
        result = CliRunner().invoke(app, [
            "distill", str(inputs), "--url", teacher.url, "--model", "m", "--out",
            str(tmp_path / "d.jsonl"), "--concurrency", "5", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert teacher.total_requests == 3  # sent at once, but the repeats waited for the first
    assert [ex.input for ex in load_dss(str(tmp_path / "d.jsonl"))] == \
        [examples[i].input for i in (0, 1, 0, 2, 0)]
