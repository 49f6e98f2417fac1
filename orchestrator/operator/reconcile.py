"""One level-triggered pass over one Sweep: observe, `plan`, act.

docs/architecture.md, "The plan loop".

Every Kopf handler (create, resume, update, the timer, RayJob events, delete) ends here, so
a handler re-entered on retry, or two causes arriving together, run the same idempotent
pass. Passes over one sweep never overlap (a lock per sweep); a kick that arrives during a
pass makes the pass run once more instead of waiting.

Observe:
1. the Sweep, read fresh from the API server (its spec, generation, deletionTimestamp);
2. its RayJobs (label `ladder.dev/sweep`, owner reference to this Sweep's uid); RayJobs of
   the label that are not this Sweep's (an older Sweep of the same name) are deleted;
3. the store's attempts. A pending or running attempt is settled from, in this order: the
   worker's own result (the store row turned terminal), its RayJob's status
   (`manifests.outcome_from_rayjob`, with the pods of its RayCluster and KubeRay's Events on
   it for OOMKilled), and a RayJob that is gone (deleted behind the controller's back, or
   never created because the controller died between recording and creating it):
   cancelled, so the lane relaunches it as the next attempt. A RayJob without a store row
   (a store that lost it) is adopted.
   A running attempt silent for longer than `execution.stallTimeoutSeconds` (no epoch, no
   other write of its worker; `classify.stall_reason` decides) has hung: its RayJob is deleted
   and the attempt recorded as failed, "stalled: no progress for N s" (it retries like any
   failure). A live attempt one of whose pods the scheduler has refused for longer than
   `execution.unschedulableTimeoutSeconds` is requeued: its RayJob is deleted and the
   attempt recorded as cancelled with the scheduler's message (the lane runs it again).
4. what the cluster holds besides the active attempts (`operator.capacity`): the GPUs of
   finished trials' RayClusters KubeRay still keeps, and, without `execution.capacity`,
   the nodes' allocatable GPUs less every other pod's request; RayJobs suspended for Kueue
   hold nothing.

Plan: `plan(grid, spec, Observed(...))` with the attempts from the store.

Act: cancellations (delete the RayJob, record cancelled), records (predicted OOM,
unschedulable, skipped), launches (record the attempt with its RayJob name first, then
create the RayJob: a create that finds it already there is the same attempt), then the
status (`status_dict` + observedGeneration + conditions), patched only when it changed.
Events: trial launches, outcomes (OOMs as warnings), lane ceilings, the sweep's end.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from orchestrator import bookkeeping, store
from orchestrator.core.classify import stall_reason
from orchestrator.core.estimate import predicted_oom_fn
from orchestrator.core.grid import Grid, GridPoint, attempt_spec, expand
from orchestrator.core.lifecycle import LaneState, OOMKind, TrialState
from orchestrator.core.names import ANNOTATION_OUTCOME
from orchestrator.core.plan import (
    CancelTrial,
    LaunchTrial,
    Plan,
    RecordUnlaunched,
    SweepPhase,
    plan,
    status_dict,
)
from orchestrator.core.scheduler import Capacity
from orchestrator.core.spec import API_VERSION, KIND, SpecError, Sweep, parse_sweep
from orchestrator.core.worker_contract import AttemptKey, AttemptSpec
from orchestrator.metrics import LadderMetrics
from orchestrator.operator.capacity import (
    GpuPool,
    cluster_gpus,
    held_gpus,
    own_attempt,
    queued,
    unschedulable_reason,
)
from orchestrator.operator.conditions import desired_conditions, merge_conditions
from orchestrator.operator.kube import Cluster, KubeError
from orchestrator.operator.manifests import (
    UNBOUNDED,
    ExecutionConfig,
    SecretRef,
    TrialPodPolicy,
    attempt_of,
    checked_execution_config,
    cluster_name,
    decode_trial,
    outcome_from_rayjob,
    owned_by,
    pod_policy_problems,
    rayjob_manifest,
    rayjob_name,
    running_state,
    sweep_capacity,
    trial_output_dir,
    unshared_outputs,
)

log = logging.getLogger(__name__)

NORMAL, WARNING = "Normal", "Warning"
GONE = "RayJob {name} is gone: it was deleted before the attempt finished"
RECONCILE_ERROR = "ReconcileError"
ERROR_MESSAGE_CHARS = 1000


@dataclass
class PassResult:
    """What one pass saw and did (for logs, probes and tests)."""

    plan: Plan | None = None
    launched: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    settled: dict[tuple[str, int], TrialState] = field(default_factory=dict)
    remaining_rayjobs: int = 0
    invalid: str | None = None
    error: str | None = None  # the pass raised: reported as ReconcileError on the Sweep


# A grid at least this large is kept out of the cyclic garbage collector once expanded
# (`keep_out_of_collections`): every `plan` over it allocates a few objects per lane that live
# to the end of the pass, enough to start full collections, and each full collection walked
# the whole cached grid, so a pass cost twice its work at 100,000 trials (docs/benchmarks.md,
# "Controller memory and pass time as trials grow").
FREEZE_GRID_TRIALS = 10_000


def keep_out_of_collections(trials: int) -> None:
    """After a grid of `trials` was built to live long, move what the process holds now into
    the collector's permanent generation (`gc.freeze`), so full collections no longer walk
    it; the grid is still freed by reference counting when the cache drops it (it holds no
    reference cycles). The previous freeze is undone and collected first, so garbage cycles
    frozen then are not kept for good. Below `FREEZE_GRID_TRIALS` it does nothing: the
    collection costs more than it saves."""
    if trials < FREEZE_GRID_TRIALS:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class _Expanded:
    """What a pass needs of a Sweep's grid, computed once per spec."""

    grid: Grid
    trials: Mapping[str, GridPoint]
    predicted_oom: frozenset[str]


