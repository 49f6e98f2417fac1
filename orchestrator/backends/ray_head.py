"""The private Ray head a local `ladder run` starts, finds again after a crash, and stops.

`ray.init()` would start a runtime inside our process, on Ray's fixed ports: its dashboard
agent always listens on 52365, so a second runtime on the same machine (a colleague's sweep,
or the leftovers of a `ladder run` that was SIGKILLed) never gets a job agent and every
submission is refused with "No available agent to submit job". So Ladder starts its head with
`ray start --head --block` on free loopback ports, in a temporary directory of its own, with a
token of its own (Ray token authentication), and writes where it is to
`<runs-dir>/ray-head.json` (mode 0600, it holds the token).

The head outlives a killed `ladder run` on purpose: its jobs (the trials) keep running, and
the next `ladder run` with the same runs directory finds the head through that file and adopts
them instead of running them again. Several `ladder run`s sharing a runs directory share the
head, at the same time: each holds a shared lock on `ray-head.lock` while it runs, and only the
last one out (the one that can take that lock exclusively) stops the head. Finding or starting
the head, and stopping it, happen under a second, exclusive lock (`ray-head.start.lock`), so a
run never finds a head that is being stopped, and two runs never start two heads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from orchestrator.core.names import LOOPBACK_ENV, LOOPBACK_NODE_IP
from orchestrator.ports import free_ports

log = logging.getLogger(__name__)

STATE_FILE = "ray-head.json"
LOCK_FILE = "ray-head.lock"
START_LOCK_FILE = "ray-head.start.lock"
START_TIMEOUT_SECONDS = 120.0
START_TRIES = 2  # a head that exits while starting is started once more, on other ports
STOP_GRACE_SECONDS = 3.0  # `ray start --block` takes longer than this to wind down on SIGTERM


def _ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


@dataclass(frozen=True, slots=True)
class RayHead:
    """Where a private head is, and what a client needs to talk to it."""

    address: str  # GCS, host:port
    dashboard_url: str  # job submission API
    pid: int  # the `ray start --block` process, leader of the head's process group
    temp_dir: str  # every process of the head has it on its command line
    token: str

    def env(self) -> dict[str, str]:
        """Environment of a client (or a job) of this head."""
        if not self.token:  # started with auth=False
            return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "disabled"}
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": self.token}

    def is_alive(self) -> bool:
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return False
        if self.temp_dir.encode() not in cmdline:  # the pid was reused by something else
            return False
        return _dashboard_up(self.dashboard_url, self.token)

    def stop(self) -> None:
        """Stop the head and every process it started; remove its directory."""
        stop_head(self.pid, self.temp_dir)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def stop_head(pid: int, temp_dir: str) -> None:
    """Stop a `ray start --head --block` (process group leader `pid`, `--temp-dir=temp_dir`)
    and every process it started, including those in sessions of their own (Ray's job
    supervisors and workers can be): SIGTERM to the group, SIGKILL to what is left after
    STOP_GRACE_SECONDS. The one way every head is stopped: the local backend's, and the tests'
    stand-ins for head pods (after jobs have run, `ray start --block` alone takes 30 s or
    more to wind down on SIGTERM)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline and _processes_of(temp_dir):
        time.sleep(0.25)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for left in _processes_of(temp_dir):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(left, signal.SIGKILL)


