"""Every answer the teacher was paid for, on disk, so that a rerun or a crash pays only once.

A SQLite file keyed by a digest of (model, rendered messages, which carry the input and the
template, sampling settings); the template's fingerprint is in the key as well. Each answer is
committed as soon as it arrives, so a run killed at any moment keeps all it paid for. The
endpoint URL and the API key are not part of the key and are never stored.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Answer", "AnswerCache", "cache_key"]


@dataclass(frozen=True, slots=True)
class Answer:
    """One chat completion as far as distillation cares."""

    content: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


def cache_key(
    model: str, messages: list[dict[str, str]], sampling: dict[str, Any], template: str
) -> str:
    document = {"model": model, "messages": messages, "sampling": sampling, "template": template}
    text = json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class AnswerCache:
    """A persistent map from cache key to Answer."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, content TEXT NOT NULL, "
            "finish_reason TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, "
            "completion_tokens INTEGER NOT NULL)"
        )

    def get(self, key: str) -> Answer | None:
        row = self._db.execute(
            "SELECT content, finish_reason, prompt_tokens, completion_tokens FROM answers "
            "WHERE key = ?", (key,)
        ).fetchone()
        return Answer(*row) if row else None

    def put(self, key: str, answer: Answer) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
            (key, answer.content, answer.finish_reason, answer.prompt_tokens,
             answer.completion_tokens),
        )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._db.close()