@dataclass
class _SweepState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    dirty: bool = False


def _now() -> datetime:
    return datetime.now(UTC)


def sweep_from_body(body: Mapping[str, Any]) -> Sweep:
    """The Sweep of a CR body (raises SpecError naming the bad field)."""
    meta = body.get("metadata") or {}
    document = {
        "apiVersion": body.get("apiVersion", API_VERSION),
        "kind": body.get("kind", KIND),
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace") or ""},
        "spec": body.get("spec"),
    }
    return parse_sweep(document, source=f"sweep {meta.get('namespace')}/{meta.get('name')}")


def _without_nulls(value: Any) -> Any:
    """`value` with null fields dropped: the API server prunes them from stored status, so
    a status with nulls equals the stored one without them."""
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _describe(trial: GridPoint) -> str:
    return f"{trial.trial_id} ({trial.lane.name}, {trial.model})"


class Reconciler:
    """Drives Sweeps through `plan`, one pass at a time per Sweep."""

    def __init__(
        self,
        cluster: Cluster,
        sessions: sessionmaker[Session],
        *,
        db_secret: SecretRef | None = None,
        clock: Callable[[], datetime] = _now,
        execution_defaults: Mapping[str, Any] | None = None,
        allow_privileged_trials: bool = False,
        pod_policy: TrialPodPolicy | None = None,
        metrics: LadderMetrics | None = None,
    ) -> None:
        self.cluster = cluster
        self.sessions = sessions
        self.db_secret = db_secret
        self.execution_defaults = dict(execution_defaults or {})
        self.allow_privileged_trials = allow_privileged_trials
        # What Sweeps may give their pods (docs/security.md): the installation's policy, the
        # store's Secret, and whatever the installation's own execution defaults hold.
        policy = pod_policy or TrialPodPolicy()
        self.pod_policy = replace(
            policy, host_paths=policy.host_paths or allow_privileged_trials,
            store_secret=db_secret.name if db_secret is not None else None,
        ).widened_by(self.execution_defaults)
        self.metrics = metrics
        self.clock = clock
        self._states: dict[tuple[str, str], _SweepState] = {}
        self._states_lock = threading.Lock()
        self._grids: dict[tuple[str, str, str], tuple[str, _Expanded]] = {}
        self.passes = 0
        self._nodes_refused = False

    # --- entry points ----------------------------------------------------------------------
    def _state(self, namespace: str, name: str) -> _SweepState:
        with self._states_lock:
            return self._states.setdefault((namespace, name), _SweepState())

    def reconcile(self, namespace: str, name: str) -> PassResult | None:
        """One pass now (waits for a pass already running); None when the Sweep is gone."""
        state = self._state(namespace, name)
        with state.lock:
            state.dirty = False
            return self._pass(namespace, name)

    def kick(self, namespace: str, name: str) -> None:
        """Ask for a pass without waiting: runs it now, or makes the running one go again."""
        state = self._state(namespace, name)
        state.dirty = True
        while state.dirty:
            if not state.lock.acquire(blocking=False):
                return  # the pass in progress sees `dirty` and goes once more
            try:
                while state.dirty:
                    state.dirty = False
                    self._pass(namespace, name)
            finally:
                state.lock.release()

    def forget(self, namespace: str, name: str) -> None:
        with self._states_lock:
            self._states.pop((namespace, name), None)
            for key in [k for k in self._grids if k[:2] == (namespace, name)]:
                del self._grids[key]

    # --- one pass --------------------------------------------------------------------------
    def _pass(self, namespace: str, name: str) -> PassResult | None:
        started = time.monotonic()
        body = self.cluster.get_sweep(namespace, name)
        if body is None:
            return None
        try:
            result = self._reconcile_body(body)
        except Exception as error:
            if (isinstance(error, KubeError) and error.transient) or store.is_transient(error):
                raise  # the handler retries after an interval: nothing was decided
            result = self._failed_pass(body, error)
        if self.metrics is not None:
            elapsed = time.monotonic() - started
            self.metrics.reconcile_seconds.labels(name, namespace).observe(elapsed)
            for _ in result.launched:
                # A trial this pass launched became launchable at the latest when it began.
                self.metrics.launch_latency_seconds.labels(name, namespace).observe(elapsed)
        self.passes += 1
        return result

    def _grid(self, sweep: Sweep, uid: str) -> _Expanded:
        """The expanded grid, its trials by id and the trials predicted to run out of memory,
        cached per Sweep object and spec (resources may change): a pass over an unchanged
        Sweep expands and estimates nothing."""
        key = (sweep.namespace, sweep.name, uid)
        spec = sweep.spec.model_dump_json()
        cached = self._grids.get(key)
        if cached is None or cached[0] != spec:
            grid = expand(sweep)
            trials = {t.trial_id: t for t in grid.all_trials()}
            oom = bookkeeping.predicted_oom_ids(predicted_oom_fn(sweep.spec), trials.values())
            cached = self._grids[key] = (spec, _Expanded(grid, trials, oom))
            keep_out_of_collections(len(trials))
        return cached[1]

    def _reconcile_body(self, body: Mapping[str, Any]) -> PassResult:
        meta = body.get("metadata") or {}
        namespace, name, uid = meta.get("namespace") or "", meta["name"], meta.get("uid", "")
        generation = meta.get("generation")
        deleting = bool(meta.get("deletionTimestamp"))
        result = PassResult()
        try:
            sweep = sweep_from_body(body)
            refused = pod_policy_problems(sweep.spec.execution, self.pod_policy)
            if refused:
                raise SpecError(sweep.name, refused)
            config = checked_execution_config(sweep, self.execution_defaults)
            unshared = unshared_outputs(sweep, config)
            if unshared:
                raise SpecError(sweep.name, unshared)
        except SpecError as error:
            return self._invalid(body, error, result)
        expanded = self._grid(sweep, uid)
        grid, trials = expanded.grid, expanded.trials

        with self.sessions.begin() as session:
            store.upsert_sweep(session, sweep)
        rayjobs: dict[tuple[str, int], dict[str, Any]] = {}
        for rayjob in self.cluster.list_rayjobs(namespace, name):
            key = attempt_of(rayjob)
            job_name = rayjob["metadata"]["name"]
            if key is None or not owned_by(rayjob, uid) or key[0] not in trials:
                log.info("deleting RayJob %s/%s: not an attempt of this sweep", namespace,
                         job_name)
                if self.cluster.delete_rayjob(namespace, job_name):
                    result.deleted.append(job_name)
                continue
            rayjobs[key] = rayjob

        pods = self._sweep_pods(namespace, name)
        self._observe(body, sweep, config, trials, rayjobs, result)
        self._requeue_unschedulable(body, sweep, config, trials, rayjobs, pods, result)
        rows, observed = bookkeeping.observe(
            self.sessions, sweep, (), sweep_capacity(config), predicted=None,
            deleting=deleting,
        )
        # The OOM predictions were made once for this spec (`_grid`), not in every pass.
        observed = dataclasses.replace(observed, predicted_oom=expanded.predicted_oom)
        # What the cluster holds besides the active attempts (operator.capacity).
        active = frozenset(
            (r.trial_id, r.attempt) for r in rows if not TrialState(r.status).is_terminal
        )
        capacity, held = self._capacity(sweep, config, active, pods)
        observed = dataclasses.replace(
            observed, capacity=capacity, held=held,
            queued=frozenset(key for key, job in rayjobs.items() if queued(job)),
        )
        decided = plan(grid, sweep.spec, observed)
        result.plan = decided
        self._announce(body, rows, trials, rayjobs)
        self._act(body, sweep, config, decided, rayjobs, result)

        if deleting:
            # The finalizer's part: every RayJob of the sweep goes; the store keeps results.
            for rayjob in rayjobs.values():
                job_name = rayjob["metadata"]["name"]
                if job_name in result.deleted:
                    continue
                if self.cluster.delete_rayjob(namespace, job_name):
                    result.deleted.append(job_name)
            result.remaining_rayjobs = len(self.cluster.list_rayjobs(namespace, name))
        self._patch_status(body, sweep, decided, generation)
        return result

    def _invalid(
        self, body: Mapping[str, Any], error: SpecError, result: PassResult
    ) -> PassResult:
        meta = body["metadata"]
        # Status and event text may quote what the user wrote (a URL with a password).
        message = store.redact_secrets("; ".join(f"{path}: {msg}" for path, msg in error.problems))
        result.invalid = message
        old = body.get("status") or {}
        if old.get("reason") != "InvalidSpec" or old.get("message") != message:
            self.cluster.event(body, WARNING, "InvalidSpec", message)
            status = {
                "phase": SweepPhase.FAILED.value,
                "observedGeneration": meta.get("generation"),
                "reason": "InvalidSpec",
                "message": message,
            }
            status["conditions"] = merge_conditions(
                old.get("conditions"),
                [{"type": "Ready", "status": "False", "reason": "InvalidSpec",
                  "message": message},
                 {"type": "Progressing", "status": "False", "reason": "InvalidSpec",
                  "message": message}],
                generation=meta.get("generation"), now=self.clock(),
            )
            self.cluster.patch_sweep_status(meta.get("namespace") or "", meta["name"], status)
        return result

    # --- what the cluster holds (orchestrator.operator.capacity) ----------------------------
    def _sweep_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        try:
            return self.cluster.sweep_pods(namespace, name)
        except KubeError as error:
            if error.transient:
                raise
            log.warning("cannot read the pods of sweep %s/%s: %s", namespace, name, error)
            return []

    def _capacity(
        self,
        sweep: Sweep,
        config: ExecutionConfig,
        active: frozenset[tuple[str, int]],
        pods: list[dict[str, Any]],
    ) -> tuple[Capacity, Capacity]:
        """(the capacity the sweep may use, what is held outside its active attempts).

        `execution.capacity` set: that, less the GPUs of this sweep's finished trials whose
        RayClusters KubeRay still keeps (ttlSecondsAfterFinished). Unset: the allocatable
        GPUs of the nodes the sweep's pods fit, less what every other non-terminal pod
        requests and what is on nodes not usable now (NotReady, cordoned); unbounded when
        the nodes cannot be read (no RBAC for them) or no node the pods fit has a GPU (a
        node pool that scales from zero: `UNBOUNDED`). With `execution.queueName` and no
        capacity, unbounded too: Kueue's ClusterQueue quota decides, and `parallelism`
        bounds what Ladder hands to the queue."""
        if config.capacity is None and config.queue_name is None:
            pool = self._cluster_pool(sweep, config, active)
            if pool is not None and pool.total > 0:
                return (Capacity(gpus=pool.total, cpus=UNBOUNDED.cpus),
                        Capacity(gpus=pool.unavailable, cpus=0))
        held = held_gpus(pods, sweep.namespace, sweep.name, active)
        return sweep_capacity(config), Capacity(gpus=held, cpus=0)

    def _cluster_pool(
        self, sweep: Sweep, config: ExecutionConfig, active: frozenset[tuple[str, int]]
    ) -> GpuPool | None:
        try:
            nodes = self.cluster.list_nodes()
            pods = self.cluster.active_pods() if nodes else []
        except KubeError as error:
            if error.transient:
                raise
            if not self._nodes_refused:
                log.warning("cannot read nodes and pods to size the cluster (%s); sweeps "
                            "without execution.capacity are bounded by parallelism only",
                            error)
                self._nodes_refused = True
            return None
        return cluster_gpus(nodes, pods, sweep.namespace, sweep.name, active,
                            node_selector=config.node_selector, tolerations=config.tolerations)

    def _requeue_unschedulable(
        self,
        body: Mapping[str, Any],
        sweep: Sweep,
        config: ExecutionConfig,
        trials: Mapping[str, GridPoint],
        rayjobs: dict[tuple[str, int], dict[str, Any]],
        pods: list[dict[str, Any]],
        result: PassResult,
    ) -> None:
        """Requeue each live attempt one of whose pods the scheduler has refused for
        `execution.unschedulableTimeoutSeconds`: the RayJob goes first (as for a stall),
        then the attempt is recorded cancelled with the scheduler's message, so the lane
        runs the trial again as a new attempt, once the capacity is there (no failure)."""
        namespace, name = sweep.namespace, sweep.name
        by_attempt: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for pod in pods:
            key = own_attempt(pod, namespace, name)
            if key is not None:
                by_attempt.setdefault(key, []).append(pod)
        if not by_attempt:
            return
        with self.sessions() as session:
            live = {(r.trial_id, r.attempt) for r in store.attempts(session, namespace, name)
                    if not TrialState(r.status).is_terminal}
        for key in sorted(live & by_attempt.keys() & rayjobs.keys()):
            why = unschedulable_reason(by_attempt[key], self.clock(),
                                       config.unschedulable_timeout_seconds)
            if why is None or key[0] not in trials:
                continue
            job_name = rayjobs.pop(key)["metadata"]["name"]
            reason = f"requeued: {why}"
            log.warning("trial %s attempt %d (RayJob %s/%s): %s", key[0], key[1], namespace,
                        job_name, reason)
            if self.cluster.delete_rayjob(namespace, job_name):
                result.deleted.append(job_name)
            trial = trials[key[0]]
            self._settle(body, sweep, trial, key, TrialState.CANCELLED, None, reason, result)
            if result.settled[key] is TrialState.CANCELLED:
                self.cluster.event(body, WARNING, "TrialUnschedulable",
                                   f"Trial {_describe(trial)} attempt {key[1]} {reason} "
                                   f"(RayJob {job_name} deleted; it runs again when the "
                                   f"capacity is there)")

    def _failed_pass(self, body: Mapping[str, Any], error: Exception) -> PassResult:
        """A pass that raised (a bug, or a spec the model let through that the cluster or the
        store refuses): the Sweep says so in its conditions and an Event, once per message,
        and the controller carries on with the other Sweeps. The next pass tries again."""
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace") or "", meta.get("name") or ""
        text = " ".join(str(error).split())[:ERROR_MESSAGE_CHARS]
        message = store.redact_secrets(f"{type(error).__name__}: {text}")
        log.error("pass over sweep %s/%s failed: %s", namespace, name, message,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        result = PassResult(error=message)
        try:
            old = body.get("status") or {}
            if old.get("reason") != RECONCILE_ERROR or old.get("message") != message:
                self.cluster.event(body, WARNING, RECONCILE_ERROR, message)
                generation = meta.get("generation")
                status: dict[str, Any] = {"reason": RECONCILE_ERROR, "message": message}
                status["conditions"] = merge_conditions(
                    old.get("conditions"),
                    [{"type": "Ready", "status": "False", "reason": RECONCILE_ERROR,
                      "message": message},
                     {"type": "Progressing", "status": "False", "reason": RECONCILE_ERROR,
                      "message": message}],
                    generation=generation, now=self.clock(),
                )
                self.cluster.patch_sweep_status(namespace, name, status)
            if meta.get("deletionTimestamp"):
                # Deleting: the RayJobs go anyway (the store keeps the results).
                for rayjob in self.cluster.list_rayjobs(namespace, name):
                    self.cluster.delete_rayjob(namespace, rayjob["metadata"]["name"])
                result.remaining_rayjobs = len(self.cluster.list_rayjobs(namespace, name))
        except Exception as second:  # reporting must not turn into a crash loop either
            log.warning("cannot report the failed pass over sweep %s/%s: %s", namespace, name,
                        store.redact_secrets(str(second)))
        return result

    # --- observe ---------------------------------------------------------------------------
    def _spec(self, sweep: Sweep, config: ExecutionConfig, trial: GridPoint,
              attempt: int) -> AttemptSpec:
        output = trial_output_dir(config, sweep.name, trial.trial_id, attempt)
        return attempt_spec(sweep, trial, attempt=attempt, output_dir=output)

    def _observe(
        self,
        body: Mapping[str, Any],
        sweep: Sweep,
        config: ExecutionConfig,
        trials: Mapping[str, GridPoint],
        rayjobs: dict[tuple[str, int], dict[str, Any]],
        result: PassResult,
    ) -> None:
        namespace, name = sweep.namespace, sweep.name
        budget_set = sweep.spec.escalation.memory_budget_bytes is not None
        with self.sessions() as session:
            rows = {(r.trial_id, r.attempt): r for r in store.attempts(session, namespace, name)}

        # RayJobs the store does not know (it was wiped or replaced): adopt them.
        for key, rayjob in rayjobs.items():
            if key in rows:
                continue
            spec = decode_trial(rayjob) or self._spec(sweep, config, trials[key[0]], key[1])
            job_name = rayjob["metadata"]["name"]
            log.info("adopting RayJob %s/%s (no store row)", namespace, job_name)
            rows[key] = bookkeeping.record_adopted(self.sessions, spec, running_state(rayjob),
                                                   job_name, now=self.clock())

        for key, row in rows.items():
            if TrialState(row.status).is_terminal or key[0] not in trials:
                continue
            trial = trials[key[0]]
            rayjob = rayjobs.get(key)
            if rayjob is None:
                job_name = row.rayjob_name or rayjob_name(name, key[0], key[1])
                self._settle(body, sweep, trial, key, TrialState.CANCELLED, None,
                             GONE.format(name=job_name), result)
                if result.settled[key] is TrialState.CANCELLED:
                    self.cluster.event(body, WARNING, "RayJobLost",
                                       f"Trial {_describe(trial)} attempt {key[1]}: "
                                       f"{GONE.format(name=job_name)}; it will run again")
                continue
            outcome = outcome_from_rayjob(rayjob, budget_set=budget_set)
            if outcome is not None and outcome[0] in (TrialState.FAILED, TrialState.OOM):
                outcome = outcome_from_rayjob(
                    rayjob, self._pods(namespace, rayjob), budget_set=budget_set,
                    events=self._cluster_events(namespace, rayjob),
                )
            if outcome is None:
                live = running_state(rayjob)
                if live is TrialState.RUNNING and row.status == TrialState.PENDING:
                    row = bookkeeping.record_seen_running(
                        self.sessions, AttemptKey(namespace, name, *key))
                if row.status == TrialState.RUNNING:
                    self._stop_if_stalled(body, sweep, trial, row, rayjobs, config, result)
                continue
            state, kind, reason = outcome
            self._settle(body, sweep, trial, key, state, kind, reason, result)

    def _stop_if_stalled(
        self,
        body: Mapping[str, Any],
        sweep: Sweep,
        trial: GridPoint,
        row: store.AttemptRow,
        rayjobs: dict[tuple[str, int], dict[str, Any]],
        config: ExecutionConfig,
        result: PassResult,
    ) -> None:
        """Stop a running attempt with no progress for `execution.stallTimeoutSeconds`.

        The RayJob goes first: a controller that dies right after finds the attempt running
        without a RayJob and records it cancelled (then relaunches), so a hung job is never
        left behind an attempt already recorded as failed."""
        progress = [t for t in (row.started_at, row.updated_at) if t is not None]
        reason = stall_reason(max(progress, default=None), self.clock(),
                              config.stall_timeout_seconds)
        if reason is None:
            return
        key = (row.trial_id, row.attempt)
        job = rayjobs.pop(key)
        job_name = job["metadata"]["name"]
        log.warning("trial %s attempt %d (RayJob %s/%s): %s", row.trial_id, row.attempt,
                    sweep.namespace, job_name, reason)
        if self.cluster.delete_rayjob(sweep.namespace, job_name):
            result.deleted.append(job_name)
        self._settle(body, sweep, trial, key, TrialState.FAILED, None, reason, result)
        if result.settled[key] is TrialState.FAILED:
            self.cluster.event(body, WARNING, "TrialStalled",
                               f"Trial {_describe(trial)} attempt {row.attempt} stopped: "
                               f"{reason} (RayJob {job_name} deleted)")

    def _pods(self, namespace: str, rayjob: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The pods of the job's RayCluster."""
        return self._cluster_objects("pods", self.cluster.cluster_pods, namespace, rayjob)

    def _cluster_events(self, namespace: str, rayjob: Mapping[str, Any]) -> list[dict[str, Any]]:
        """KubeRay's Events on the job's RayCluster (an OOMKilled pod it deleted)."""
        return self._cluster_objects("events", self.cluster.cluster_events, namespace, rayjob)

    @staticmethod
    def _cluster_objects(
        what: str, read: Callable[[str, str], list[dict[str, Any]]], namespace: str,
        rayjob: Mapping[str, Any],
    ) -> list[dict[str, Any]]:
        """What `read` lists for the job's RayCluster; none when it has no cluster yet or the
        read fails (logged: the next pass reads again)."""
        cluster = cluster_name(rayjob)
        if not cluster:
            return []
        try:
            return read(namespace, cluster)
        except KubeError as error:
            log.warning("cannot read %s of RayCluster %s: %s", what, cluster, error)
            return []

    def _settle(
        self,
        body: Mapping[str, Any],
        sweep: Sweep,
        trial: GridPoint,
        key: tuple[str, int],
        state: TrialState,
        kind: OOMKind | None,
        reason: str,
        result: PassResult,
    ) -> None:
        """Record an outcome the cluster reports, unless the worker's result got there first."""
        # mark never overwrites a terminal row: a worker result stands.
        row = bookkeeping.mark(self.sessions, AttemptKey(sweep.namespace, sweep.name, *key),
                               state, oom_kind=kind, error=reason, finished_at=self.clock())
        result.settled[key] = TrialState(row.status)

    def _announce(
        self,
        body: Mapping[str, Any],
        rows: list[store.AttemptRow],
        trials: Mapping[str, GridPoint],
        rayjobs: Mapping[tuple[str, int], dict[str, Any]],
    ) -> None:
        """An Event for each attempt whose outcome is known and not yet announced; the
        RayJob's `ladder.dev/outcome` annotation remembers it, across restarts too."""
        namespace = body["metadata"].get("namespace") or ""
        for row in rows:
            key = (row.trial_id, row.attempt)
            rayjob = rayjobs.get(key)
            state = TrialState(row.status)
            if rayjob is None or not state.is_terminal or key[0] not in trials:
                continue
            annotations = rayjob["metadata"].get("annotations") or {}
            outcome = state.value + (f"/{OOMKind(row.oom_kind).value}" if row.oom_kind else "")
            if annotations.get(ANNOTATION_OUTCOME) == outcome:
                continue
            self._outcome_event(body, trials[key[0]], row.attempt, state, row.oom_kind,
                                row.best_eval_loss, row.error)
            self.cluster.annotate_rayjob(
                namespace, rayjob["metadata"]["name"], {ANNOTATION_OUTCOME: outcome}
            )

    def _outcome_event(
        self,
        obj: Mapping[str, Any],
        trial: GridPoint,
        attempt: int,
        state: TrialState,
        kind: OOMKind | None,
        loss: float | None,
        error: str | None,
    ) -> None:
        what = f"Trial {_describe(trial)} attempt {attempt}"
        if state is TrialState.OOM:
            kind_text = f" ({OOMKind(kind).value})" if kind else ""
            self.cluster.event(obj, WARNING, "TrialOOM", f"{what} ran out of memory{kind_text}")
        elif state is TrialState.FAILED:
            self.cluster.event(obj, WARNING, "TrialFailed", f"{what} failed: {error or '?'}")
        elif state is TrialState.SUCCEEDED:
            loss_text = f"; best eval loss {loss:.5g}" if loss is not None else ""
            self.cluster.event(obj, NORMAL, "TrialSucceeded", f"{what} succeeded{loss_text}")
        elif state is TrialState.CANCELLED:
            self.cluster.event(obj, WARNING, "TrialCancelled",
                               f"{what} was cancelled: {error or '?'}")

    # --- act -------------------------------------------------------------------------------
    def _act(
        self,
        body: Mapping[str, Any],
        sweep: Sweep,
        config: ExecutionConfig,
        decided: Plan,
        rayjobs: Mapping[tuple[str, int], dict[str, Any]],
        result: PassResult,
    ) -> None:
        namespace, name = sweep.namespace, sweep.name
        uid = body["metadata"].get("uid", "")
        for action in decided.actions:
            trial, attempt = action.trial, action.attempt
            if isinstance(action, CancelTrial):
                job = rayjobs.get((trial.trial_id, attempt))
                job_name = (job["metadata"]["name"] if job
                            else rayjob_name(name, trial.trial_id, attempt))
                if self.cluster.delete_rayjob(namespace, job_name):
                    result.deleted.append(job_name)
                self._mark(sweep, trial, attempt, TrialState.CANCELLED, None, action.reason)
                self.cluster.event(body, NORMAL, "TrialCancelled",
                                   f"Trial {_describe(trial)} attempt {attempt} cancelled: "
                                   f"{action.reason}")
            elif isinstance(action, RecordUnlaunched):
                bookkeeping.record_planned(
                    self.sessions, self._spec(sweep, config, trial, attempt), sweep.spec, trial,
                    action.state, action.oom_kind, action.reason, now=self.clock(),
                )
                if action.state is TrialState.OOM:
                    self.cluster.event(body, WARNING, "TrialOOM",
                                       f"Trial {_describe(trial)} not launched: {action.reason}")
                elif action.state is TrialState.FAILED:
                    self.cluster.event(body, WARNING, "TrialUnschedulable",
                                       f"Trial {_describe(trial)}: {action.reason}")
            elif isinstance(action, LaunchTrial):
                self._launch(body, sweep, config, trial, attempt, uid, result)

    def _launch(
        self,
        body: Mapping[str, Any],
        sweep: Sweep,
        config: ExecutionConfig,
        trial: GridPoint,
        attempt: int,
        uid: str,
        result: PassResult,
    ) -> None:
        spec = self._spec(sweep, config, trial, attempt)
        manifest = rayjob_manifest(
            sweep, trial, spec, owner_uid=uid, db_url_secret=self.db_secret, config=config,
            policy=self.pod_policy,
        )
        job_name = manifest["metadata"]["name"]
        # The store first: a controller that dies after this line finds the attempt, sees no
        # RayJob and records it as cancelled (then relaunches); never two RayJobs for one.
        bookkeeping.record_launch(self.sessions, spec, sweep.spec, trial, now=self.clock(),
                                  job_name=job_name)
        try:
            created = self.cluster.create_rayjob(manifest)
        except KubeError as error:
            if error.transient:
                raise
            reason = f"the API server refused RayJob {job_name}: {error}"
            self._mark(sweep, trial, attempt, TrialState.FAILED, None, reason)
            self.cluster.event(body, WARNING, "LaunchFailed", f"Trial {_describe(trial)}: "
                               f"{reason}")
            return
        result.launched.append(job_name)
        if created:
            resources = trial.resources
            self.cluster.event(
                body, NORMAL, "TrialLaunched",
                f"Trial {_describe(trial)} attempt {attempt} launched as RayJob {job_name} "
                f"({resources.workers} workers x {resources.gpus_per_worker} GPUs)",
            )

    def _mark(
        self,
        sweep: Sweep,
        trial: GridPoint,
        attempt: int,
        state: TrialState,
        kind: OOMKind | None,
        reason: str | None,
    ) -> None:
        bookkeeping.mark(self.sessions,
                         AttemptKey(sweep.namespace, sweep.name, trial.trial_id, attempt),
                         state, oom_kind=kind, error=reason, finished_at=self.clock())

    # --- status ----------------------------------------------------------------------------
    def _patch_status(
        self,
        body: Mapping[str, Any],
        sweep: Sweep,
        decided: Plan,
        generation: int | None,
    ) -> None:
        old = dict(body.get("status") or {})
        new = status_dict(decided.status, observed_generation=generation)
        new["conditions"] = merge_conditions(
            old.get("conditions"),
            desired_conditions(decided.status, suspended=sweep.spec.suspend),
            generation=generation,
            now=self.clock(),
        )
        self._lane_events(body, old, new)
        if _without_nulls({k: old.get(k) for k in new}) != _without_nulls(new):
            self.cluster.patch_sweep_status(sweep.namespace, sweep.name, new)

    def _lane_events(
        self, body: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]
    ) -> None:
        before = {lane.get("name"): lane for lane in old.get("lanes") or []}
        for lane in new.get("lanes") or []:
            previous = before.get(lane["name"]) or {}
            if lane["state"] == previous.get("state"):
                continue
            if lane["state"] == LaneState.CAPPED.value:
                kind = f" ({lane['oomKind']})" if lane.get("oomKind") else ""
                self.cluster.event(
                    body, NORMAL, "LaneCapped",
                    f"Lane {lane['name']} reached its ceiling: {lane.get('ceiling') or 'none'} "
                    f"(the largest model that fitted); {lane.get('stoppedAt')} ran out of "
                    f"memory{kind}",
                )
            elif lane["state"] == LaneState.COMPLETED.value:
                self.cluster.event(body, NORMAL, "LaneCompleted",
                                   f"Lane {lane['name']}: every model of the ladder fitted")
            elif lane["state"] == LaneState.FAILED.value:
                self.cluster.event(body, WARNING, "LaneFailed",
                                   f"Lane {lane['name']} failed at {lane.get('stoppedAt')}")
        phase = new.get("phase")
        if phase != old.get("phase") and phase in (
            SweepPhase.SUCCEEDED.value, SweepPhase.FAILED.value
        ):
            kind = NORMAL if phase == SweepPhase.SUCCEEDED.value else WARNING
            self.cluster.event(body, kind, f"Sweep{phase}", str(new.get("message", "")))
