"""STAND-IN for a teacher LLM: a real HTTP server on 127.0.0.1 that speaks the OpenAI
chat-completions API (`POST /v1/chat/completions`) with scripted answers.

It is not a model. Each request's last user message is looked up in a script; the script
gives, in order, the replies for that input (an answer with its finish_reason and usage, or an
HTTP error with headers such as Retry-After); once a script is spent, the last reply repeats.
Inputs with no script get `default(input)` or a 404-free canned answer. The server counts
every request and every answer it served (what a paying user would be billed for), keeps the
Authorization headers it saw, and can delay answers (so a client can be killed half-way).
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted reply: an answer (status 200) or an HTTP error."""

    content: str = ""
    finish_reason: str = "stop"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 100
    completion_tokens: int = 20


def answer(rationale: str, label: str, **kw: Any) -> Reply:
    return Reply(f"Rationale: {rationale}\nQuery DSL: {label}", **kw)


def error(status: int, **headers: str) -> Reply:
    return Reply(status=status, headers={k.replace("_", "-"): v for k, v in headers.items()})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up before its answer (a run stopped at a 401, a killed run) is
        # normal for a server; anything else is printed as usual.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class TeacherStandin:
    """Run with `with TeacherStandin(script) as teacher:`; `teacher.url` is the /v1 base."""

    def __init__(
        self,
        script: dict[str, list[Reply]] | None = None,
        default: Callable[[str], Reply] | None = None,
        delay_s: float = 0.0,
        port: int = 0,
    ) -> None:
        self.script = {key: list(replies) for key, replies in (script or {}).items()}
        self.default = default or (lambda _text: answer("Step 1: nothing.", '{"size":0}'))
        self.delay_s = delay_s
        self.requests: Counter[str] = Counter()  # per input, every request
        self.served: Counter[str] = Counter()  # per input, answers (status 200) only
        self.authorization: list[str | None] = []
        self.arrivals: list[tuple[float, str, int]] = []  # (monotonic time, input, status)
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests being answered at once
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def total_served(self) -> int:
        return sum(self.served.values())

    def __enter__(self) -> TeacherStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self, text: str) -> Reply:
        with self._lock:
            n = self.requests[text]
            self.requests[text] += 1
            replies = self.script.get(text)
            reply = (replies[min(n, len(replies) - 1)] if replies else self.default(text))
            if reply.status == 200:
                self.served[text] += 1
            return reply

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, document: Any, headers: dict[str, str]) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(length))
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}}, {})
                    return
                with standin._lock:
                    standin.authorization.append(self.headers.get("Authorization"))
                    standin.bodies.append(request)
                text = request["messages"][-1]["content"]
                reply = standin._next(text)
                with standin._lock:
                    standin.arrivals.append((time.monotonic(), text, reply.status))
                    standin.in_flight += 1
                    standin.max_in_flight = max(standin.max_in_flight, standin.in_flight)
                try:
                    time.sleep(standin.delay_s or 0.01)  # long enough for requests to overlap
                finally:
                    with standin._lock:
                        standin.in_flight -= 1
                if reply.status != 200:
                    self._send(reply.status, {"error": {"message": f"scripted {reply.status}"}},
                               reply.headers)
                    return
                self._send(200, {
                    "id": "standin", "object": "chat.completion", "model": request["model"],
                    "choices": [{"index": 0, "finish_reason": reply.finish_reason,
                                 "message": {"role": "assistant", "content": reply.content}}],
                    "usage": {"prompt_tokens": reply.prompt_tokens,
                              "completion_tokens": reply.completion_tokens,
                              "total_tokens": reply.prompt_tokens + reply.completion_tokens},
                }, reply.headers)

        return Handler


def main() -> None:
    """`python -m tests.distill.teacher_standin DSS.jsonl`: serve a DSS file's own rationales
    and labels as the teacher's answers (every `--wrong-every`-th one a label that is JSON but
    not Query DSL), to try `ladder distill` without a model. Ctrl-C stops it."""
    import argparse

    from worker.data.dss import load_dss

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("dataset")
    parser.add_argument("--wrong-every", type=int, default=0)
    parser.add_argument("--port", type=int, default=8011)
    options = parser.parse_args()
    examples = load_dss(options.dataset)
    index = {ex.input: (i, ex) for i, ex in enumerate(examples, start=1)}

    def reply(text: str) -> Reply:
        if text not in index:
            return Reply("I do not know this question.")
        i, ex = index[text]
        label = ex.label
        if options.wrong_every and i % options.wrong_every == 0:
            label = '{"query":{"sql":"SELECT * FROM index"}}'
        return answer(ex.rationale, label, prompt_tokens=len(text) // 4,
                      completion_tokens=len(ex.rationale + label) // 4)

    with TeacherStandin(default=reply, port=options.port) as teacher:
        print(f"stand-in teacher at {teacher.url} ({len(examples)} scripted answers)",
              flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