def _processes_of(temp_dir: str) -> list[int]:
    """Live processes whose command line names the head's temporary directory."""
    marker = temp_dir.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _dashboard_up(url: str, token: str) -> bool:
    request = urllib.request.Request(
        f"{url}/api/version", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def reload_ray_auth_settings() -> None:
    """Make this process see RAY_AUTH_MODE / RAY_AUTH_TOKEN as they are now.

    Ray reads both once, when it is imported; what `ray.init()` itself does when it turns
    token mode on is what we do here (ray/_private/authentication/authentication_token_setup).
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def join_head_env(head: RayHead) -> dict[str, str | None]:
    """Put the head's address and token in this process's environment (the driver here and the
    processes it starts join it with them); returns what they replaced, for restore_env."""
    saved = {key: os.environ.get(key) for key in head.env()}
    os.environ.update(head.env())
    reload_ray_auth_settings()
    return saved


def restore_env(saved: dict[str, str | None]) -> None:
    """Undo join_head_env."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    reload_ray_auth_settings()


def head_command(*, temp_dir: str | Path, num_cpus: int, num_gpus: int | None,
                 object_store_bytes: int | None = None) -> tuple[list[str], int]:
    """`ray start --head --block` on loopback (LOOPBACK_NODE_IP), in `temp_dir`, with every
    port Ray would take at a fixed default (the dashboard's 8265, its agent's 52365, the
    client server's 10001) or pick with a racy probe of its own given a free one
    (orchestrator.ports). Returns the command and the dashboard's port. The one command line
    of every private head: the local backend's, and the tests' and benchmarks'."""
    (gcs, dashboard, agent_http, agent_grpc, metrics, runtime_env,
     client) = free_ports(7)
    command = [
        _ray_executable(), "start", "--head", "--block", "--disable-usage-stats",
        f"--node-ip-address={LOOPBACK_NODE_IP}", f"--port={gcs}", f"--temp-dir={temp_dir}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}", f"--ray-client-server-port={client}",
        f"--num-cpus={num_cpus}",
    ]
    if num_gpus is not None:
        command.append(f"--num-gpus={num_gpus}")
    if object_store_bytes is not None:
        command.append(f"--object-store-memory={object_store_bytes}")
    return command, dashboard


#: Ray's switch for starting idle workers when the first driver connects (see start_head).
PRESTART_ENV = "RAY_prestart_worker_first_driver"


class HeadExited(RuntimeError):
    """The head's `ray start` exited before its dashboard answered."""


def start_head(*, num_cpus: int, num_gpus: int | None, object_store_bytes: int | None = None,
               auth: bool = True, timeout: float = START_TIMEOUT_SECONDS) -> RayHead:
    """Start a private head (head_command) and wait until its dashboard answers.

    With `auth` (the local backend's), the head takes a token of its own; without, token
    authentication is off (the tests' stand-ins for head pods and the benchmarks, whose jobs
    and clients send none). A head that exits while it starts is started again, on other
    ports, up to START_TRIES times: a port taken between the probe and Ray's bind is the
    known cause (orchestrator.ports). The error then carries what its logs say.
    """
    for attempt in range(1, START_TRIES + 1):
        try:
            return _start_head_once(num_cpus=num_cpus, num_gpus=num_gpus,
                                    object_store_bytes=object_store_bytes, auth=auth,
                                    timeout=timeout)
        except HeadExited as exited:
            if attempt == START_TRIES:
                raise
            log.warning("%s; starting it again on other ports",
                        str(exited).split(":\n", 1)[0])
            log.debug("%s", exited)
    raise AssertionError("unreachable")


def _start_head_once(*, num_cpus: int, num_gpus: int | None, object_store_bytes: int | None,
                     auth: bool, timeout: float) -> RayHead:
    temp_dir = tempfile.mkdtemp(prefix="ladder-ray-", dir="/tmp")  # short: socket paths
    token = secrets.token_hex(32) if auth else ""
    command, dashboard_port = head_command(temp_dir=temp_dir, num_cpus=num_cpus,
                                           num_gpus=num_gpus,
                                           object_store_bytes=object_store_bytes)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if auth
               else {"RAY_AUTH_MODE": "disabled"})
    env.update({"RAY_USAGE_STATS_ENABLED": "0", **LOOPBACK_ENV})  # nothing leaves the machine
    # No idle Python workers for the first driver that connects (Ray starts up to --num-cpus
    # of them, two at a time): that driver is `ladder run`'s own, which submits jobs and runs
    # no tasks, and a job's supervisor and its Ray Train actors carry the job's env vars, a
    # runtime env no idle default worker matches. Each costs about 0.7 CPU-seconds, just when
    # the first trials start (tests/bench/bench_head.py). A value in the environment wins.
    env.setdefault(PRESTART_ENV, "0")
    log_path = Path(temp_dir) / "ray-start.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    head = RayHead(address="", dashboard_url=f"http://127.0.0.1:{dashboard_port}",
                   pid=process.pid, temp_dir=temp_dir, token=token)
    address_file = Path(temp_dir) / "ray_current_cluster"
    deadline = time.monotonic() + timeout
    while True:
        address = address_file.read_text().strip() if address_file.exists() else ""
        if address and _dashboard_up(head.dashboard_url, token):
            return RayHead(address=address, dashboard_url=head.dashboard_url, pid=head.pid,
                           temp_dir=temp_dir, token=token)
        exited = process.poll() is not None
        if exited or time.monotonic() > deadline:
            why = startup_logs(Path(temp_dir))
            head.stop()
            if exited:
                raise HeadExited(f"the local Ray head exited while starting (exit "
                                 f"{process.returncode}):\n{why}")
            raise RuntimeError(f"the local Ray head did not start in {timeout:.0f} s:\n{why}")
        time.sleep(0.25)


