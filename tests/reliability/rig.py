"""The pieces of a fault-injection run, and the invariants every run must end with.

A `Rig` is one namespace on the real local kube-apiserver with the Sweep CRD and KubeRay's
CRDs, a store (SQLite file or a real PostgreSQL database), the Secret that gives trial pods
LADDER_DB_URL, the KubeRay STAND-IN in "subprocess" mode (it runs each RayJob's entrypoint
as a process) and the real `ladder controller` in subprocesses. Each RayJob's entrypoint
runs `tests/reliability/fast_worker.py` (a FAST STAND-IN for training: see there) through
`execution.python`, so a sweep of 6 trials takes seconds.

`assert_sweep_intact` is the definition of "nothing lost, nothing duplicated".
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import store
from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.operator.kube import Kube
from tests.k8s.kuberay_standin import KubeRayStandIn
from tests.k8s.operator_harness import ControllerProcess, dump, free_port, wait_for
from tests.reliability.fast_worker import write_shim

if TYPE_CHECKING:
    from tests.k8s.conftest import ControlPlane

SMALL, MEDIUM, LARGE = "ladder/t5-tiny-s", "ladder/t5-tiny-m", "ladder/t5-tiny-l"
EPOCHS = 2
# Two lanes (full, lora) of three models. The fast stand-in succeeds on tiny-s and tiny-m and
# runs out of its memory budget on tiny-l: both lanes climb two rungs and cap, ceiling tiny-m.
SWEEP = """
apiVersion: ladder.dev/v1alpha1
kind: Sweep
metadata: {name: NAME}
spec:
  ladder: [ladder/t5-tiny-s, ladder/t5-tiny-m, ladder/t5-tiny-l]
  methods: [full, lora]
  adapters: [{rank: 8, alphas: [16]}]
  training: {epochs: 2, precision: fp32, init: random}
  resources: {workers: 1, gpusPerWorker: 0}
  escalation: {onOOM: stop-lane, retries: 1}
  parallelism: 2
  execution: EXECUTION
"""


@dataclass
class Rig:
    """One namespace's worth of a fault-injection run (see the module docstring)."""

    cp: ControlPlane
    kube: Kube
    namespace: str
    db_url: str
    tmp: Path
    standin: KubeRayStandIn | None = None
    controllers: list[ControllerProcess] = field(default_factory=list)

    @classmethod
    def create(cls, cp: ControlPlane, kube: Kube, db_url: str, tmp: Path) -> Rig:
        namespace = cp.create_namespace("ladder-rel")
        kube.core.create_namespaced_secret(namespace, {
            "metadata": {"name": "ladder-db"},
            "data": {"url": base64.b64encode(db_url.encode()).decode()},
        })
        return cls(cp=cp, kube=kube, namespace=namespace, db_url=db_url, tmp=tmp)

    # --- the moving parts ----------------------------------------------------------------------
    def start_standin(self) -> KubeRayStandIn:
        self.standin = KubeRayStandIn(self.kube.api_client, self.namespace, mode="subprocess",
                                      poll_interval=0.2).start()
        return self.standin

    def controller(self, *, name: str = "controller", peering: str | None = None,
                   env: dict[str, str] | None = None, start: bool = True) -> ControllerProcess:
        process = ControllerProcess(
            kubeconfig=self.cp.kubeconfig, namespace=self.namespace, db_url=self.db_url,
            log_dir=self.tmp / "logs", liveness=f"http://127.0.0.1:{free_port()}/healthz",
            env=env, peering=peering, name=name,
        )
        self.controllers.append(process)
        if start:
            process.start()
        return process

    def close(self) -> None:
        for process in self.controllers:
            process.stop()
        if self.standin is not None:
            self.standin.stop()

    def sweep_text(self, name: str, *, epoch_seconds: float = 0.3, execution: dict[str, Any]
                   | None = None, text: str = SWEEP) -> str:
        shim = write_shim(self.tmp / "fast-worker")
        config: dict[str, Any] = {
            "outputDir": str(self.tmp / "runs"),
            "python": str(shim),
            "runtimeEnv": {"env_vars": {
                "LADDER_FAST_EPOCHS": str(EPOCHS),
                "LADDER_FAST_EPOCH_SECONDS": str(epoch_seconds),
                "LADDER_FAST_OOM_MODELS": LARGE,
            }},
            **(execution or {}),
        }
        return text.replace("NAME", name).replace("EXECUTION", json.dumps(config))

    def submit(self, name: str, **kwargs: Any) -> None:
        self.cp.kubectl_ok("-n", self.namespace, "apply", "-f", "-",
                           input=self.sweep_text(name, **kwargs))

    # --- what there is to see ----------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any]:
        body = self.kube.get_sweep(self.namespace, name) or {}
        return body.get("status") or {}

    def rayjobs(self, name: str) -> list[dict[str, Any]]:
        return self.kube.list_rayjobs(self.namespace, name)

    def rows(self, name: str) -> list[store.AttemptRow]:
        with store.open_store(self.db_url)() as session:
            return store.attempts(session, self.namespace, name, with_epochs=True)

    def diagnose(self, name: str) -> str:
        parts = [f"RayJobs: {dump([(j['metadata']['name'], (j.get('status') or {}).get('jobStatus')) for j in self.rayjobs(name)])}",  # noqa: E501
                 f"status: {dump(self.status(name))}"]
        try:
            parts.append("rows: " + dump([(r.model, r.lane, r.attempt, r.status, r.error)
                                          for r in self.rows(name)]))
        except Exception as error:  # the store may be the fault under test
            parts.append(f"rows: unreadable ({error})")
        if self.standin is not None:
            parts.append(f"stand-in seen {self.standin.seen}, errors {self.standin.errors}")
        parts += [process.logs() for process in self.controllers]
        return "\n".join(parts)

    def wait_finished(self, name: str, *, timeout: float = 180) -> dict[str, Any]:
        """The Sweep's final status, once its phase is final and the stand-in has seen every
        entrypoint exit (the status turns final on the worker's result in the store, a
        moment before its process ends and its RayJob is Complete)."""
        status = wait_for(
            f"sweep {name} to finish",
            lambda: (s := self.status(name)).get("phase") in ("Succeeded", "Failed") and s,
            timeout=timeout, interval=0.5, diagnose=lambda: self.diagnose(name),
        )
        if self.standin is not None:
            standin = self.standin
            wait_for("every trial process to end and its RayJob to say so", lambda: all(
                job.done for job in list(standin.jobs.values())) and all(
                (j.get("status") or {}).get("jobDeploymentStatus") in ("Complete", "Failed")
                for j in self.rayjobs(name)), timeout=60, diagnose=lambda: self.diagnose(name))
        return status


