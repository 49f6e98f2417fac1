"""A warm process that forks trials: the local backend's cut of a tiny trial's start-up.

Every trial is a Ray job whose entrypoint is the worker contract, `python -m worker run
--trial FILE`, on a cluster and on one machine alike. On one machine a one-CPU-worker trial
spends most of its time to first step importing torch, transformers, accelerate, peft and
bitsandbytes in a fresh process (docs/benchmarks.md, "Time to first step"). The local backend
therefore starts one server per `ladder run` (`python -m worker.forkserver SOCKET`) that
imports all of that once and then forks a child per trial; it gives the path of the server's
socket to those trials' jobs (names.FORK_SERVER_ENV).

The job's entrypoint stays the same process: `python -m worker run` sees the variable and,
before importing anything heavy, becomes a thin client (`run_forked`). It hands the server
its arguments, environment, working directory and its stdin/stdout/stderr (SCM_RIGHTS), so
the child writes the job's log exactly as the driver would, waits for the child, forwards a
SIGTERM (Ray's stop_job) to it, and ends the way the child ended: the same exit code, or the
same signal (a child the kernel's OOM killer ended ends its job with SIGKILL, as before).

The child is a fresh trial in every way that matters: environment, arguments, signal
handlers and working directory are the client's; its memory budget is measured from a
baseline taken in the child (worker.memory.HostMemoryBudget: growth since the baseline), so
the pages it shares with the server are not charged to it. If the client goes away (SIGKILL),
the child is stopped as a SIGTERM'd trial. Whatever goes wrong on the way to the server (no
socket, a refused connection, a server that exits before forking), the client says so on
stderr and the trial runs in the client's own process as before: the server only ever saves
time. A server that ends (its `ladder run` was killed) leaves its running children running and
their clients waiting for them, as a killed `ladder run` leaves its jobs running for the next
one to adopt.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import signal
import socket
import struct
import sys
from collections.abc import Sequence

# The request: a 4-byte big-endian length, then that many bytes of JSON; the client's three
# standard streams travel with the length (SCM_RIGHTS). The server answers with one line
# `{"pid": N}` after the fork and one line `{"status": S}` (os.waitpid's) when the child ended;
# before that, the child itself sends `{"exit": CODE}` as it exits.
_LENGTH = struct.Struct(">I")
MAX_REQUEST_BYTES = 4 << 20
STREAMS = (0, 1, 2)


# -- the client: `python -m worker run` when FORK_SERVER_ENV is set ---------------------------

def run_forked(socket_path: str, argv: Sequence[str]) -> int | None:
    """Run `python -m worker <argv>` as a child of the server at `socket_path`; its exit code.

    None when the server cannot be reached (the caller runs the trial itself). A child that
    died of a signal makes this process die of the same signal."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(socket_path)
        request = json.dumps({"argv": list(argv), "env": dict(os.environ),
                              "cwd": os.getcwd()}).encode()
        socket.send_fds(client, [_LENGTH.pack(len(request))], list(STREAMS))
        client.sendall(request)
        replies = client.makefile("rb")
        pid = int(json.loads(replies.readline())["pid"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"ladder: the fork server at {socket_path} is not usable ({error}); "
              "running the trial in this process", file=sys.stderr, flush=True)
        client.close()
        return None

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    # The child's own exit line comes first, then the server's wait status. A server that went
    # away (its `ladder run` was killed; the next one adopts this job) leaves the child's line.
    status = exited = None
    try:
        while status is None and (line := replies.readline()):
            reply = json.loads(line)
            status = reply.get("status")
            exited = reply.get("exit", exited)
    except (OSError, ValueError, AttributeError):
        pass
    if status is None:
        if isinstance(exited, int):
            return exited
        print("ladder: the forked trial ended without an exit code (the fork server went "
              "away and the trial was killed)", file=sys.stderr, flush=True)
        return 1
    status = int(status)
    if os.WIFSIGNALED(status):
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    return os.waitstatus_to_exitcode(status)


# -- the server -----------------------------------------------------------------------------

def preload() -> None:
    """Import what any trial imports, once, before the first fork."""
    import accelerate  # noqa: F401
    import transformers

    import orchestrator.store  # noqa: F401  (every trial writes its state: sqlalchemy, alembic, 0.7 s)
    import worker.cli
    import worker.data.batching
    import worker.generation
    import worker.telemetry
    import worker.train  # noqa: F401
    from orchestrator.core.lifecycle import Method
    from worker.models import import_method_libraries

    # transformers loads a model's module when its class is first looked up.
    for name in ("T5ForConditionalGeneration", "Qwen2ForCausalLM", "LlamaForCausalLM",
                 "AutoModelForSeq2SeqLM", "AutoModelForCausalLM"):
        getattr(transformers, name)
    try:
        import_method_libraries(Method.QLORA)  # peft and bitsandbytes
    except ImportError as error:  # a trial that needs them fails on its own, as without us
        print(f"fork server: not preloaded: {error}", file=sys.stderr, flush=True)


def serve(socket_path: str) -> None:
    """Accept trials until stdin closes (the backend that started us stopped or died)."""
    import selectors

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)  # before the imports: early clients wait in the backlog
    os.chmod(socket_path, 0o600)  # a child runs whatever it is asked: its owner's only
    listener.listen(64)
    preload()
    # The imported modules' objects move to the collector's permanent generation: a child's
    # collections then skip them instead of writing to (and so copying) every page they are on.
    gc.freeze()
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, connection)
    while True:
        for key, _ in selector.select():
            if key.data == "stdin":
                if not os.read(sys.stdin.fileno(), 4096):
                    return
            elif key.data == "accept":
                connection, _ = listener.accept()
                started = _start(connection, listener, selector)
                if started is not None:
                    pidfd = os.pidfd_open(started)
                    selector.register(pidfd, selectors.EVENT_READ, "child")
                    children[pidfd] = (started, connection)
            else:
                pid, connection = children.pop(key.fd)
                selector.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):  # a client gone: so is its job
                    connection.sendall(json.dumps({"status": status}).encode() + b"\n")
                connection.close()