def startup_logs(temp_dir: Path, lines: int = 12) -> str:
    """What a head's logs say about why it did not start: the end of `ray start`'s output,
    and of each of its daemons' error logs that has anything in it."""
    parts = []
    for path in [temp_dir / "ray-start.log",
                 *sorted((temp_dir / "session_latest" / "logs").glob("*.err"))]:
        try:
            text = path.read_text(errors="replace").strip()
        except OSError:
            continue
        if text:
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- {path.name} ---\n{tail}")
    return "\n".join(parts) or "(no logs)"


class SharedHead:
    """The head of a runs directory: found if an earlier or a concurrent run started it, else
    started; stopped by the last run that uses it."""

    def __init__(self, runs_dir: Path) -> None:
        runs_dir.mkdir(parents=True, exist_ok=True)
        self.state_file = runs_dir / STATE_FILE
        self._lock: IO[str] | None = None
        self.head: RayHead | None = None
        self.reused = False

    @contextlib.contextmanager
    def _starting(self) -> Iterator[None]:
        """One run at a time finds, starts or stops the head (the others wait seconds)."""
        with (self.state_file.parent / START_LOCK_FILE).open("a+") as mutex:
            fcntl.flock(mutex, fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def acquire(self, *, num_cpus: int, num_gpus: int | None) -> RayHead:
        with self._starting():
            self._lock = (self.state_file.parent / LOCK_FILE).open("a+")
            fcntl.flock(self._lock, fcntl.LOCK_SH)  # in use until release(); others share it
            try:
                head = self._read()
                if head is not None and head.is_alive():
                    self.reused = True
                    log.info("reusing the Ray head %s (pid %d)", head.address, head.pid)
                else:
                    if head is not None:
                        head.stop()  # half-dead leftovers
                    head = start_head(num_cpus=num_cpus, num_gpus=num_gpus)
                    self._write(head)
            except BaseException:
                self._lock.close()
                self._lock = None
                raise
            self.head = head
        return head

    def release(self) -> bool:
        """Stop the head unless another run still uses it; True if it was stopped."""
        if self._lock is None:
            return False
        stopped = False
        with self._starting():  # nobody is finding the head while we decide
            try:
                # Shared -> exclusive succeeds only if no other run holds the lock shared.
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another ladder run still uses the Ray head; leaving it running")
            else:
                if self.head is not None:
                    self.head.stop()
                    self.state_file.unlink(missing_ok=True)
                    stopped = True
            finally:
                self._lock.close()
                self._lock = None
        return stopped

    def _read(self) -> RayHead | None:
        try:
            return RayHead(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _write(self, head: RayHead) -> None:
        descriptor = os.open(self.state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(asdict(head), out)
