"""The Ladder controller (`ladder controller`, Kopf) against the real local kube-apiserver.

KubeRay itself does not run here: `kuberay_standin.KubeRayStandIn` (a STAND-IN, named as
such) plays its part, writing RayJob statuses with the real KubeRay v1.6.2 fields. Most tests
use it without running anything (RayJobs stay Running, or end the way a behaviour says); the
end-to-end test runs every RayJob's entrypoint, the real worker, on a local Ray runtime.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from orchestrator import store
from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.operator.kube import Kube, load_config
from tests.k8s.kuberay_standin import Behaviour, KubeRayStandIn
from tests.k8s.operator_harness import REPO_ROOT, ControllerProcess, dump, free_port, wait_for

if TYPE_CHECKING:
    from tests.k8s.conftest import ControlPlane

pytestmark = pytest.mark.k8s

CUDA_OOM = (
    "Job entrypoint command failed with exit code 3, last available logs (truncated to "
    "20,000 chars):\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. "
    "GPU 0 has a total capacity of 79.15 GiB of which 3.12 MiB is free."
)
SMALL, MEDIUM, LARGE = "ladder/t5-tiny-s", "ladder/t5-tiny-m", "ladder/t5-tiny-l"
# Two lanes (full, lora) of three models; nothing in it runs unless the stand-in runs it.
SWEEP = """
apiVersion: ladder.dev/v1alpha1
kind: Sweep
metadata: {name: NAME}
spec:
  ladder: [ladder/t5-tiny-s, ladder/t5-tiny-m, ladder/t5-tiny-l]
  methods: [full, lora]
  adapters: [{rank: 8, alphas: [16]}]
  training: {epochs: 1, precision: fp32, init: random}
  resources: {workers: 1, gpusPerWorker: 0}
  escalation: {onOOM: stop-lane, retries: 1}
  parallelism: 2
  execution: {outputDir: OUTPUT}