def assert_sweep_intact(rig: Rig, name: str) -> None:
    """The run of `SWEEP` ended exactly as a run without faults would have, and nothing is
    duplicated, orphaned or lost:

    - the status: Succeeded, 4 trials succeeded, 2 out of memory, both lanes capped at
      tiny-m, the best loss the stand-in reported;
    - every RayJob was created once (the stand-in never saw a name twice) and is one store
      attempt, finished; no RayJob is left running (the stand-in runs none);
    - every trial has exactly one attempt that ran (succeeded or oom) and it holds the
      worker's own result (its loss and every epoch row); an extra attempt is allowed only
      as `cancelled` for a RayJob that was never created (the controller died between
      recording the attempt and creating it), never as a failure.
    """
    detail = rig.diagnose(name)
    status = rig.status(name)
    assert status.get("phase") == "Succeeded", detail
    trials = status["trials"]
    assert (trials["total"], trials["done"], trials["succeeded"], trials["oom"]) == (
        6, 6, 4, 2), detail
    assert trials["failed"] == 0 and trials["running"] == 0 and trials["pending"] == 0, detail
    lanes = status["lanes"]
    assert len(lanes) == 2, detail
    for lane in lanes:
        assert (lane["state"], lane.get("ceiling"), lane.get("stoppedAt"),
                lane.get("oomKind")) == ("capped", MEDIUM, LARGE, "budget"), detail
    assert status["best"]["model"] == MEDIUM, detail

    assert rig.standin is not None
    seen = rig.standin.seen
    duplicated = [n for n, count in Counter(seen).items() if count > 1]
    assert not duplicated, f"RayJobs created more than once: {duplicated}\n{detail}"
    jobs = {j["metadata"]["name"]: j for j in rig.rayjobs(name)}
    assert set(jobs) == set(seen), detail
    for job_name, job in jobs.items():
        deployment = (job.get("status") or {}).get("jobDeploymentStatus")
        assert deployment in ("Complete", "Failed"), f"{job_name} is {deployment}\n{detail}"
    assert all(job.done for job in rig.standin.jobs.values()), detail

    rows = rig.rows(name)
    keys = [(r.trial_id, r.attempt) for r in rows]
    assert len(keys) == len(set(keys)), detail
    ran: dict[str, list[store.AttemptRow]] = {}
    for row in rows:
        if row.status == TrialState.CANCELLED:
            assert row.rayjob_name not in seen, f"a RayJob that ran was cancelled\n{detail}"
            assert "gone" in (row.error or ""), detail
            continue
        ran.setdefault(row.trial_id, []).append(row)
    assert len(ran) == 6 and all(len(v) == 1 for v in ran.values()), detail
    assert sorted(r.rayjob_name or "" for v in ran.values() for r in v) == sorted(seen), detail
    for (row,) in ran.values():
        if row.model == LARGE:
            assert (row.status, row.oom_kind) == (TrialState.OOM, OOMKind.BUDGET), detail
            assert "MemoryBudgetExceeded" in (row.error or ""), detail
            continue
        assert row.status == TrialState.SUCCEEDED, detail
        # The worker's own result, not an outcome read off the RayJob: loss and epochs.
        want = round(1.0 / (EPOCHS + row.model_index + 1), 6)
        assert row.best_eval_loss == want, detail
        assert [e.epoch for e in row.epochs] == list(range(1, EPOCHS + 1)), detail
        assert [e.eval_loss for e in row.epochs] == [
            round(1.0 / (epoch + row.model_index + 1), 6) for epoch in range(1, EPOCHS + 1)
        ], detail


__all__ = ["EPOCHS", "LARGE", "MEDIUM", "SMALL", "SWEEP", "Rig", "assert_sweep_intact"]
