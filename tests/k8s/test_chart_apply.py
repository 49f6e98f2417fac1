"""helm/ladder on a real kube-apiserver: the rendered chart (CRD, RBAC, Deployment,
StatefulSet, Secrets, Services, ServiceMonitor, PodMonitor, PrometheusRule, dashboard
ConfigMaps) is accepted by server-side apply, with the prometheus-operator v0.93.0 and
KubeRay v1.7.0 CRDs installed; `kubectl auth can-i` as the controller's ServiceAccount shows
its role is enough (create RayJobs, patch Sweep status, ...) and no more (no Secrets, no
pods/exec, no namespace deletion); and `helm install`/`upgrade`/`uninstall` keep the store's
password and Secret.

Nothing runs the pods here (no kubelet, no controllers): these tests check what the API
server stores and authorizes; tests/helm checks the rendering itself.
"""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from orchestrator.core.grid import attempt_spec, expand
from orchestrator.core.spec import load_sweep_text
from orchestrator.operator.kube import Kube, load_config
from orchestrator.operator.manifests import (
    ExecutionConfig,
    SecretRef,
    rayjob_manifest,
    trial_output_dir,
)
from tests.helm.chart import CHART, MONITORING_APIS, REPO_ROOT, run_helm, template_text
from tests.k8s.operator_harness import ControllerProcess, free_port, wait_for

if TYPE_CHECKING:
    from tests.k8s.conftest import ControlPlane

pytestmark = pytest.mark.k8s

FIELD_MANAGER = "ladder-chart-test"


def _release() -> str:
    return f"t{uuid.uuid4().hex[:6]}"


def _apply(control_plane: ControlPlane, text: str) -> list[str]:
    """Server-side apply of a multi-document YAML; returns kind/name of what was applied."""
    proc = control_plane.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager", FIELD_MANAGER,
        "-o", "name", "-f", "-", input=text, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, f"server-side apply refused the chart:\n{proc.stderr}"
    return proc.stdout.split()


class Account:
    """`kubectl auth can-i` as a ServiceAccount, with the groups its token would carry."""

    def __init__(self, control_plane: ControlPlane, namespace: str, name: str) -> None:
        self.cp = control_plane
        self.namespace = namespace
        self.name = name

    def can(self, verb: str, resource: str, *, namespace: str | None = None,
            subresource: str | None = None, all_namespaces: bool = False) -> bool:
        args = ["auth", "can-i", verb, resource,
                f"--as=system:serviceaccount:{self.namespace}:{self.name}",
                "--as-group=system:serviceaccounts",
                f"--as-group=system:serviceaccounts:{self.namespace}",
                "--as-group=system:authenticated"]  # fmt: skip
        if namespace:
            args += ["--namespace", namespace]
        if subresource:
            args += ["--subresource", subresource]
        if all_namespaces:
            args.append("--all-namespaces")
        proc = self.cp.kubectl(*args)
        answer = proc.stdout.strip()
        assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {proc.stderr}"
        return answer == "yes"


# What the controller must be able to do in a namespace it serves.
ENOUGH = [
    ("create", "rayjobs.ray.io", None),
    ("delete", "rayjobs.ray.io", None),
    ("watch", "rayjobs.ray.io", None),
    ("patch", "rayjobs.ray.io", None),
    ("patch", "sweeps.ladder.dev", "status"),
    ("update", "sweeps.ladder.dev", "status"),
    ("update", "sweeps.ladder.dev", "finalizers"),
    ("patch", "sweeps.ladder.dev", None),
    ("watch", "sweeps.ladder.dev", None),
    ("list", "rayclusters.ray.io", None),
    ("list", "pods", None),
    ("create", "events", None),
    ("list", "events", None),  # KubeRay's DeletedWorkerPod ... OOMKilled on a RayCluster
]
# What it must not be able to do there.
NOT_MORE = [
    ("get", "secrets", None),
    ("list", "secrets", None),
    ("create", "pods", "exec"),
    ("get", "pods", "exec"),
    ("create", "pods", "attach"),
    ("create", "pods", "portforward"),
    ("create", "pods", None),
    ("delete", "pods", None),
    ("create", "rayclusters.ray.io", None),
    ("delete", "rayclusters.ray.io", None),
    ("delete", "sweeps.ladder.dev", None),
    ("create", "sweeps.ladder.dev", None),
    ("deletecollection", "rayjobs.ray.io", None),
    ("create", "serviceaccounts", "token"),
    ("get", "configmaps", None),
    ("create", "roles.rbac.authorization.k8s.io", None),
    ("create", "rolebindings.rbac.authorization.k8s.io", None),
]
# Never, anywhere.
NEVER_CLUSTER = [
    ("list", "secrets"),
    ("delete", "namespaces"),
    ("create", "namespaces"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts"),
    ("get", "nodes"),
    ("patch", "nodes"),
    ("delete", "nodes"),
]


def _paper_rayjob(execution: dict[str, Any], namespace: str, secret: str) -> dict[str, Any]:
    """The RayJob of the paper grid's largest (8-GPU) trial under the chart's defaults."""
    config = ExecutionConfig.model_validate(execution)
    sweep = load_sweep_text((REPO_ROOT / "k8s/examples/paper-grid.yaml").read_text())
    sweep = sweep.model_copy(update={"namespace": namespace})
    trial = next(t for t in expand(sweep).all_trials() if t.model == "google/flan-t5-xl")
    payload = attempt_spec(sweep, trial, attempt=1,
                         output_dir=trial_output_dir(config, sweep.name, trial.trial_id, 1))
    return rayjob_manifest(sweep, trial, payload, owner_uid=str(uuid.uuid4()), config=config,
                           db_url_secret=SecretRef.parse(secret))


def _default_execution(text: str) -> dict[str, Any]:
    deployment = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "Deployment")
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return json.loads(next(e["value"] for e in env if e["name"] == "LADDER_DEFAULT_EXECUTION"))


