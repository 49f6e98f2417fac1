"""An OpenAI-compatible chat-completions client: retries, backoff, Retry-After, no key leaks.

Any server speaking `POST /v1/chat/completions` will do (vLLM, an OpenAI-compatible gateway,
`transformers serve`). 429 and 5xx answers and dropped connections are retried with
exponential backoff and jitter, waiting what a `Retry-After` header asks for (seconds or an
HTTP date, capped); a 429's Retry-After holds back every request, not only the one that got
it. 401, 403 and 404 stop the whole run (every request would fail the same
way); any other 4xx fails that one input. The API key only ever goes into the Authorization
header: no message, log line or file written here contains it.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from typing import Any, Final

import httpx2 as httpx

from orchestrator.distill.cache import Answer

__all__ = ["RequestFailed", "Teacher", "TeacherError", "chat_url", "retry_after_seconds"]

CHAT_PATH: Final = "/chat/completions"
_FATAL: Final = {401: "the teacher refused the API key", 403: "the teacher refused access",
                 404: "no such endpoint or model"}


class TeacherError(Exception):
    """The run cannot go on (bad key, wrong URL): one line for the user."""


class RequestFailed(Exception):
    """This input got no answer (retries spent, or a request the server refuses)."""


def chat_url(url: str) -> str:
    """The chat-completions URL from what the user gave: the full URL or the API base
    (`http://host:8000/v1`)."""
    url = url.rstrip("/")
    return url if url.endswith(CHAT_PATH) else url + CHAT_PATH


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks to wait (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Teacher:
    """One endpoint and model, with a connection pool sized to the concurrency."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None,
        concurrency: int = 8,
        max_retries: int = 6,
        timeout_s: float = 300.0,
        backoff_s: float = 1.0,
        max_wait_s: float = 120.0,
    ) -> None:
        self.url = chat_url(url)
        self.model = model
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self.requests = 0  # HTTP requests sent, retries included
        # A 429 with Retry-After is about the account, not one request: no request is sent
        # before this (monotonic) time, so the others do not collect 429s of their own.
        self._resume_at = 0.0
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout_s, connect=30.0),
            limits=httpx.Limits(max_connections=concurrency,
                                max_keepalive_connections=concurrency),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_wait_s)
        return min(self.max_wait_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)

    async def complete(self, messages: list[dict[str, str]], sampling: dict[str, Any]) -> Answer:
        body = {"model": self.model, "messages": messages, "stream": False, **sampling}
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            pause = self._resume_at - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            self.requests += 1
            try:
                response = await self._client.post(self.url, json=body)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                status = response.status_code
                if status == 200:
                    try:
                        return _answer(response.json())
                    except (ValueError, KeyError, IndexError, TypeError) as exc:
                        last = f"malformed response ({exc})"
                elif status in _FATAL:
                    raise TeacherError(f"{_FATAL[status]} (HTTP {status} from {self.url}): "
                                       f"{_error_text(response)}")
                elif status == 429 or status >= 500:
                    last = f"HTTP {status}: {_error_text(response)}"
                    retry_after = retry_after_seconds(response.headers.get("retry-after"))
                    if status == 429 and retry_after is not None:
                        self._resume_at = max(self._resume_at, time.monotonic()
                                              + min(retry_after, self.max_wait_s))
                else:
                    raise RequestFailed(f"HTTP {status}: {_error_text(response)}")
            if attempt < self.max_retries:
                await asyncio.sleep(self._delay(attempt, retry_after))
        raise RequestFailed(f"{self.max_retries + 1} attempts, last: {last}")


def _answer(document: Any) -> Answer:
    choice = document["choices"][0]
    content = choice["message"].get("content")
    if content is None:  # e.g. a reasoning model that spent max_tokens before answering
        content = ""
    if not isinstance(content, str):
        raise TypeError("message content is not text")
    usage = document.get("usage") or {}
    return Answer(
        content=content,
        finish_reason=str(choice.get("finish_reason") or ""),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )


def _error_text(response: Any) -> str:
    """The server's own error message, one line and short."""
    try:
        document = response.json()
        error = document.get("error", document) if isinstance(document, dict) else document
        text = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    except ValueError:
        text = response.text
    text = " ".join(str(text).split())
    return text[:200] or response.reason_phrase or "no message"