def _start(connection: socket.socket, listener: socket.socket, selector: object) -> int | None:
    """Read one request and fork its child; the child's pid (None: a bad request, dropped)."""
    fds: list[int] = []
    try:
        connection.settimeout(10.0)
        head, fds, _flags, _addr = socket.recv_fds(connection, _LENGTH.size, len(STREAMS))
        if len(head) != _LENGTH.size or len(fds) != len(STREAMS):
            raise ValueError("a truncated request")
        (length,) = _LENGTH.unpack(head)
        if length > MAX_REQUEST_BYTES:
            raise ValueError(f"a request of {length} bytes")
        body = b""
        while len(body) < length:
            chunk = connection.recv(length - len(body))
            if not chunk:
                raise ValueError("a truncated request")
            body += chunk
        request = json.loads(body)
        connection.settimeout(None)
    except (OSError, ValueError) as error:
        print(f"fork server: dropped a request: {error}", file=sys.stderr, flush=True)
        for fd in fds:
            os.close(fd)
        connection.close()
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        listener.close()
        selector.close()  # type: ignore[attr-defined]
        _child(connection, request, fds)  # never returns
    for fd in fds:
        os.close(fd)
    print(f"fork server: forked {pid}: python -m worker {' '.join(map(str, request['argv']))}",
          file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):  # a client gone: the child sees it and stops
        connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    return pid


def _child(connection: socket.socket, request: dict[str, object], fds: list[int]) -> None:
    """Become the trial: the client's streams, environment, directory and arguments."""
    from worker import phases

    phases.mark("driver_process")  # this fork, the trial's process start
    code = 1
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        for target, fd in zip(STREAMS, fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        env = request["env"]
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in dict(env).items()})  # type: ignore[call-overload]
        os.chdir(str(request["cwd"]))
        random.seed()  # not the server's state, shared by every child (trials seed their own)
        argv = [str(a) for a in request["argv"]]  # type: ignore[attr-defined]
        sys.argv = ["python -m worker", *argv]
        _watch_client(connection)
        from worker.cli import main

        code = main(argv)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(Exception):  # for the client, should the server be gone
            connection.sendall(json.dumps({"exit": code}).encode() + b"\n")
        os._exit(code)


def _watch_client(connection: socket.socket) -> None:
    """A client that vanished (SIGKILL'd job) stops the trial as a SIGTERM would."""
    import threading

    def watch() -> None:
        try:
            while connection.recv(4096):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="fork-client-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m worker.forkserver SOCKET", file=sys.stderr)
        return 2
    serve(args[0])
    sys.stderr.flush()
    os._exit(0)  # no interpreter teardown: seconds of freeing what the children shared


if __name__ == "__main__":
    sys.exit(main())