def test_chart_applies_cluster_wide_and_its_role_is_enough_and_no_more(
    control_plane: ControlPlane, kuberay_crds: list[str], prometheus_operator_crds: list[str],
    tmp_path: Path,
) -> None:
    namespace = control_plane.create_namespace("ladder-chart")
    sweeps = control_plane.create_namespace("ladder-sweeps")
    release = _release()
    text = template_text(
        {"metrics": {"podMonitor": {"enabled": True}}},
        release=release, namespace=namespace, api_versions=MONITORING_APIS, include_crds=True,
    )  # fmt: skip
    applied = set(_apply(control_plane, text))
    full = f"{release}-ladder"
    assert applied >= {
        "customresourcedefinition.apiextensions.k8s.io/sweeps.ladder.dev",
        f"serviceaccount/{full}-controller",
        f"secret/{full}-db",
        f"clusterrole.rbac.authorization.k8s.io/{full}-controller",
        f"clusterrolebinding.rbac.authorization.k8s.io/{full}-controller",
        f"service/{full}-metrics",
        f"service/{full}-postgresql",
        f"deployment.apps/{full}-controller",
        f"statefulset.apps/{full}-postgresql",
        f"servicemonitor.monitoring.coreos.com/{full}-controller",
        f"podmonitor.monitoring.coreos.com/{full}-ray",
        f"prometheusrule.monitoring.coreos.com/{full}",
        f"configmap/{full}-dashboard-overview",
    }, applied
    # Applying again changes nothing and conflicts with nothing (idempotent).
    assert set(_apply(control_plane, text)) == applied

    account = Account(control_plane, namespace, f"{full}-controller")
    for verb, resource, sub in ENOUGH:
        assert account.can(verb, resource, namespace=sweeps, subresource=sub), (
            f"the controller cannot {verb} {resource}{'/' + sub if sub else ''} in {sweeps}")
    assert account.can("list", "customresourcedefinitions.apiextensions.k8s.io")
    assert account.can("watch", "sweeps.ladder.dev", all_namespaces=True)
    for ns in (sweeps, namespace):
        for verb, resource, sub in NOT_MORE:
            assert not account.can(verb, resource, namespace=ns, subresource=sub), (
                f"the controller may {verb} {resource}{'/' + sub if sub else ''} in {ns}")
    for verb, resource in NEVER_CLUSTER:
        assert not account.can(verb, resource, all_namespaces=True), f"{verb} {resource}"
    # rbac.readNodes: sizing Sweeps without execution.capacity from the whole cluster.
    assert account.can("list", "nodes", all_namespaces=True)
    assert account.can("list", "pods", all_namespaces=True)

    # The same, authenticated for real with a token of that ServiceAccount: it creates the
    # 8-GPU RayJob of the paper grid under the chart's execution defaults (KubeRay's CRD
    # accepts it, strictly), and reading Secrets is forbidden.
    kubeconfig = control_plane.sa_kubeconfig(namespace, f"{full}-controller",
                                             tmp_path / "sa.kubeconfig")
    rayjob = _paper_rayjob(_default_execution(text), sweeps, f"{full}-db/url")
    proc = control_plane.kubectl("create", "--validate=strict", "-o", "name", "-f", "-",
                                 kubeconfig=kubeconfig, input=json.dumps(rayjob))
    assert proc.returncode == 0, proc.stderr
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    # The 8 Ray Train workers fill both 4-GPU nodes, so they come as node-sized pods
    # (execution.podShape auto): 2 pods of 4 GPUs, NVLink inside each.
    assert workers["replicas"] == 2
    container = workers["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] in (4, "4")
    proc = control_plane.kubectl("get", "secrets", "-n", namespace, kubeconfig=kubeconfig)
    assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), proc.stderr

    # And the real controller, logged in as that ServiceAccount and configured by the
    # Deployment's own environment, serves a Sweep end to end: RayJobs built from the chart's
    # execution defaults, status written, metrics served on the chart's port.
    _controller_runs_with_the_charts_role_and_env(control_plane, text, kubeconfig, sweeps,
                                                   f"{full}-db/url", tmp_path)


