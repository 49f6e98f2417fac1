"""A distillation run: every input to the teacher (bounded concurrency, cached), each answer
parsed and screened, kept examples to the DSS file and rejected ones to a side file, both in
input order whatever order the answers arrive in.

An input whose answer fails screening is asked again, up to `screen_retries` more times, each
time `temperature_step` warmer (a greedy teacher would repeat itself). Identical requests in
flight at once are sent once. Token counts come from the API's usage fields: those of answers
paid for in this run and those read from the cache are counted apart, and the cost is of the
paid ones only.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.distill.cache import Answer, AnswerCache, cache_key
from orchestrator.distill.client import RequestFailed, Teacher
from orchestrator.distill.inputs import Item
from orchestrator.distill.parse import Reason, canonical_json, parse_answer
from orchestrator.distill.prompt import Template, render_messages
from orchestrator.distill.screen import Problem, Task, screen
from worker.data.examples import DSSExample

__all__ = ["Outcome", "Settings", "Summary", "distill", "write_rejected"]

MAX_TEMPERATURE = 2.0  # the OpenAI API's upper bound


@dataclass(frozen=True, slots=True)
class Settings:
    """How to ask and how to screen (the endpoint itself is the Teacher's)."""

    template: Template
    task: Task = Task.QUERYDSL
    temperature: float = 0.0
    max_tokens: int = 1024
    top_p: float | None = None
    seed: int | None = None
    screen_retries: int = 0
    temperature_step: float = 0.3
    concurrency: int = 8
    input_price: float | None = None  # USD per million prompt tokens
    output_price: float | None = None  # USD per million completion tokens

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD for these tokens, or None when no price was given."""
        if self.input_price is None and self.output_price is None:
            return None
        return (prompt_tokens * (self.input_price or 0.0)
                + completion_tokens * (self.output_price or 0.0)) / 1e6

    def sampling(self, attempt: int) -> dict[str, Any]:
        temperature = min(MAX_TEMPERATURE, self.temperature + attempt * self.temperature_step)
        sampling: dict[str, Any] = {"temperature": round(temperature, 6),
                                    "max_tokens": self.max_tokens}
        if self.top_p is not None:
            sampling["top_p"] = self.top_p
        if self.seed is not None:
            sampling["seed"] = self.seed
        return sampling


@dataclass(slots=True)
class Outcome:
    """What became of one input."""

    item: Item
    example: DSSExample | None = None
    problems: list[Problem] = field(default_factory=list)
    answer: str = ""
    attempts: int = 0


@dataclass(slots=True)
class Summary:
    """Counts for the user (and the tests)."""

    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # of final rejections
    retried: Counter[str] = field(default_factory=Counter)  # of answers asked again
    requests: int = 0  # HTTP requests sent in this run, retries included
    answers_paid: int = 0
    answers_cached: int = 0
    prompt_tokens: int = 0  # paid in this run
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    cost: float | None = None  # USD, of this run's paid tokens, when prices are given

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs, "accepted": self.accepted, "rejected": self.rejected,
            "reasons": dict(sorted(self.reasons.items())),
            "retried": dict(sorted(self.retried.items())),
            "requests": self.requests, "answers_paid": self.answers_paid,
            "answers_cached": self.answers_cached, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "cached_completion_tokens": self.cached_completion_tokens, "cost_usd": self.cost,
        }


ProgressHook = Callable[[Outcome, Summary], None]


async def _distill(
    items: list[Item], teacher: Teacher, cache: AnswerCache, settings: Settings,
    summary: Summary, on_done: ProgressHook | None,
) -> list[Outcome]:
    gate = asyncio.Semaphore(settings.concurrency)
    in_flight: dict[str, asyncio.Future[Answer]] = {}
    fingerprint = settings.template.fingerprint()

    async def ask(messages: list[dict[str, str]], sampling: dict[str, Any]) -> Answer:
        key = cache_key(teacher.model, messages, sampling, fingerprint)
        cached = cache.get(key)
        if cached is not None:
            summary.answers_cached += 1
            summary.cached_prompt_tokens += cached.prompt_tokens
            summary.cached_completion_tokens += cached.completion_tokens
            return cached
        if key in in_flight:  # the same input twice in the file: pay once
            return await asyncio.shield(in_flight[key])
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        in_flight[key] = future
        try:
            async with gate:
                answer = await teacher.complete(messages, sampling)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a waiter may not exist
            raise
        finally:
            in_flight.pop(key, None)
        cache.put(key, answer)
        future.set_result(answer)
        summary.answers_paid += 1
        summary.prompt_tokens += answer.prompt_tokens
        summary.completion_tokens += answer.completion_tokens
        return answer

    async def one(item: Item) -> Outcome:
        outcome = Outcome(item)
        messages = render_messages(settings.template, item.input)
        for attempt in range(settings.screen_retries + 1):
            outcome.attempts = attempt + 1
            try:
                answer = await ask(messages, settings.sampling(attempt))
            except RequestFailed as exc:
                outcome.problems = [Problem(Reason.REQUEST_FAILED, str(exc))]
                break
            outcome.answer = answer.content
            parsed = parse_answer(answer.content, settings.template)
            outcome.problems = screen(parsed, truncated=answer.finish_reason == "length",
                                      gold=item.gold, task=settings.task)
            if not outcome.problems:
                outcome.example = DSSExample(item.input, canonical_json(parsed.label),
                                             parsed.rationale)
                break
            if attempt < settings.screen_retries:
                summary.retried.update(str(p.reason) for p in outcome.problems)
        if outcome.example is not None:
            summary.accepted += 1
        else:
            summary.rejected += 1
            summary.reasons.update(str(p.reason) for p in outcome.problems)
        if on_done is not None:
            on_done(outcome, summary)
        return outcome

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def distill(
    items: list[Item], teacher: Teacher, cache: AnswerCache, settings: Settings,
    on_done: ProgressHook | None = None,
) -> tuple[list[Outcome], Summary]:
    """Label every item; outcomes in input order. A TeacherError (bad key, wrong URL) stops
    the run; answers paid for before it stay in the cache."""
    summary = Summary(inputs=len(items))

    async def main() -> list[Outcome]:
        try:
            return await _distill(items, teacher, cache, settings, summary, on_done)
        finally:
            summary.requests = teacher.requests
            await teacher.aclose()

    outcomes = asyncio.run(main())
    summary.cost = settings.cost(summary.prompt_tokens, summary.completion_tokens)
    return outcomes, summary


def write_rejected(path: Path, outcomes: list[Outcome]) -> int:
    """The rejected inputs, in input order, each with its reasons and the last answer (JSON
    Lines, written whole or not at all). Returns how many."""
    rejected = [o for o in outcomes if o.example is None]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            for o in rejected:
                record = {"line": o.item.line, "input": o.item.input,
                          "reasons": [str(p) for p in o.problems], "attempts": o.attempts,
                          "answer": o.answer}
                if o.item.gold is not None:
                    record["gold"] = o.item.gold
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(rejected)
