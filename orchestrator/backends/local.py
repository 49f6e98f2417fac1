"""Run trials as Ray jobs on a local Ray runtime (started by Ladder, or `RAY_ADDRESS`).

Without an address, the runtime is a private head of our own (see `ray_head.py`): free
ports, its own token, found again by the next `ladder run` if this one is killed.

Each trial attempt is one Ray job whose entrypoint is the worker contract,
`python -m worker run --trial FILE`, exactly what a KubeRay RayJob runs on a cluster. One
difference, for speed: a trial of one CPU worker trains in that job's driver process instead
of a Ray Train worker group (`RANK_IN_DRIVER_ENV`, worker/train.py: `rank_in_driver`), which
saves the seconds of two more processes' start and imports; every other trial uses Ray Train.
And that driver does not import torch and the training libraries itself: it asks a warm fork
server of ours to fork the trial (`FORK_SERVER_ENV`, worker/forkserver.py). The
job's submission id is derived from the trial id and attempt, so submitting twice is a no-op
and a restarted `ladder run` finds (and adopts) the jobs it launched before it was killed.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.backends.ray_head import STATE_FILE, SharedHead, join_head_env, restore_env
from orchestrator.backends.runner import FinishedJob
from orchestrator.core.classify import classify_text, excerpt, state_for_exit_code
from orchestrator.core.lifecycle import TrialState
from orchestrator.core.names import (
    DB_URL_ENV,
    FORK_SERVER_ENV,
    LABEL_SWEEP,
    LABEL_TRIAL,
    RANK_IN_DRIVER_ENV,
    WORKER_PYTHON_ENV,
)
from orchestrator.core.scheduler import Capacity
from orchestrator.core.worker_contract import (
    WORKER_ENV,
    AttemptResult,
    AttemptSpec,
    single_cpu_rank,
)
from orchestrator.files import write_trial

log = logging.getLogger(__name__)

# Logical CPUs for a Ray runtime Ladder starts itself; more than the cores is fine for CPU
# trials of tiny models, and lets a 2-core laptop run two 1-worker trials side by side.
DEFAULT_LOGICAL_CPUS = max(4, os.cpu_count() or 1)
AGENT_WAIT_SECONDS = 120.0


def job_id(spec: AttemptSpec) -> str:
    """Deterministic Ray job submission id of a trial attempt."""
    namespace = f"{spec.namespace}-" if spec.namespace else ""
    return f"ladder-{namespace}{spec.sweep}-{spec.trial_id}-{spec.attempt}"


#: Seconds to wait for an existing Ray runtime's address to answer before saying so: Ray
#: itself retries an address where nothing listens for minutes.
RAY_ADDRESS_TIMEOUT = 5.0


def ray_address_problem(address: str, timeout: float = RAY_ADDRESS_TIMEOUT) -> str | None:
    """Why `address` (`--ray-address`, RAY_ADDRESS) cannot be a Ray runtime, in a few words,
    or None when it may be: `auto` and `local` are Ray's own; `[ray://]HOST:PORT` must be a
    port that accepts a connection within `timeout` seconds."""
    import socket

    if address in ("auto", "local"):
        return None
    target = address.removeprefix("ray://")
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return "not an address (expected HOST:PORT, ray://HOST:PORT, auto or local)"
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout):
            return None
    except OSError as error:
        reason = "no answer" if isinstance(error, TimeoutError) else (error.strerror or error)
        return f"no Ray runtime answers there ({reason})"


class LocalRayBackend:
    """Trials as Ray jobs through the job submission API of a local Ray runtime."""

    def __init__(
        self,
        *,
        runs_dir: Path,
        db_url: str,
        address: str | None = None,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
    ) -> None:
        self.runs_dir = runs_dir
        self.db_url = db_url
        self.address = address if address is not None else os.environ.get("RAY_ADDRESS")
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self._client = None
        self._head: SharedHead | None = None
        self._saved_env: dict[str, str | None] = {}
        self._jobs: dict[tuple[str, int], AttemptSpec] = {}
        self._fork_server: subprocess.Popen[bytes] | None = None
        self._fork_socket: Path | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        import ray
        from ray.job_submission import JobSubmissionClient

        t0 = time.monotonic()
        if not self.address:
            self._start_fork_server()  # its imports overlap Ray's start
            self._head = SharedHead(self.runs_dir)
            try:
                head = self._head.acquire(num_cpus=self.num_cpus or DEFAULT_LOGICAL_CPUS,
                                          num_gpus=self.num_gpus)
            except BaseException:
                self._stop_fork_server()
                raise
            # The driver (this process) and the jobs it submits authenticate with the head's
            # token; Ray reads it from the environment.
            self._saved_env = join_head_env(head)
            address, url = head.address, head.dashboard_url
        else:
            address, url = self.address, None
        context = ray.init(address=address, logging_level=logging.WARNING,
                           ignore_reinit_error=True)
        url = url or context.dashboard_url or "127.0.0.1:8265"
        self._client = JobSubmissionClient(url if "://" in url else f"http://{url}")
        log.info("Ray runtime ready in %.1fs (dashboard %s)", time.monotonic() - t0, url)
        if self._fork_server is not None and self.capacity().gpus:
            self._stop_fork_server()  # it never forked; a process that forks must not use CUDA

    def _start_fork_server(self) -> None:
        """The warm process one-CPU-worker trials fork from (worker/forkserver.py).

        Only on a runtime of our own (jobs of a `RAY_ADDRESS` runtime may run on other nodes)
        without GPUs (a process that forks must not have touched CUDA), and not with a worker
        interpreter of the caller's choosing (WORKER_PYTHON_ENV: it may not be ours) or when
        FORK_SERVER_ENV is "0". It imports while Ray starts (the first jobs' clients wait in
        its socket's backlog if it is not done); a server that fails leaves every trial to
        start its own process, as without one."""
        if os.environ.get(WORKER_PYTHON_ENV) or os.environ.get(FORK_SERVER_ENV) == "0":
            return
        # A short path: a Unix socket's path is limited to about 100 bytes.
        directory = Path(tempfile.mkdtemp(prefix="ladder-fork-"))
        self._fork_socket = directory / "socket"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.runs_dir / "fork-server.log", "ab") as log_file:
            self._fork_server = subprocess.Popen(
                [sys.executable, "-m", "worker.forkserver", str(self._fork_socket)],
                stdin=subprocess.PIPE, stdout=log_file, stderr=log_file,
                env={**os.environ, **self._job_env()},
                # Not in the terminal's process group: a Ctrl-C reaches `ladder run`, which
                # stops the running trials through Ray, as it does the jobs' own processes.
                start_new_session=True,
            )
        deadline = time.monotonic() + 10.0  # the socket is bound before the imports
        while not self._fork_socket.exists() and self._fork_server.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not self._fork_socket.exists():
            log.warning("the fork server did not start (see %s); trials start their own "
                        "processes", self.runs_dir / "fork-server.log")
            self._stop_fork_server()

    def _stop_fork_server(self) -> None:
        server, self._fork_server = self._fork_server, None
        if server is not None:
            if server.stdin is not None:
                server.stdin.close()  # the server's signal to end
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if self._fork_socket is not None:
            shutil.rmtree(self._fork_socket.parent, ignore_errors=True)
            self._fork_socket = None

    def head_left_running(self) -> bool:
        """Whether an earlier `ladder run` left a Ray head of this runs directory (whose jobs
        `start` would adopt and which the last run stops)."""
        return (self.runs_dir / STATE_FILE).exists()

    @property
    def reused_runtime(self) -> bool:
        """True when an earlier `ladder run` left its Ray head running and we took it over."""
        return self._head is not None and self._head.reused

    def stop(self) -> None:
        import ray

        self._stop_fork_server()
        ray.shutdown()
        if self._head is not None:
            self._head.release()
            self._head = None
        restore_env(self._saved_env)
        self._saved_env = {}

    def capacity(self) -> Capacity:
        import ray

        resources = ray.cluster_resources()
        return Capacity(gpus=int(resources.get("GPU", 0)), cpus=int(resources.get("CPU", 0)))

    # -- acting --------------------------------------------------------------------------
    def launch(self, spec: AttemptSpec) -> str:
        trial_file = write_trial(spec, Path(spec.output_dir) / "trial.json")
        submission = job_id(spec)
        entrypoint = shlex.join(
            [os.environ.get(WORKER_PYTHON_ENV) or sys.executable, "-m", "worker", "run",
             "--trial", str(trial_file.resolve())]
        )
        # Ray's job agent comes up a little after `ray.init()` returns; until then submissions
        # are refused with "No available agent", which is no fault of the trial.
        deadline = time.monotonic() + AGENT_WAIT_SECONDS
        while True:
            try:
                self._client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=submission,
                    runtime_env={"env_vars": self._job_env(spec)},
                    # A one-CPU-worker trial trains in the driver (RANK_IN_DRIVER_ENV), which
                    # then holds the CPUs its Ray Train rank would have held.
                    entrypoint_num_cpus=(spec.resources.cpus_per_worker
                                         if single_cpu_rank(spec) else 0),
                    metadata={LABEL_SWEEP: spec.sweep, LABEL_TRIAL: spec.trial_id},
                )
                break
            except RuntimeError as error:
                # Already submitted (a restarted runner re-planning the attempt): adopt it.
                if "already exists" in str(error):
                    break
                if "No available agent" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.25)  # it is usually up within a second
        self._jobs[(spec.trial_id, spec.attempt)] = spec
        return submission

    def _job_env(self, spec: AttemptSpec | None = None) -> dict[str, str]:
        env = {k: v for k, v in WORKER_ENV.items() if k not in os.environ}
        if spec is not None and self._fork_socket is not None and single_cpu_rank(spec):
            env[FORK_SERVER_ENV] = str(self._fork_socket)
        env.update({DB_URL_ENV: self.db_url, "PYTHONUNBUFFERED": "1", RANK_IN_DRIVER_ENV: "1"})
        # Workers must import the same `orchestrator` and `worker` packages as we do.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        return env

    def cancel(self, trial_id: str, attempt: int) -> None:
        spec = self._jobs.get((trial_id, attempt))
        if spec is None:
            return
        try:
            self._client.stop_job(job_id(spec))
        except RuntimeError as error:  # unknown job: nothing to stop
            log.debug("stop_job %s: %s", job_id(spec), error)

    def adopt(self, spec: AttemptSpec) -> bool:
        """Track a job launched by an earlier runner, if the Ray runtime still has it."""
        try:
            self._client.get_job_status(job_id(spec))
        except RuntimeError:
            return False
        self._jobs[(spec.trial_id, spec.attempt)] = spec
        return True

    # -- observing -----------------------------------------------------------------------
    def active(self) -> set[tuple[str, int]]:
        return set(self._jobs)

    def poll(self) -> list[FinishedJob]:
        """Jobs that ended since the last poll, each with its outcome."""
        finished = []
        for key, spec in list(self._jobs.items()):
            info = self._client.get_job_info(job_id(spec))
            if not info.status.is_terminal():
                continue
            del self._jobs[key]
            finished.append(self._finished_job(spec, info))
        return finished

    def _finished_job(self, spec: AttemptSpec, info: object) -> FinishedJob:
        logs = self._client.get_job_logs(job_id(spec))
        result = AttemptResult.from_output(logs)
        status = str(getattr(info, "status", ""))
        if result is not None:
            return FinishedJob(
                spec.trial_id, spec.attempt, result.status, result, result.error, result.oom_kind
            )
        if status == "STOPPED":
            return FinishedJob(spec.trial_id, spec.attempt, TrialState.CANCELLED, None, "stopped")
        # The worker died without its result line: classify what the job left behind.
        text = f"{getattr(info, 'message', '') or ''}\n{logs}"
        state, kind = classify_text(text, budget_set=spec.memory_budget_bytes is not None)
        code_state = state_for_exit_code(getattr(info, "driver_exit_code", None))
        if state is TrialState.FAILED and code_state is TrialState.OOM:
            state = TrialState.OOM
        return FinishedJob(spec.trial_id, spec.attempt, state, None, excerpt(text), kind)