SMALL_SWEEP = """
apiVersion: ladder.dev/v1alpha1
kind: Sweep
metadata: {name: chart-e2e}
spec:
  ladder: [ladder/t5-tiny-s, ladder/t5-tiny-m]
  methods: [full]
  training: {epochs: 1, precision: fp32, init: random}
  resources: {workers: 1, gpusPerWorker: 1}
"""


def _deployment_env(text: str) -> dict[str, str]:
    deployment = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "Deployment")
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e["value"] for e in env if "value" in e}


def _controller_runs_with_the_charts_role_and_env(
    control_plane: ControlPlane, text: str, kubeconfig: Path, namespace: str, db_secret: str,
    tmp_path: Path,
) -> None:
    env = _deployment_env(text)
    assert env["LADDER_ALLOW_PRIVILEGED_TRIALS"] == "false"
    metrics_port = free_port()
    env["LADDER_METRICS_PORT"] = str(metrics_port)  # the chart's 9400 may be taken here
    controller = ControllerProcess(
        kubeconfig=kubeconfig, namespace=namespace, db_url=f"sqlite:///{tmp_path / 'c.db'}",
        log_dir=tmp_path / "controller", env=env, db_secret=db_secret,
        liveness=f"http://127.0.0.1:{free_port()}/healthz",
    )
    kube = Kube(load_config(str(control_plane.kubeconfig)))
    controller.start()
    try:
        control_plane.kubectl_ok("-n", namespace, "apply", "-f", "-", input=SMALL_SWEEP)
        (rayjob,) = wait_for("the controller to create the first RayJob",
                             lambda: kube.list_rayjobs(namespace, "chart-e2e"),
                             timeout=90, diagnose=controller.logs)
        defaults = json.loads(env["LADDER_DEFAULT_EXECUTION"])
        workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
        assert workers["containers"][0]["image"] == defaults["image"]
        assert workers["nodeSelector"] == defaults["nodeSelector"]
        assert workers["containers"][0]["resources"]["limits"]["memory"] == \
            defaults["worker"]["memory"]
        status = wait_for("the Sweep's status", lambda: (kube.get_sweep(
            namespace, "chart-e2e") or {}).get("status"), diagnose=controller.logs)
        assert status["phase"] == "Running", status

        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                            timeout=5) as response:
                    body = response.read().decode()
            except OSError:
                return None
            return body if 'ladder_reconcile_duration_seconds_count{' in body else None

        body = wait_for("the controller's metrics", scrape, diagnose=controller.logs)
        assert 'sweep="chart-e2e"' in body and "ladder_sweep_trials" in body

        # A Sweep asking for host access is refused: the chart does not allow it.
        hostile = SMALL_SWEEP.replace("chart-e2e", "chart-host") + (
            "  execution:\n    volumes: [{name: h, hostPath: {path: /}}]\n")
        control_plane.kubectl_ok("-n", namespace, "apply", "-f", "-", input=hostile)
        refused = wait_for("the host-access Sweep to be refused", lambda: (kube.get_sweep(
            namespace, "chart-host") or {}).get("status"), diagnose=controller.logs)
        assert refused["reason"] == "InvalidSpec", refused
        assert "volumes[0].hostPath" in refused["message"]
        assert kube.list_rayjobs(namespace, "chart-host") == []
        # Serving one namespace under a cluster-wide role that may not list namespaces, it
        # said so and served at once; Kopf did not retry the listing for a minute first.
        logs = controller.logs(tail=None)
        assert "may not list namespaces: serving" in logs, logs[-6000:]
        assert "Not enough permissions to list namespaces" not in logs, logs[-6000:]
    finally:
        controller.stop()


