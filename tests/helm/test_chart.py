"""helm/ladder through the real helm binary: `helm lint` and `helm template` for the default
values and realistic overrides, with assertions on the rendered objects (security contexts,
RBAC exactly as listed, labels, the database Secret reference, monitoring objects, the Sweep
execution defaults), and the schema and template checks refusing bad values with readable
messages. tests/k8s/test_chart_apply.py applies the same renderings to a real apiserver."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.core.grid import attempt_spec, expand
from orchestrator.core.spec import load_sweep_text
from orchestrator.operator.capacity import cluster_gpus
from orchestrator.operator.manifests import (
    ExecutionConfig,
    SecretRef,
    rayjob_manifest,
    trial_output_dir,
)
from tests.helm.chart import (
    CHART,
    MONITORING_APIS,
    REPO_ROOT,
    by_kind,
    lint,
    one,
    render,
    render_error,
)

EXTERNAL_DB = {"postgresql": {"enabled": False},
               "database": {"existingSecret": "team-db", "secretKey": "sqlalchemy-url"}}
MONITORING_OFF = {
    "metrics": {"serviceMonitor": {"enabled": False}, "podMonitor": {"enabled": False},
                "prometheusRule": {"enabled": False}},
    "dashboards": {"enabled": False},
}
CLUSTER_SELECTOR = {"execution": {"clusterSelector": {"ray.io/cluster": "gpus"}}}
WATCH_NAMESPACES = {"watchNamespaces": ["team-a", "team-b"]}
PEERING = {"controller": {"replicas": 2, "peering": {"enabled": True}}}
ALL_MONITORING = {"metrics": {"podMonitor": {"enabled": True}}}

OVERRIDES: dict[str, dict[str, Any]] = {
    "default": {},
    "external-db": EXTERNAL_DB,
    "monitoring-off": MONITORING_OFF,
    "cluster-selector": CLUSTER_SELECTOR,
    "watch-namespaces": WATCH_NAMESPACES,
    "peering": PEERING,
    "pod-monitor": ALL_MONITORING,
    "no-persistence": {"postgresql": {"persistence": {"enabled": False}}},
}

# The controller's permissions in the namespaces it serves: (apiGroup, resource, verb).
NAMESPACED_RULES = {
    *(("ladder.dev", "sweeps", v) for v in ("get", "list", "watch", "patch", "update")),
    *(("ladder.dev", "sweeps/status", v) for v in ("get", "patch", "update")),
    ("ladder.dev", "sweeps/finalizers", "update"),
    *(("ray.io", "rayjobs", v) for v in ("get", "list", "watch", "create", "delete", "patch")),
    *(("ray.io", "rayclusters", v) for v in ("get", "list", "watch")),
    *(("", "pods", v) for v in ("get", "list", "watch")),
    ("", "events", "create"),
    ("", "events", "patch"),
    ("", "events", "list"),
}
CRD_RULES = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
# Kopf serving named namespaces lists them (names only) to notice those created later.
NAMESPACE_RULES = {("", "namespaces", v) for v in ("list", "watch")}
# rbac.readNodes: sizing Sweeps without execution.capacity from the cluster, read only.
NODE_RULES = {("", "nodes", "list"), ("", "pods", "list")}


def _rules(role: Mapping[str, Any]) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        names = tuple(rule.get("resourceNames") or ())
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((group, resource, verb, *names))
    return out


def _pod_specs(objects: Iterable[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
    ]


def _controller(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(objects, "Deployment", "ladder-controller")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def _default_execution(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return json.loads(_env(_controller(objects))["LADDER_DEFAULT_EXECUTION"]["value"])


# --- lint --------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", OVERRIDES.values(), ids=OVERRIDES.keys())
def test_helm_lint_strict(values: dict[str, Any]) -> None:
    proc = lint(values)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", OVERRIDES.values(), ids=OVERRIDES.keys())
def test_every_override_renders_labelled_objects(values: dict[str, Any]) -> None:
    objects = render(values, api_versions=MONITORING_APIS)
    for obj in objects:
        labels = obj["metadata"].get("labels") or {}
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "CustomResourceDefinition":
            continue
        assert labels.get("app.kubernetes.io/name") == "ladder", where
        assert labels.get("app.kubernetes.io/instance") == "ladder", where
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", where
        assert labels.get("app.kubernetes.io/part-of") == "ladder", where
        assert labels.get("helm.sh/chart") == "ladder-0.1.0", where
        assert labels.get("app.kubernetes.io/component"), where
        if obj["kind"] in ("Role", "ClusterRole"):
            assert '"*"' not in json.dumps(obj["rules"]), f"{where} has a wildcard"
    for where, pod in _pod_specs(objects):
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        assert all("hostPath" not in v for v in pod.get("volumes", [])), where


# --- default rendering -------------------------------------------------------------------------


def test_default_objects() -> None:
    objects = render()
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == sorted([
        ("ServiceAccount", "ladder-controller"),
        ("Secret", "ladder-db"),
        ("ConfigMap", "ladder-dashboard-overview"),
        ("ConfigMap", "ladder-dashboard-results"),
        ("ConfigMap", "ladder-dashboard-training"),
        ("ClusterRole", "ladder-controller"),
        ("ClusterRoleBinding", "ladder-controller"),
        ("Service", "ladder-metrics"),
        ("Service", "ladder-postgresql"),
        ("Deployment", "ladder-controller"),
        ("StatefulSet", "ladder-postgresql"),
    ])
    # Without the Prometheus operator's API (nothing passed to --api-versions), no
    # monitoring.coreos.com objects: an install on a cluster without it must not fail.
    for obj in objects:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "ladder", obj["metadata"]["name"]


def test_pods_are_locked_down() -> None:
    objects = render()
    specs = dict(_pod_specs(objects))
    assert set(specs) == {"Deployment/ladder-controller", "StatefulSet/ladder-postgresql"}
    for where, pod in specs.items():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, where
        assert context["runAsUser"] > 0, where
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert "privileged" not in security, where
            assert container["resources"]["requests"] and container["resources"]["limits"], where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, f"{where}: no writable /tmp"
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], where
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, f"{where} has no {probe}"
    assert specs["StatefulSet/ladder-postgresql"]["automountServiceAccountToken"] is False


def test_controller_deployment() -> None:
    objects = render()
    deployment = one(objects, "Deployment", "ladder-controller")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ladder-controller"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    container = _controller(objects)
    assert container["image"] == "ghcr.io/ladder-dev/ladder-controller:0.1.0"
    assert "command" not in container  # the image's entrypoint: `ladder controller`
    assert container["args"] == ["--liveness=http://0.0.0.0:8080/healthz",
                                 "--db-secret=ladder-db/url"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9400}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = _env(container)
    assert env["LADDER_METRICS_PORT"]["value"] == "9400"
    assert env["LADDER_ALLOW_PRIVILEGED_TRIALS"]["value"] == "false"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The metrics Service selects exactly the controller pods, on the metrics port.
    service = one(objects, "Service", "ladder-metrics")
    assert service["spec"]["selector"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9400,
                                         "targetPort": "metrics", "protocol": "TCP"}]


# --- the store ---------------------------------------------------------------------------------


def test_bundled_postgresql_and_its_secret() -> None:
    objects = render()
    secret = one(objects, "Secret", "ladder-db")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    url = base64.b64decode(secret["data"]["url"]).decode()
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    assert url == (f"postgresql+psycopg://ladder:{password}@"
                   "ladder-postgresql.ladder.svc.cluster.local:5432/ladder")
    # The controller reads the URL from the Secret, never from a plain value.
    env = _env(_controller(objects))
    assert env["LADDER_DB_URL"] == {
        "name": "LADDER_DB_URL",
        "valueFrom": {"secretKeyRef": {"name": "ladder-db", "key": "url"}},
    }
    for obj in objects:
        if obj["kind"] != "Secret":
            assert password not in json.dumps(obj), f"{obj['kind']} holds the password"
            assert "postgresql+psycopg://" not in json.dumps(obj), obj["kind"]

    statefulset = one(objects, "StatefulSet", "ladder-postgresql")
    spec = statefulset["spec"]
    assert spec["serviceName"] == "ladder-postgresql" and spec["replicas"] == 1
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain",
                                                           "whenScaled": "Retain"}
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    (container,) = spec["template"]["spec"]["containers"]
    image, _, tag = container["image"].rpartition(":")
    assert image == "docker.io/library/postgres" and re.fullmatch(r"\d+\.\d+-\w+", tag)
    pg_env = _env(container)
    assert pg_env["POSTGRES_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "ladder-db", "key": "password"}}
    assert pg_env["POSTGRES_USER"]["value"] == "ladder"
    assert pg_env["PGDATA"]["value"].startswith("/var/lib/postgresql/data/")
    assert spec["template"]["spec"]["securityContext"]["runAsUser"] == 999
    service = one(objects, "Service", "ladder-postgresql")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("values", [EXTERNAL_DB], ids=["external-db"])
def test_external_database(values: dict[str, Any]) -> None:
    objects = render(values)
    kinds = {o["kind"] for o in objects}
    assert "StatefulSet" not in kinds
    assert "Secret" not in kinds  # the user's Secret; the chart makes none
    assert [s["metadata"]["name"] for s in by_kind(objects, "Service")] == ["ladder-metrics"]
    container = _controller(objects)
    assert _env(container)["LADDER_DB_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "team-db", "key": "sqlalchemy-url"}}
    assert "--db-secret=team-db/sqlalchemy-url" in container["args"]


def test_secret_copies_for_watched_namespaces() -> None:
    objects = render(WATCH_NAMESPACES)
    secrets = {s["metadata"]["namespace"]: s for s in by_kind(objects, "Secret")}
    assert set(secrets) == {"ladder", "team-a", "team-b"}
    urls = {base64.b64decode(s["data"]["url"]) for s in secrets.values()}
    assert len(urls) == 1  # one password, rendered once
    for namespace in ("team-a", "team-b"):
        assert set(secrets[namespace]["data"]) == {"url"}  # no bare password in copies
    no_copies = render({**WATCH_NAMESPACES, "database": {"copySecretToWatchNamespaces": False}})
    assert [s["metadata"]["namespace"] for s in by_kind(no_copies, "Secret")] == ["ladder"]


# --- RBAC --------------------------------------------------------------------------------------


def _assert_least_privilege(rules: set[tuple[str, ...]], where: str) -> None:
    for rule in rules:
        group, resource, verb = rule[:3]
        assert "*" not in (group, resource, verb), where
        if resource == "nodes":
            assert verb == "list", f"{where}: {rule}"
            continue
        if resource == "namespaces":  # Kopf's observation of watchNamespaces: names, read only
            assert verb in ("list", "watch"), f"{where}: {rule}"
            continue
        assert resource not in ("secrets", "configmaps", "namespaces",
                                "serviceaccounts", "roles", "rolebindings", "clusterroles",
                                "clusterrolebindings"), f"{where}: {rule}"
        assert not resource.startswith("pods/"), f"{where}: {rule}"  # exec, attach, ...
        if resource in ("pods", "rayclusters", "customresourcedefinitions"):
            assert verb in ("get", "list", "watch"), f"{where}: {rule}"
        assert verb not in ("escalate", "bind", "impersonate", "deletecollection"), where


def test_cluster_wide_rbac_is_exactly_the_list() -> None:
    objects = render()
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")
    role = one(objects, "ClusterRole", "ladder-controller")
    rules = _rules(role)
    assert rules == NAMESPACED_RULES | CRD_RULES | NODE_RULES
    _assert_least_privilege(rules, "ClusterRole")
    binding = one(objects, "ClusterRoleBinding", "ladder-controller")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": "ladder-controller"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ladder-controller",
                                    "namespace": "ladder"}]


def test_watch_namespaces_rbac_and_args() -> None:
    objects = render(WATCH_NAMESPACES, api_versions=MONITORING_APIS)
    roles = {r["metadata"]["namespace"]: r for r in by_kind(objects, "Role")}
    assert set(roles) == {"team-a", "team-b"}
    for namespace, role in roles.items():
        rules = _rules(role)
        assert rules == NAMESPACED_RULES, namespace
        _assert_least_privilege(rules, f"Role in {namespace}")
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(objects, "RoleBinding")}
    assert set(bindings) == {"team-a", "team-b"}
    for binding in bindings.values():
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ladder-controller",
                                        "namespace": "ladder"}]
    # Cluster scope keeps only Kopf's CRD and namespace observation and reading nodes and pods.
    assert _rules(one(objects, "ClusterRole")) == CRD_RULES | NAMESPACE_RULES | NODE_RULES
    _assert_least_privilege(CRD_RULES | NAMESPACE_RULES | NODE_RULES, "ClusterRole")
    args = _controller(objects)["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=team-a", "--namespace=team-b"]
    pod_monitor = render({**WATCH_NAMESPACES, **ALL_MONITORING}, api_versions=MONITORING_APIS)
    selector = one(pod_monitor, "PodMonitor")["spec"]["namespaceSelector"]
    assert selector == {"matchNames": ["team-a", "team-b"]}
    # Without CRD observation, nothing cluster-scoped at all.
    no_nodes = render({**WATCH_NAMESPACES, "rbac": {"readNodes": False}})
    assert _rules(one(no_nodes, "ClusterRole")) == CRD_RULES | NAMESPACE_RULES
    narrow = render({**WATCH_NAMESPACES, "rbac": {"watchCustomResourceDefinitions": False,
                                                  "readNodes": False, "listNamespaces": False}})
    assert not by_kind(narrow, "ClusterRole") and not by_kind(narrow, "ClusterRoleBinding")


def test_peering() -> None:
    objects = render(PEERING)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert "--peering=ladder" in _controller(objects)["args"]
    peering = one(objects, "ClusterKopfPeering", "ladder")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert _rules(one(objects, "ClusterRole")) == NAMESPACED_RULES | CRD_RULES | NODE_RULES | {
        ("kopf.dev", "clusterkopfpeerings", "list"),
        ("kopf.dev", "clusterkopfpeerings", "watch"),
        ("kopf.dev", "clusterkopfpeerings", "get", "ladder"),
        ("kopf.dev", "clusterkopfpeerings", "patch", "ladder"),
    }
    namespaced = render({**PEERING, **WATCH_NAMESPACES})
    assert {p["metadata"]["namespace"] for p in by_kind(namespaced, "KopfPeering")} == {
        "team-a", "team-b"}
    for role in by_kind(namespaced, "Role"):
        assert _rules(role) == NAMESPACED_RULES | {
            ("kopf.dev", "kopfpeerings", "list"),
            ("kopf.dev", "kopfpeerings", "watch"),
            ("kopf.dev", "kopfpeerings", "get", "ladder"),
            ("kopf.dev", "kopfpeerings", "patch", "ladder"),
        }


def test_rbac_matches_the_manual_controller_rbac() -> None:
    """k8s/rbac/controller.yaml (running the controller by hand) grants nothing the chart's
    ClusterRole does not, apart from what Kopf can do without (it falls back when refused)."""
    manual = next(d for d in yaml.safe_load_all((REPO_ROOT / "k8s/rbac/controller.yaml")
                                                .read_text()) if d["kind"] == "ClusterRole")
    tolerated = {("", "namespaces", "list"), ("", "namespaces", "watch"),
                 ("events.k8s.io", "events", "create"), ("events.k8s.io", "events", "patch")}
    chart = _rules(one(render(), "ClusterRole"))
    assert _rules(manual) - tolerated <= chart


# --- monitoring and dashboards -----------------------------------------------------------------


def test_monitoring_objects_when_the_operator_is_there() -> None:
    objects = render(api_versions=MONITORING_APIS)
    monitor = one(objects, "ServiceMonitor", "ladder-controller")
    service = one(objects, "Service", "ladder-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items())
    # job="ladder": what the LadderControllerDown alert looks for.
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "ladder"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ladder"]}
    rule = one(objects, "PrometheusRule", "ladder")
    rules_file = yaml.safe_load((CHART / "rules" / "ladder-alerts.yaml").read_text())
    assert rule["spec"]["groups"] == rules_file["groups"]
    assert not by_kind(objects, "PodMonitor")  # off by default
    pod_monitor = one(render(ALL_MONITORING, api_versions=MONITORING_APIS), "PodMonitor")
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "ladder"}
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}


def test_monitoring_labels_for_the_prometheus_selectors() -> None:
    labels = {"release": "kube-prometheus-stack"}
    objects = render({"metrics": {"serviceMonitor": {"additionalLabels": labels},
                                  "prometheusRule": {"additionalLabels": labels}}},
                     api_versions=MONITORING_APIS)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert one(objects, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboards_are_sidecar_configmaps() -> None:
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert files, "no dashboards in helm/ladder/dashboards"
    configmaps = by_kind(render(), "ConfigMap")
    assert len(configmaps) == len(files)
    loaded = {}
    for configmap in configmaps:
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        (key, text), = configmap["data"].items()
        loaded[key] = json.loads(text)
    assert loaded == {f.name: json.loads(f.read_text()) for f in files}
    custom = render({"dashboards": {"label": "ladder_dashboard", "labelValue": "yes",
                                    "namespace": "monitoring",
                                    "annotations": {"grafana_folder": "Ladder"}}})
    for configmap in by_kind(custom, "ConfigMap"):
        meta = configmap["metadata"]
        assert meta["labels"]["ladder_dashboard"] == "yes"
        assert "grafana_dashboard" not in meta["labels"]
        assert meta["namespace"] == "monitoring"
        assert meta["annotations"] == {"grafana_folder": "Ladder"}


def test_monitoring_off() -> None:
    objects = render(MONITORING_OFF, api_versions=MONITORING_APIS)
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}
    assert one(objects, "Service", "ladder-metrics")  # /metrics is still served


# --- Sweep execution defaults ------------------------------------------------------------------


def _execution_keys() -> set[str]:
    return {field.alias or name for name, field in ExecutionConfig.model_fields.items()}


def test_default_execution_is_what_the_controller_reads() -> None:
    objects = render()
    defaults = _default_execution(objects)
    unknown = set(defaults) - _execution_keys()
    assert not unknown, f"keys the controller's ExecutionConfig does not know: {unknown}"
    config = ExecutionConfig.model_validate(defaults)
    assert config.image == "ghcr.io/ladder-dev/ladder-worker:0.1.0"
    assert config.cluster_selector is None
    assert config.capacity is None  # from the nodes (rbac.readNodes)
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["execution"]["properties"]) <= _execution_keys()


def test_default_execution_runs_the_paper_grid_on_two_nodes_of_4_gpus() -> None:
    config = ExecutionConfig.model_validate(_default_execution(render()))
    sweep = load_sweep_text((REPO_ROOT / "k8s/examples/paper-grid.yaml").read_text())
    sweep = sweep.model_copy(update={"namespace": "ladder"})
    trials = {t.model: t for t in expand(sweep).all_trials()}
    node = {"cpu": 112, "memory": 2 * 1024**4, "gpus": 4}

    def quantity(text: str) -> float:
        units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
        for suffix, factor in units.items():
            if text.endswith(suffix):
                return float(text[: -len(suffix)]) * factor
        return float(text)

    # XL's 8 workers fill both nodes: two node-sized pods of 4 GPUs (gpusPerNode: 4), so NCCL
    # stays on NVLink inside each; Small's single worker gets a pod of one GPU.
    for model, pods, gpus in (("google/flan-t5-xl", 2, 4), ("google/flan-t5-small", 1, 1)):
        trial = trials[model]
        payload = attempt_spec(sweep, trial, attempt=1, output_dir=trial_output_dir(
            config, sweep.name, trial.trial_id, 1))
        rayjob = rayjob_manifest(sweep, trial, payload, owner_uid="uid", config=config,
                                 db_url_secret=SecretRef(name="ladder-db"))
        cluster = rayjob["spec"]["rayClusterSpec"]
        assert cluster["rayVersion"] == "2.60.0"
        (group,) = cluster["workerGroupSpecs"]
        assert group["replicas"] == pods
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        limits = container["resources"]["limits"]
        assert limits["nvidia.com/gpu"] in (gpus, str(gpus))
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
            pod["tolerations"])
        assert container["image"] == "ghcr.io/ladder-dev/ladder-worker:0.1.0"
        assert any(e["name"] == "LADDER_DB_URL" for e in container["env"])
        # A node's four GPUs' worth of pods (and a head) fit one node.
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
        per_node = 4 // gpus
        cpu = per_node * quantity(str(limits["cpu"])) + quantity(str(head["limits"]["cpu"]))
        memory = per_node * quantity(limits["memory"]) + quantity(head["limits"]["memory"])
        assert cpu <= node["cpu"] and memory <= node["memory"]
    # No capacity: the controller sizes the sweep from the nodes trial pods may land on,
    # here two nodes of 4 GPUs as NVIDIA's GPU feature discovery labels and taints them.
    assert config.capacity is None
    gpu_nodes = [{
        "metadata": {"name": f"gpu-{i}", "labels": {"nvidia.com/gpu.present": "true"}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"nvidia.com/gpu": str(node["gpus"])}},
    } for i in range(2)] + [{"metadata": {"name": "cpu"}, "status": {"allocatable": {}}}]
    pool = cluster_gpus(gpu_nodes, [], "ladder", sweep.name, (),
                        node_selector=config.node_selector, tolerations=config.tolerations)
    assert pool.allocatable == 2 * node["gpus"]


def test_cluster_selector_mode() -> None:
    objects = render(CLUSTER_SELECTOR)
    defaults = _default_execution(objects)
    assert defaults["clusterSelector"] == {"ray.io/cluster": "gpus"}
    config = ExecutionConfig.model_validate(defaults)
    sweep = load_sweep_text((REPO_ROOT / "k8s/examples/paper-grid.yaml").read_text())
    trial = expand(sweep).all_trials()[0]
    payload = attempt_spec(sweep, trial, attempt=1, output_dir="/tmp/x")
    rayjob = rayjob_manifest(sweep, trial, payload, owner_uid="uid", config=config)
    assert rayjob["spec"]["clusterSelector"] == {"ray.io/cluster": "gpus"}
    assert "rayClusterSpec" not in rayjob["spec"]


def test_worker_image_and_values_flow_into_the_defaults() -> None:
    objects = render({"worker": {"image": {"repository": "registry.local/ladder-worker",
                                           "tag": "dev", "pullPolicy": "Always"}},
                      "execution": {"imagePullSecrets": ["regcred"],
                                    "serviceAccountName": "trainer"}})
    defaults = _default_execution(objects)
    assert defaults["image"] == "registry.local/ladder-worker:dev"
    assert defaults["imagePullPolicy"] == "Always"
    assert defaults["imagePullSecrets"] == ["regcred"]
    assert defaults["serviceAccountName"] == "trainer"
    # Empty values are left out, so the controller's own defaults apply.
    assert "env" not in _default_execution(render())


# --- values, schema and refusals ---------------------------------------------------------------


SCHEMA_REFUSALS = [
    (["controller.replicas=-1"], "at '/controller/replicas': minimum: got -1, want 0"),
    (["database.mode=external"], "at '/database': additional properties 'mode' not allowed"),
    (["database.url=postgresql://u:p@h/db"],
     "at '/database': additional properties 'url' not allowed"),
    (["postgresql.enabled=maybe"], "at '/postgresql/enabled': got string, want boolean"),
    (["controller.image.pullPolicy=Sometimes"],
     "at '/controller/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"),
    (["controller.securityContext.privileged=true"],
     "at '/controller/securityContext/privileged': value must be false"),
    (["watchNamespaces={Team_A}"], "at '/watchNamespaces/0': 'Team_A' does not match pattern"),
    (["execution.head.memory=lots"], "at '/execution/head/memory': 'lots' does not match"),
    (["execution.capacity.gpus=0"], "at '/execution/capacity/gpus': minimum: got 0, want 1"),
    (["execution.image=x:1"], "at '/execution': additional properties 'image' not allowed"),
    (["controller.metricsPort=80"], "at '/controller/metricsPort': minimum: got 80, want 1,024"),
    (["metrics.serviceMonitor.interval=soon"],
     "at '/metrics/serviceMonitor/interval': 'soon' does not match pattern"),
    (["postgresql.persistence.size=big"], "at '/postgresql/persistence/size': 'big'"),
    (["unknownTopLevel=1"], "additional properties 'unknownTopLevel' not allowed"),
]


@pytest.mark.parametrize(("sets", "message"), SCHEMA_REFUSALS,
                         ids=[s[0][0].split("=")[0] for s in SCHEMA_REFUSALS])
def test_schema_refuses_bad_values(sets: list[str], message: str) -> None:
    error = render_error(sets=sets)
    assert "values don't meet the specifications of the schema" in error
    assert message in error, error


TEMPLATE_REFUSALS = [
    ({"postgresql": {"enabled": False}},
     "postgresql.enabled is false, so database.existingSecret must name a Secret"),
    ({"database": {"existingSecret": "mine"}},
     'database.existingSecret ("mine") is set while postgresql.enabled is true'),
    ({"controller": {"replicas": 3}},
     "controller.replicas is 3 but controller.peering.enabled is false"),
    ({"execution": {"volumes": [{"name": "data", "hostPath": {"path": "/data"}}]}},
     'execution.volumes["data"] is a hostPath volume'),
    ({"execution": {"ipcLock": True}}, "execution.ipcLock adds the IPC_LOCK capability"),
]


@pytest.mark.parametrize(("values", "message"), TEMPLATE_REFUSALS,
                         ids=["no-store", "two-stores", "replicas-without-peering", "hostpath",
                              "ipc-lock"])
def test_templates_refuse_inconsistent_values(values: dict[str, Any], message: str) -> None:
    error = render_error(values)
    assert message in error, error


def test_privileged_trials_can_be_allowed_explicitly() -> None:
    values = {"allowPrivilegedTrials": True,
              "execution": {"volumes": [{"name": "data", "hostPath": {"path": "/data"}}]}}
    env = _env(_controller(render(values)))
    assert env["LADDER_ALLOW_PRIVILEGED_TRIALS"]["value"] == "true"


def _walk_schema(node: Any, path: str = "#") -> Iterable[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk_schema(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk_schema(value, f"{path}/{i}")


def test_schema_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, node in _walk_schema(schema):
        if "properties" in node and isinstance(node["properties"], dict) and (
            not path.endswith("/properties")
        ):
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"


def _documented_leaves(text: str) -> list[str]:
    """Keys of values.yaml with a scalar or empty value and no comment on them or above any of
    their parents (a comment documents the block under it)."""
    missing: list[str] = []
    stack: list[tuple[int, bool]] = []  # (indent, documented)
    previous_comment = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            previous_comment = True
            continue
        indent = len(line) - len(line.lstrip())
        match = re.match(r"([A-Za-z0-9_.\-/]+):(.*)$", stripped)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if match and not stripped.startswith("- "):
            documented = previous_comment or any(d for _, d in stack)
            value = match.group(2).strip()
            if value and not documented:
                missing.append(match.group(1))
            stack.append((indent, documented))
        previous_comment = False
    return missing


def test_values_are_documented_line_by_line() -> None:
    assert _documented_leaves((CHART / "values.yaml").read_text()) == []


def test_chart_layout() -> None:
    templates = sorted(p.name for p in (CHART / "templates").iterdir())
    assert templates == sorted([
        "NOTES.txt", "_helpers.tpl", "_rbac.tpl", "clusterrole.yaml", "clusterrolebinding.yaml",
        "dashboards-configmap.yaml", "deployment.yaml", "kopfpeering.yaml", "podmonitor.yaml",
        "postgresql-secret.yaml", "postgresql-service.yaml", "postgresql-statefulset.yaml",
        "prometheusrule.yaml", "role.yaml", "rolebinding.yaml", "service.yaml",
        "serviceaccount.yaml", "servicemonitor.yaml",
    ])
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "ladder"
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M)
    assert version is not None and chart["appVersion"] == version.group(1), (
        "Chart.yaml's appVersion (the image tags) must be the package version")
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["sweeps.ladder.dev.yaml"]


def test_notes_render() -> None:
    from tests.helm.chart import run_helm

    proc = run_helm("install", "ladder", str(CHART), "--namespace", "ladder",
                    "--dry-run=client", "--set", "watchNamespaces={team-a}")
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "serves Sweeps in the namespaces team-a" in notes
    assert "kubectl -n team-a apply -f k8s/examples/paper-grid.yaml" in notes
    assert "grafana_dashboard=\"1\"" in notes
    assert "No ServiceMonitor or PrometheusRule was created" in notes


def test_helm_binary_version() -> None:
    from tests.helm.chart import run_helm

    version = run_helm("version", "--short").stdout.strip()
    gomod = (Path(__file__).parent / "go.mod").read_text()
    pinned = re.search(r"helm\.sh/helm/v4 (v[0-9.]+)", gomod)
    assert pinned is not None and version.startswith(pinned.group(1)), version


def test_controller_args_are_options_of_ladder_controller() -> None:
    """Every flag the chart passes is one `ladder controller` takes (a typo would crash-loop)."""
    import typer.main

    from orchestrator.cli import app

    command = typer.main.get_command(app).commands["controller"]  # type: ignore[attr-defined]
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    objects = render({**WATCH_NAMESPACES, **PEERING, "controller": {
        **PEERING["controller"], "verbose": True}})
    for arg in _controller(objects)["args"]:
        assert arg.split("=", 1)[0] in options, f"`ladder controller` has no option {arg}"


def test_trial_pod_permissions_are_off_and_reach_the_controller() -> None:
    """Hostile input, class 7: what a Sweep may give its pods is the chart's choice
    (trialPods, docs/security.md); off by default, passed to `ladder controller` as env."""
    env = _env(_controller(render({})))
    assert {k: env[k]["value"] for k in (
        "LADDER_ALLOW_TRIAL_SERVICE_ACCOUNT", "LADDER_ALLOWED_TRIAL_SECRETS",
        "LADDER_ALLOW_TRIAL_PROJECTED_TOKENS", "LADDER_ALLOW_TRIAL_NETWORK_VOLUMES")} == {
        "LADDER_ALLOW_TRIAL_SERVICE_ACCOUNT": "false", "LADDER_ALLOWED_TRIAL_SECRETS": "",
        "LADDER_ALLOW_TRIAL_PROJECTED_TOKENS": "false",
        "LADDER_ALLOW_TRIAL_NETWORK_VOLUMES": "false"}
    env = _env(_controller(render({"trialPods": {
        "allowServiceAccountName": True, "allowedSecrets": ["hf-token", "wandb"],
        "allowProjectedTokens": True, "allowNetworkVolumes": True}})))
    assert env["LADDER_ALLOWED_TRIAL_SECRETS"]["value"] == "hf-token,wandb"
    assert env["LADDER_ALLOW_TRIAL_NETWORK_VOLUMES"]["value"] == "true"
    assert "trialPods" in render_error({"trialPods": {"allowEverything": True}})