"""


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_crd(control_plane: ControlPlane) -> list[str]:
    return control_plane.install_crds(REPO_ROOT / "k8s" / "crd")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ladder.db'}"


@pytest.fixture
def kube(control_plane: ControlPlane) -> Kube:
    return Kube(load_config(str(control_plane.kubeconfig)))


@pytest.fixture
def namespace(
    control_plane: ControlPlane, kuberay_crds: list[str], sweep_crd: list[str], db_url: str,
    kube: Kube,
) -> str:
    """A fresh namespace with the Secret that gives trial pods LADDER_DB_URL."""
    name = control_plane.create_namespace("ladder-op")
    kube.core.create_namespaced_secret(name, {
        "metadata": {"name": "ladder-db"},
        "data": {"url": base64.b64encode(db_url.encode()).decode()},
    })
    return name


@pytest.fixture
def controller(control_plane: ControlPlane, namespace: str, db_url: str,
               tmp_path: Path) -> Iterator[ControllerProcess]:
    process = ControllerProcess(kubeconfig=control_plane.kubeconfig, namespace=namespace,
                                db_url=db_url, log_dir=tmp_path / "logs",
                                liveness=f"http://127.0.0.1:{free_port()}/healthz")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def standin(kube: Kube, namespace: str) -> Iterator[KubeRayStandIn]:
    """The KubeRay STAND-IN, running nothing: RayJobs stay Running unless a behaviour ends
    them."""
    with KubeRayStandIn(kube.api_client, namespace, mode="none", poll_interval=0.2) as s:
        yield s


# --- helpers -----------------------------------------------------------------------------




def submit(cp: ControlPlane, namespace: str, name: str, tmp_path: Path,
           text: str = SWEEP) -> None:
    body = text.replace("NAME", name).replace("OUTPUT", str(tmp_path / "runs"))
    cp.kubectl_ok("-n", namespace, "apply", "-f", "-", input=body)


def rayjobs(kube: Kube, namespace: str, sweep: str) -> list[dict[str, Any]]:
    return kube.list_rayjobs(namespace, sweep)


def names(kube: Kube, namespace: str, sweep: str) -> list[str]:
    return sorted(j["metadata"]["name"] for j in rayjobs(kube, namespace, sweep))


def sweep_status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    body = kube.get_sweep(namespace, name) or {}
    return body.get("status") or {}


def attempts(db_url: str, namespace: str, sweep: str) -> list[store.AttemptRow]:
    with store.open_store(db_url)() as session:
        return store.attempts(session, namespace, sweep)


def events(kube: Kube, namespace: str) -> list[tuple[str, str]]:
    items = kube.core.list_namespaced_event(namespace).items
    return [(e.reason, e.message) for e in items]


def diagnose(kube: Kube, namespace: str, sweep: str, controller: ControllerProcess,
             standin: KubeRayStandIn | None = None) -> Any:
    def text() -> str:
        parts = [
            "RayJobs: " + dump([(j["metadata"]["name"], j.get("status"))
                                for j in rayjobs(kube, namespace, sweep)]),
            "status: " + dump(sweep_status(kube, namespace, sweep)),
            controller.logs(),
        ]
        if standin is not None:
            parts.append(f"stand-in errors: {standin.errors}")
        return "\n".join(parts)

    return text


def by_model(jobs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        out.setdefault(job["metadata"]["annotations"]["ladder.dev/model"], []).append(job)
    return out


# --- tests -------------------------------------------------------------------------------


def test_launches_rayjobs_with_labels_owners_and_status(
    control_plane: ControlPlane, namespace: str, controller: ControllerProcess,
    standin: KubeRayStandIn, kube: Kube, tmp_path: Path, db_url: str,
) -> None:
    submit(control_plane, namespace, "labels", tmp_path)
    why = diagnose(kube, namespace, "labels", controller, standin)
    jobs = wait_for("two RayJobs", lambda: len(rayjobs(kube, namespace, "labels")) == 2
                    and rayjobs(kube, namespace, "labels"), diagnose=why)
    sweep = kube.get_sweep(namespace, "labels")
    assert sweep is not None
    assert "ladder.dev/finalizer" in sweep["metadata"]["finalizers"]
    for job in jobs:
        meta = job["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "ladder"
        assert meta["labels"]["ladder.dev/sweep"] == "labels"
        assert meta["labels"]["ladder.dev/attempt"] == "1"
        assert meta["annotations"]["ladder.dev/model"] == SMALL
        (owner,) = meta["ownerReferences"]
        assert owner["uid"] == sweep["metadata"]["uid"] and owner["controller"] is True
        worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
        assert worker["replicas"] == 1
        env = worker["template"]["spec"]["containers"][0]["env"]
        assert {"name": "LADDER_DB_URL", "valueFrom": {
            "secretKeyRef": {"name": "ladder-db", "key": "url"}}} in env
    lanes = {j["metadata"]["labels"]["ladder.dev/lane"] for j in jobs}
    assert lanes == {"full-dss0.5-seed0", "lora-r8-a16-dss0.5-seed0"}

    status = wait_for("status Running with 2 running",
                      lambda: (s := sweep_status(kube, namespace, "labels")).get("trials", {})
                      .get("running") == 2 and s, diagnose=why)
    assert status["phase"] == "Running" and status["observedGeneration"] == 1
    assert status["trials"]["total"] == 6
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Progressing"]["status"] == "True"
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Suspended"]["status"] == "False"
    table = control_plane.kubectl_ok("-n", namespace, "get", "sw", "labels")
    assert "Running" in table
    rows = attempts(db_url, namespace, "labels")
    assert sorted(r.rayjob_name for r in rows) == names(kube, namespace, "labels")
    assert all(r.status == TrialState.RUNNING for r in rows)
    assert [r for r, _ in events(kube, namespace)].count("TrialLaunched") == 2
    # The liveness endpoint answers, with the number of passes so far.
    with urllib.request.urlopen(controller.liveness, timeout=10) as response:
        assert response.status == 200
        assert json.loads(response.read())["passes"] > 0


def test_sigkill_and_restart_make_no_duplicate_rayjobs(
    control_plane: ControlPlane, namespace: str, controller: ControllerProcess,
    standin: KubeRayStandIn, kube: Kube, tmp_path: Path, db_url: str,
) -> None:
    submit(control_plane, namespace, "restart", tmp_path)
    why = diagnose(kube, namespace, "restart", controller, standin)
    first = wait_for("two RayJobs", lambda: len(names(kube, namespace, "restart")) == 2
                     and names(kube, namespace, "restart"), diagnose=why)
    controller.kill()
    controller.start()
    wait_for("the restarted controller to be up",
             lambda: "Ladder controller" in controller.log_path.read_text(errors="replace"),
             diagnose=why)
    # Several reconcile intervals (1 s) later: still the same two RayJobs, nothing recreated.
    for _ in range(8):
        assert names(kube, namespace, "restart") == first
        time.sleep(0.5)
    assert controller.alive(), why()
    assert sorted(standin.seen) == first  # each picked up once (in whatever order it polled)
    rows = attempts(db_url, namespace, "restart")
    assert sorted((r.rayjob_name, r.attempt) for r in rows) == [(n, 1) for n in first]


def test_suspend_and_resume(
    control_plane: ControlPlane, namespace: str, controller: ControllerProcess,
    standin: KubeRayStandIn, kube: Kube, tmp_path: Path, db_url: str,
) -> None:
    submit(control_plane, namespace, "pause", tmp_path)
    why = diagnose(kube, namespace, "pause", controller, standin)
    first = wait_for("two RayJobs", lambda: len(names(kube, namespace, "pause")) == 2
                     and names(kube, namespace, "pause"), diagnose=why)
    control_plane.kubectl_ok("-n", namespace, "patch", "sw", "pause", "--type=merge",
                             "-p", '{"spec": {"suspend": true}}')
    wait_for("RayJobs deleted", lambda: names(kube, namespace, "pause") == [], diagnose=why)
    status = wait_for("phase Suspended",
                      lambda: (s := sweep_status(kube, namespace, "pause")).get("phase")
                      == "Suspended" and s.get("observedGeneration") == 2 and s, diagnose=why)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Suspended"]["status"] == "True"
    assert conditions["Progressing"]["status"] == "False"
    assert {r.status for r in attempts(db_url, namespace, "pause")} == {TrialState.CANCELLED}

    control_plane.kubectl_ok("-n", namespace, "patch", "sw", "pause", "--type=merge",
                             "-p", '{"spec": {"suspend": false}}')
    second = wait_for("RayJobs again", lambda: len(names(kube, namespace, "pause")) == 2
                      and names(kube, namespace, "pause"), diagnose=why)
    assert [n[:-2] for n in second] == [n[:-2] for n in first]
    assert all(n.endswith("-2") for n in second)
    wait_for("phase Running", lambda: sweep_status(kube, namespace, "pause").get("phase")
             == "Running", diagnose=why)


def test_parallelism_changes_live(
    control_plane: ControlPlane, namespace: str, controller: ControllerProcess,
    standin: KubeRayStandIn, kube: Kube, tmp_path: Path,
) -> None:
    submit(control_plane, namespace, "par", tmp_path,
           SWEEP.replace("parallelism: 2", "parallelism: 1"))
    why = diagnose(kube, namespace, "par", controller, standin)
    wait_for("one RayJob", lambda: len(names(kube, namespace, "par")) == 1, diagnose=why)
    control_plane.kubectl_ok("-n", namespace, "patch", "sw", "par", "--type=merge",
                             "-p", '{"spec": {"parallelism": 2}}')
    wait_for("two RayJobs", lambda: len(names(kube, namespace, "par")) == 2, diagnose=why)


def test_deletion_removes_rayjobs_and_keeps_results(
    control_plane: ControlPlane, namespace: str, controller: ControllerProcess,
    standin: KubeRayStandIn, kube: Kube, tmp_path: Path, db_url: str,
) -> None:
    submit(control_plane, namespace, "gone", tmp_path)
    why = diagnose(kube, namespace, "gone", controller, standin)
    wait_for("two RayJobs", lambda: len(names(kube, namespace, "gone")) == 2, diagnose=why)
    control_plane.kubectl_ok("-n", namespace, "delete", "sw", "gone", "--wait=false")
    wait_for("the Sweep to go (finalizer removed)",
             lambda: kube.get_sweep(namespace, "gone") is None, diagnose=why)
    assert names(kube, namespace, "gone") == []
    rows = attempts(db_url, namespace, "gone")
    assert len(rows) == 2 and {r.status for r in rows} == {TrialState.CANCELLED}


def test_rayjob_deleted_behind_the_controllers_back_runs_again(
    control_plane: ControlPlane, namespace: str, controller: ControllerProcess,
    standin: KubeRayStandIn, kube: Kube, tmp_path: Path, db_url: str,
) -> None:
    submit(control_plane, namespace, "lost", tmp_path,
           SWEEP.replace("methods: [full, lora]", "methods: [full]"))
    why = diagnose(kube, namespace, "lost", controller, standin)
    (first,) = wait_for("a RayJob", lambda: names(kube, namespace, "lost"), diagnose=why)
    control_plane.kubectl_ok("-n", namespace, "delete", "rayjob", first)
    (second,) = wait_for("attempt 2", lambda: [n for n in names(kube, namespace, "lost")
                                               if n.endswith("-2")], diagnose=why)
    assert second == first[:-2] + "-2"
    rows = {r.attempt: r for r in attempts(db_url, namespace, "lost")}
    assert rows[1].status == TrialState.CANCELLED and "gone" in (rows[1].error or "")
    assert "RayJobLost" in [r for r, _ in events(kube, namespace)]


def test_cuda_oom_in_the_rayjob_message_caps_the_lane(
    control_plane: ControlPlane, namespace: str, controller: ControllerProcess,
    standin: KubeRayStandIn, kube: Kube, tmp_path: Path, db_url: str,
) -> None:
    standin.behave(KubeRayStandIn.for_model(SMALL), Behaviour(fail_message=CUDA_OOM))
    submit(control_plane, namespace, "cuda", tmp_path,
           SWEEP.replace("methods: [full, lora]", "methods: [full]"))
    why = diagnose(kube, namespace, "cuda", controller, standin)
    status = wait_for("the sweep to finish",
                      lambda: (s := sweep_status(kube, namespace, "cuda")).get("phase")
                      == "Failed" and s, diagnose=why)
    (lane,) = status["lanes"]
    assert lane["state"] == "capped" and lane["oomKind"] == "gpu"
    assert lane["stoppedAt"] == SMALL and lane.get("ceiling") is None
    assert status["trials"]["oom"] == 1 and status["trials"]["skipped"] == 2
    rows = {r.model: r for r in attempts(db_url, namespace, "cuda")}
    assert (rows[SMALL].status, rows[SMALL].oom_kind) == (TrialState.OOM, OOMKind.GPU)
    assert "CUDA out of memory" in (rows[SMALL].error or "")
    assert rows[MEDIUM].status == TrialState.SKIPPED
    reasons = [r for r, _ in events(kube, namespace)]
    assert "TrialOOM" in reasons and "LaneCapped" in reasons
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Progressing"]["status"] == "False"


def test_oomkilled_pod_is_a_host_oom(
    control_plane: ControlPlane, namespace: str, controller: ControllerProcess,
    standin: KubeRayStandIn, kube: Kube, tmp_path: Path, db_url: str,
) -> None:
    standin.behave(KubeRayStandIn.for_model(SMALL), Behaviour(pod_oom=True))
    submit(control_plane, namespace, "host", tmp_path,
           SWEEP.replace("methods: [full, lora]", "methods: [full]"))
    why = diagnose(kube, namespace, "host", controller, standin)
    status = wait_for("the lane capped",
                      lambda: (s := sweep_status(kube, namespace, "host")).get("lanes")
                      and s["lanes"][0]["state"] == "capped" and s, diagnose=why)
    assert status["lanes"][0]["oomKind"] == "host"
    rows = {r.model: r for r in attempts(db_url, namespace, "host")}
    assert (rows[SMALL].status, rows[SMALL].oom_kind) == (TrialState.OOM, OOMKind.HOST)
    assert "OOMKilled" in (rows[SMALL].error or "")


# --- end to end: real training through the stand-in's local Ray runtime ---------------------


# The budget of the end-to-end sweep: measured on CPU, the LoRA probe step grows the worker by
# about 0.2 GiB on t5-tiny-s and 1.8 GiB on t5-tiny-l, so tiny-s trains and tiny-l runs out.
E2E_BUDGET = "800Mi"


def quickstart_one_lane(tmp_path: Path) -> str:
    """examples/quickstart.yaml, cut to one lane (LoRA r8/a16), the smallest and largest tiny
    models and one epoch, so the whole climb takes minutes on two cores."""
    document = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
    spec = document["spec"]
    spec["ladder"] = [SMALL, LARGE]
    spec["methods"] = ["lora"]
    spec["adapters"] = spec["adapters"][:1]
    spec["training"]["epochs"] = 1
    spec["escalation"]["memoryBudget"] = E2E_BUDGET
    spec["execution"] = {"outputDir": str(tmp_path / "runs")}
    document["metadata"] = {"name": "quickstart"}
    return yaml.safe_dump(document)


@pytest.mark.integration
@pytest.mark.timeout(1500)
def test_quickstart_end_to_end(
    control_plane: ControlPlane, namespace: str, controller: ControllerProcess,
    kube: Kube, tmp_path: Path, db_url: str,
) -> None:
    text = quickstart_one_lane(tmp_path)
    with KubeRayStandIn(kube.api_client, namespace, mode="ray") as standin:
        control_plane.kubectl_ok("-n", namespace, "apply", "-f", "-", input=text)
        why = diagnose(kube, namespace, "quickstart", controller, standin)
        status = wait_for(
            "the sweep to finish",
            lambda: (s := sweep_status(kube, namespace, "quickstart")).get("phase")
            in ("Succeeded", "Failed") and s,
            timeout=1200, interval=2, diagnose=why,
        )
        assert standin.errors == []
    jobs = rayjobs(kube, namespace, "quickstart")
    rows = attempts(db_url, namespace, "quickstart")
    detail = why() + "\nrows: " + dump([(r.model, r.attempt, r.status, r.oom_kind, r.error)
                                        for r in rows])
    # Every RayJob is one store attempt, labelled and owned; none was created twice.
    assert sorted(standin.seen) == sorted(j["metadata"]["name"] for j in jobs), detail
    assert sorted(r.rayjob_name for r in rows if r.rayjob_name) == sorted(standin.seen)
    for job in jobs:
        assert job["metadata"]["labels"]["ladder.dev/lane"] == "lora-r8-a16-dss0.5-seed0"
        assert job["metadata"]["ownerReferences"][0]["kind"] == "Sweep"
    # The ladder climbed: tiny-s really trained, tiny-l ran out of its budget, and it stopped.
    (lane,) = status["lanes"]
    assert lane["state"] == "capped" and lane["oomKind"] == "budget", detail
    assert lane["ceiling"] == SMALL and lane["stoppedAt"] == LARGE, detail
    latest = {r.model: r for r in rows}  # attempts come in order: the last one wins
    small, large = latest[SMALL], latest[LARGE]
    assert small.status == TrialState.SUCCEEDED, detail
    assert small.best_eval_loss is not None and small.epochs_completed == 1, detail
    assert small.samples_per_second is not None and small.samples_per_second > 0
    assert small.wall_seconds is not None and small.peak_host_memory_bytes
    assert (large.status, large.oom_kind) == (TrialState.OOM, OOMKind.BUDGET), detail
    assert "MemoryBudgetExceeded" in (large.error or "")
    with store.open_store(db_url)() as session:
        assert store.epochs_of(session, small.id), "per-epoch rows in the store"
    # What `kubectl get sw` shows: counts and the best loss.
    assert status["phase"] == "Succeeded"
    shown = json.loads(control_plane.kubectl_ok(
        "-n", namespace, "get", "sw", "quickstart", "-o", "json"))["status"]
    assert shown["trials"]["done"] == 2 and shown["trials"]["succeeded"] == 1
    assert shown["trials"]["oom"] == 1 and shown["ooms"] == 1
    assert shown["best"]["evalLoss"] == pytest.approx(small.best_eval_loss)
    assert shown["best"]["model"] == SMALL
    printed = control_plane.kubectl_ok("-n", namespace, "get", "sw", "quickstart")
    header, row = printed.splitlines()[:2]
    assert header.split()[:7] == ["NAME", "PHASE", "DONE", "TOTAL", "RUNNING", "OOM",
                                  "BEST-LOSS"]
    cells = row.split()
    assert cells[:6] == ["quickstart", "Succeeded", "2", "2", "0", "1"], printed
    assert float(cells[6]) == pytest.approx(small.best_eval_loss, rel=1e-3)
    conditions = {c["type"]: c["status"] for c in shown["conditions"]}
    assert conditions == {"Ready": "True", "Progressing": "False", "Suspended": "False"}
    reasons = [r for r, _ in events(kube, namespace)]
    assert "TrialLaunched" in reasons and "TrialOOM" in reasons and "LaneCapped" in reasons


def test_runs_with_the_least_privilege_of_k8s_rbac(
    control_plane: ControlPlane, namespace: str, kube: Kube, tmp_path: Path, db_url: str,
) -> None:
    """The controller as the ServiceAccount of k8s/rbac/controller.yaml: launch, status,
    events, pods, deletion with the finalizer, and no `forbidden` anywhere in its log."""
    sa_kubeconfig = control_plane.sa_kubeconfig(
        "ladder-system", "ladder-controller", tmp_path / "sa.kubeconfig"
    )
    control_plane.kubectl_ok("apply", "-f", str(REPO_ROOT / "k8s" / "rbac" / "controller.yaml"))
    process = ControllerProcess(kubeconfig=sa_kubeconfig, namespace=namespace, db_url=db_url,
                                log_dir=tmp_path / "logs")
    with KubeRayStandIn(kube.api_client, namespace, mode="none", poll_interval=0.2) as standin:
        standin.behave(KubeRayStandIn.for_model(SMALL), Behaviour(pod_oom=True))
        process.start()
        try:
            submit(control_plane, namespace, "rbac", tmp_path)
            why = diagnose(kube, namespace, "rbac", process, standin)
            # The small trials die OOMKilled (pods read), the lanes cap (status, events).
            wait_for("both lanes capped", lambda: [
                lane for lane in sweep_status(kube, namespace, "rbac").get("lanes", [])
                if lane["state"] == "capped" and lane.get("oomKind") == "host"
            ] and len(sweep_status(kube, namespace, "rbac")["lanes"]) == 2 and all(
                lane["state"] == "capped"
                for lane in sweep_status(kube, namespace, "rbac")["lanes"]), diagnose=why)
            assert "LaneCapped" in [r for r, _ in events(kube, namespace)]
            control_plane.kubectl_ok("-n", namespace, "delete", "sw", "rbac", "--wait=false")
            wait_for("the Sweep to go", lambda: kube.get_sweep(namespace, "rbac") is None,
                     diagnose=why)
            assert names(kube, namespace, "rbac") == []
        finally:
            process.stop()
    assert "forbidden" not in process.logs().lower(), process.logs()