def test_chart_applies_for_watched_namespaces_only(
    control_plane: ControlPlane, kuberay_crds: list[str], prometheus_operator_crds: list[str],
) -> None:
    namespace = control_plane.create_namespace("ladder-chart")
    team_a = control_plane.create_namespace("ladder-team-a")
    team_b = control_plane.create_namespace("ladder-team-b")
    elsewhere = control_plane.create_namespace("ladder-other")
    release = _release()
    text = template_text({"watchNamespaces": [team_a, team_b]}, release=release,
                         namespace=namespace, api_versions=MONITORING_APIS, include_crds=True)
    applied = set(_apply(control_plane, text))
    full = f"{release}-ladder"
    assert f"role.rbac.authorization.k8s.io/{full}-controller" in applied
    account = Account(control_plane, namespace, f"{full}-controller")
    for ns in (team_a, team_b):
        for verb, resource, sub in ENOUGH:
            assert account.can(verb, resource, namespace=ns, subresource=sub), (verb, resource)
        # Trial pods there read the store's URL from the chart's copy of the Secret.
        data = json.loads(control_plane.kubectl_ok("get", "secret", f"{full}-db", "-n", ns,
                                                   "-o", "json"))["data"]
        assert set(data) == {"url"}
        assert base64.b64decode(data["url"]).startswith(b"postgresql+psycopg://")
    for verb, resource, sub in ENOUGH:
        if (verb, resource) == ("list", "pods"):
            continue  # rbac.readNodes (below)
        assert not account.can(verb, resource, namespace=elsewhere, subresource=sub), (
            f"the controller may {verb} {resource} outside its namespaces")
    assert not account.can("list", "sweeps.ladder.dev", all_namespaces=True)
    # rbac.readNodes (default): listing nodes and pods cluster-wide, to size Sweeps without
    # execution.capacity from what the whole cluster holds; nothing more on pods elsewhere.
    assert account.can("list", "nodes", all_namespaces=True)
    assert account.can("list", "pods", all_namespaces=True)
    assert not account.can("get", "pods", namespace=elsewhere)
    assert not account.can("watch", "pods", all_namespaces=True)
    assert account.can("watch", "customresourcedefinitions.apiextensions.k8s.io")
    for verb, resource in NEVER_CLUSTER:
        assert not account.can(verb, resource, all_namespaces=True), f"{verb} {resource}"


def _secret_password(control_plane: ControlPlane, namespace: str, name: str) -> str:
    data = json.loads(control_plane.kubectl_ok("get", "secret", name, "-n", namespace,
                                               "-o", "json"))["data"]
    return base64.b64decode(data["password"]).decode()


def test_helm_install_upgrade_uninstall_keeps_the_store(
    control_plane: ControlPlane, kuberay_crds: list[str], prometheus_operator_crds: list[str],
) -> None:
    namespace = control_plane.create_namespace("ladder-helm")
    release = _release()
    full = f"{release}-ladder"
    kubeconfig = control_plane.kubeconfig

    # The Sweep CRD is already there, applied by other tests' field managers: as for a user
    # who applied k8s/crd/ by hand before, helm must take its fields over.
    proc = run_helm("install", release, str(CHART), "--namespace", namespace,
                    "--force-conflicts", kubeconfig=kubeconfig, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "NOTES:" in proc.stdout
    # The cluster serves monitoring.coreos.com/v1, so helm (Capabilities) created these.
    control_plane.kubectl_ok("get", "servicemonitor", f"{full}-controller", "-n", namespace)
    control_plane.kubectl_ok("get", "prometheusrule", full, "-n", namespace)
    password = _secret_password(control_plane, namespace, f"{full}-db")

    proc = run_helm("upgrade", release, str(CHART), "--namespace", namespace,
                    "--set", "controller.verbose=true", kubeconfig=kubeconfig, check=False,
                    timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _secret_password(control_plane, namespace, f"{full}-db") == password, (
        "an upgrade must keep the database password (the data volume was made with it)")
    deployment = json.loads(control_plane.kubectl_ok(
        "get", "deployment", f"{full}-controller", "-n", namespace, "-o", "json"))
    assert "--verbose" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    proc = run_helm("uninstall", release, "--namespace", namespace, kubeconfig=kubeconfig,
                    check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    gone = control_plane.kubectl("get", "deployment", f"{full}-controller", "-n", namespace)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    # The store's Secret stays (helm.sh/resource-policy: keep), so a reinstall reuses it.
    assert _secret_password(control_plane, namespace, f"{full}-db") == password
    proc = run_helm("install", release, str(CHART), "--namespace", namespace,
                    kubeconfig=kubeconfig, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _secret_password(control_plane, namespace, f"{full}-db") == password
