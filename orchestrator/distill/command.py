"""What `ladder distill` does between reading its options and printing its last line: the API
key, the template file, the progress bar, the three output files and the summary table.

Every problem a user can cause is a `DistillError` with one line naming the option, file or
line; the CLI prints it. The API key is read here and handed to the client, and nothing else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.distill.cache import AnswerCache
from orchestrator.distill.client import Teacher, TeacherError
from orchestrator.distill.inputs import read_inputs
from orchestrator.distill.parse import Reason
from orchestrator.distill.prompt import DEFAULT_TEMPLATE, Template, TemplateError
from orchestrator.distill.prompt import template_from_mapping as _template
from orchestrator.distill.run import Outcome, Settings, Summary, distill, write_rejected
from orchestrator.files import (
    MAX_KEY_FILE_BYTES,
    MAX_TEMPLATE_BYTES,
    UserFileError,
    read_user_text,
)
from worker.data.examples import DatasetError
from worker.data.querydsl import write_dataset

__all__ = [
    "DistillError", "Interrupted", "Paths", "load_template", "read_api_key", "run_command",
    "summary_table",
]


class DistillError(Exception):
    """One line for the user."""


class Interrupted(Exception):
    """Ctrl-C: what was paid is kept; the message says how to resume."""


@dataclass(frozen=True, slots=True)
class Paths:
    """The files of one run: the DSS output and what goes beside it."""

    out: Path
    rejected: Path
    summary: Path
    cache: Path

    @classmethod
    def beside(cls, out: Path, cache: Path | None = None, rejected: Path | None = None) -> Paths:
        stem = out.with_suffix("")
        return cls(out=out, rejected=rejected or Path(f"{stem}.rejected.jsonl"),
                   summary=Path(f"{stem}.summary.json"),
                   cache=cache or Path(f"{stem}.cache.sqlite"))


def read_api_key(env: str | None, file: Path | None) -> str | None:
    """The key from a file (first line) or else an environment variable; None if neither."""
    if file is not None:
        try:
            key = read_user_text(file, max_bytes=MAX_KEY_FILE_BYTES,
                                 what="key file").strip().splitlines()
        except UserFileError as exc:
            raise DistillError(f"--api-key-file {file}: {exc}") from None
        if not key or not key[0].strip():
            raise DistillError(f"--api-key-file {file}: file is empty")
        return key[0].strip()
    if env:
        value = os.environ.get(env, "").strip()
        return value or None
    return None


def load_template(path: Path | None) -> Template:
    if path is None:
        return DEFAULT_TEMPLATE
    try:
        document = yaml.safe_load(read_user_text(path, max_bytes=MAX_TEMPLATE_BYTES,
                                                 what="template"))
    except UserFileError as exc:
        raise DistillError(f"--template {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise DistillError(f"--template {path}: not YAML or JSON ({exc})".replace("\n", " ")) \
            from None
    try:
        return _template(document, str(path))
    except TemplateError as exc:
        raise DistillError(str(exc)) from None


def run_command(
    inputs: Path, teacher_url: str, model: str, paths: Paths, settings: Settings, *,
    api_key: str | None, max_retries: int, timeout_s: float, progress: bool, console: Console,
    limit: int | None = None,
) -> Summary:
    """Read, label, screen, write (progress on `console`); return the summary."""
    if paths.out.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise DistillError(f"--out {paths.out}: unknown extension (use .jsonl or .csv)")
    try:
        items = read_inputs(inputs)[:limit]  # all of it is checked, the first `limit` asked
    except DatasetError as exc:
        raise DistillError(str(exc)) from None
    teacher = Teacher(teacher_url, model, api_key=api_key, concurrency=settings.concurrency,
                      max_retries=max_retries, timeout_s=timeout_s)
    cache = AnswerCache(paths.cache)
    bar = Progress(
        TextColumn("distilling"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
        console=console, disable=not progress, transient=False,
    )
    task = bar.add_task("distill", total=len(items), status="")

    def done(_outcome: Outcome, summary: Summary) -> None:
        tokens = summary.prompt_tokens + summary.completion_tokens
        status = f"kept {summary.accepted} rejected {summary.rejected} tokens {tokens:,}"
        cost = settings.cost(summary.prompt_tokens, summary.completion_tokens)
        if cost is not None:
            status += f" ${cost:,.4f}"
        bar.update(task, advance=1, status=status)

    try:
        with bar:
            outcomes, summary = distill(items, teacher, cache, settings, on_done=done)
    except TeacherError as exc:
        raise DistillError(f"{exc} (answers paid so far are kept in {paths.cache})") from None
    except KeyboardInterrupt:
        raise Interrupted(f"Interrupted: the answers paid so far are kept in {paths.cache}. "
                          "Run the same command again to resume.") from None
    finally:
        cache.close()
    examples = [o.example for o in outcomes if o.example is not None]
    try:
        write_dataset(paths.out, examples)
        write_rejected(paths.rejected, outcomes)
        paths.summary.write_text(json.dumps(summary.as_dict(), indent=2) + "\n",
                                 encoding="utf-8")
    except OSError as exc:
        raise DistillError(f"{exc.filename}: cannot write ({exc.strerror})") from None
    return summary


def summary_table(summary: Summary) -> Table:
    table = Table(title="distillation", show_header=False, box=None)
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row("inputs", str(summary.inputs))
    table.add_row("kept", str(summary.accepted))
    table.add_row("rejected", str(summary.rejected))
    for reason in Reason:
        if summary.reasons[reason]:
            table.add_row(f"  {reason} ({reason.describe})", str(summary.reasons[reason]))
    for reason in Reason:
        if summary.retried[reason]:
            table.add_row(f"  asked again after {reason}", str(summary.retried[reason]))
    table.add_row("answers paid / from cache",
                  f"{summary.answers_paid} / {summary.answers_cached}")
    table.add_row("HTTP requests (retries included)", str(summary.requests))
    table.add_row("tokens paid (prompt + completion)",
                  f"{summary.prompt_tokens:,} + {summary.completion_tokens:,}")
    if summary.answers_cached:
        table.add_row("tokens from cache (not paid again)",
                      f"{summary.cached_prompt_tokens:,} + {summary.cached_completion_tokens:,}")
    if summary.cost is not None:
        table.add_row("cost of this run", f"${summary.cost:,.4f}")
    return table
