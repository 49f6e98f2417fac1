"""Security properties of the controller and the CLI (issue 8, "Security"; docs/security.md).

- No secret leaks: a database URL with a password, quoted by a failing worker or by KubeRay's
  status, never reaches a Sweep's status, its events, the controller's logs, the metrics or
  `ladder results`; the CLI prints store URLs redacted.
- Metrics never carry user free text as labels, and every label name is a declared one.
- A Sweep cannot make the controller create objects in another namespace: whatever
  `spec.execution` says, every RayJob is in the Sweep's namespace and owned by the Sweep, and
  no pod of it asks for privileges or the node's namespaces.

The reconcile path runs against the in-memory FakeCluster of test_reconcile.py and a real
SQLite store; the CLI runs through typer's CliRunner.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from orchestrator import store
from orchestrator.cli import app
from orchestrator.core.lifecycle import LaneState, Method, OOMKind, TrialState
from orchestrator.core.plan import SweepPhase
from orchestrator.core.spec import API_VERSION, KIND
from orchestrator.metrics import (
    KIND_LABEL,
    LABEL_NAMES,
    PHASE_LABEL,
    STATE_LABEL,
    LadderMetrics,
)
from orchestrator.operator.manifests import ANY_SECRET, TrialPodPolicy
from orchestrator.operator.reconcile import Reconciler
from tests.unit.operator.test_reconcile import NS, SPEC, FakeCluster, write_result

QUICKSTART = Path(__file__).resolve().parents[3] / "examples" / "quickstart.yaml"
PASSWORD = "s3cret-Pa55"
DB_URL = f"postgresql+psycopg://ladder:{PASSWORD}@db.example:5432/ladder"
# What a failing driver or a traceback might say: the URL, libpq's DSN, a query parameter.
LEAKY_ERRORS = [
    pytest.param(f"OperationalError: cannot connect to {DB_URL}", id="url"),
    pytest.param(f"psycopg.OperationalError: connection failed: host=db.example user=ladder "
                 f"password={PASSWORD} dbname=ladder", id="libpq-dsn"),
    pytest.param(f"Traceback (most recent call last):\n  File \"x.py\"\n    engine = "
                 f"create_engine('{DB_URL}?password={PASSWORD}')\nValueError: \"quoted\"",
                 id="traceback-with-query-password"),
]


@pytest.fixture
def sessions(tmp_path: Path) -> Any:
    return store.open_store(f"sqlite:///{tmp_path / 'ladder.db'}")


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


def _everything_said(cluster: FakeCluster, metrics: LadderMetrics,
                     caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    return {
        "status": json.dumps(cluster.sweeps[(NS, "qs")].get("status", {})),
        "events": json.dumps(cluster.events),
        "logs": "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records),
        "metrics": generate_latest(metrics.registry).decode(),
    }


class TestNoSecretLeaks:
    @pytest.mark.parametrize("error", LEAKY_ERRORS)
    def test_a_workers_error_is_redacted_everywhere(
        self, cluster: FakeCluster, sessions: Any, caplog: pytest.LogCaptureFixture,
        tmp_path: Path, error: str,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        metrics = LadderMetrics()
        metrics.watch_store(sessions)
        reconciler = Reconciler(cluster, sessions, metrics=metrics)
        cluster.add_sweep("qs", {**SPEC, "methods": ["full"], "escalation": {"retries": 0}})
        reconciler.reconcile(NS, "qs")
        (job,) = cluster.jobs()
        write_result(sessions, cluster, job, status=TrialState.FAILED, error=error)
        cluster.finish(job, "FAILED", "Failed", error)
        reconciler.reconcile(NS, "qs")
        said = _everything_said(cluster, metrics, caplog)
        assert "TrialFailed" in cluster.reasons()  # the failure was reported...
        assert "***" in said["events"]  # ...with the password redacted
        for where, text in said.items():
            assert PASSWORD not in text, f"the password leaked into the {where}:\n{text}"
        with sessions() as session:
            errors = [row.error for row in store.attempts(session, NS, "qs") if row.error]
        assert errors and not any(PASSWORD in e for e in errors), errors
        self._results_do_not_leak(tmp_path)

    @pytest.mark.parametrize("error", LEAKY_ERRORS)
    def test_a_rayjob_status_message_is_redacted(
        self, cluster: FakeCluster, sessions: Any, caplog: pytest.LogCaptureFixture,
        error: str,
    ) -> None:
        """KubeRay's own message (the worker never wrote a result): same rule."""
        caplog.set_level(logging.DEBUG)
        metrics = LadderMetrics()
        metrics.watch_store(sessions)
        reconciler = Reconciler(cluster, sessions, metrics=metrics)
        cluster.add_sweep("qs", {**SPEC, "methods": ["full"], "escalation": {"retries": 0}})
        reconciler.reconcile(NS, "qs")
        (job,) = cluster.jobs()
        cluster.finish(job, "FAILED", "Failed", error)
        reconciler.reconcile(NS, "qs")
        assert "TrialFailed" in cluster.reasons()
        for where, text in _everything_said(cluster, metrics, caplog).items():
            assert PASSWORD not in text, f"the password leaked into the {where}:\n{text}"

    @staticmethod
    def _results_do_not_leak(tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'ladder.db'}"
        for extra in ([], ["--json"], ["--csv"], ["--all-attempts"]):
            out = CliRunner().invoke(app, ["results", "--db", url, *extra],
                                     env={"COLUMNS": "400"})
            assert out.exit_code == 0, out.output
            assert "qs" in out.output or "trial" in out.output
            assert PASSWORD not in out.output, out.output

    @pytest.mark.parametrize("command", [
        pytest.param(["run", str(QUICKSTART)], id="ladder-run"),
        pytest.param(["results"], id="ladder-results"),
        pytest.param(["status"], id="ladder-status"),
    ])
    @pytest.mark.parametrize("url", [
        pytest.param("postgresql+psycopg://ladder:{pw}@127.0.0.1:1/ladder", id="unreachable"),
        pytest.param("postgresql+psycopg://ladder:{pw}@db:notaport/ladder", id="bad-port"),
        pytest.param("ladder:{pw}@db/ladder", id="no-scheme"),
        pytest.param("postgresql+psycopg://db/ladder?user=ladder&password={pw}",
                     id="query-password"),
    ])
    def test_the_cli_prints_store_urls_redacted(self, command: list[str], url: str) -> None:
        out = CliRunner().invoke(app, [*command, "--db", url.format(pw=PASSWORD)],
                                 env={"COLUMNS": "400"}, catch_exceptions=False)
        assert out.exit_code == 1, out.output
        assert "cannot open the store" in out.output and "***" in out.output, out.output
        assert PASSWORD not in out.output, out.output

    def test_redaction_keeps_what_is_not_a_password(self) -> None:
        text = "ratio 1:2 at x@y; see http://example.com/a:b; sqlite:///ladder.db"
        assert store.redact_secrets(text) == text
        assert store.redact_url("sqlite:///ladder.db") == "sqlite:///ladder.db"


# --- metrics: bounded labels, no free text ----------------------------------------------------

# Every label name a Ladder metric may carry (orchestrator/metrics.py), and the histograms'.
DECLARED_LABELS = {*LABEL_NAMES, "le"}
# Label values drawn from closed sets.
CLOSED_VALUES = {
    STATE_LABEL: {s.value for s in TrialState} | {s.value for s in LaneState},
    KIND_LABEL: {k.value for k in OOMKind},
    PHASE_LABEL: {p.value for p in SweepPhase},
    "method": {m.value for m in Method},
}
NASTY_ERROR = (f'RuntimeError: "quoted" \'single\' {{braces}} label="x"\nsecond line\r\n'
               f"connecting to {DB_URL}\n\ttab\\backslash")


def _samples(metrics: LadderMetrics) -> Iterator[tuple[str, Mapping[str, str]]]:
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            yield sample.name, sample.labels


def test_metrics_labels_are_bounded_and_never_free_text(
    cluster: FakeCluster, sessions: Any
) -> None:
    metrics = LadderMetrics()
    metrics.watch_store(sessions)
    reconciler = Reconciler(cluster, sessions, metrics=metrics)
    cluster.add_sweep("qs", SPEC)
    reconciler.reconcile(NS, "qs")
    first, second = cluster.jobs()
    write_result(sessions, cluster, first, status=TrialState.FAILED, error=NASTY_ERROR)
    write_result(sessions, cluster, second, status=TrialState.OOM, oom_kind=OOMKind.GPU,
                 error=NASTY_ERROR)
    reconciler.reconcile(NS, "qs")
    samples = list(_samples(metrics))
    assert any(name.startswith("ladder_trial") for name, _ in samples)
    fragments = ["quoted", "second line", "braces", "RuntimeError", PASSWORD, "db.example"]
    for name, labels in samples:
        assert set(labels) <= DECLARED_LABELS, (name, labels)
        for key, value in labels.items():
            assert not any(f in value for f in fragments), (name, key, value)
            assert "\n" not in value and len(value) <= 256, (name, key, value)
            if key in CLOSED_VALUES:
                assert value in CLOSED_VALUES[key], (name, key, value)
            if key in ("rank", "alpha", "seed"):
                assert value == "" or value.lstrip("-").isdigit(), (name, key, value)
    # The raw exposition text carries no part of the error either (values are numbers).
    text = generate_latest(metrics.registry).decode()
    assert PASSWORD not in text and "second line" not in text


# --- namespaces: a Sweep cannot reach outside its own -----------------------------------------

EXECUTIONS = [
    pytest.param({"namespace": "kube-system"}, id="namespace-key"),
    pytest.param({"metadata": {"namespace": "kube-system", "name": "evil"}}, id="metadata-key"),
    pytest.param({"head": {"namespace": "kube-system"}, "worker": {"namespace": "default"}},
                 id="pod-shape-namespace"),
    pytest.param({"clusterSelector": {"ray.io/cluster": "gpus", "namespace": "kube-system"}},
                 id="cluster-selector"),
    pytest.param({"volumes": [{"name": "s", "secret": {"secretName": "kube-system/token"}},
                              {"name": "p", "projected": {"sources": [
                                  {"serviceAccountToken": {"path": "t", "audience": "x"}}]}}],
                  "volumeMounts": [{"name": "s", "mountPath": "/s"}],
                  "env": [{"name": "X", "valueFrom": {"secretKeyRef": {
                      "name": "other", "key": "k", "namespace": "kube-system"}}}]},
                 id="volumes-and-env"),
    pytest.param({"serviceAccountName": "system:serviceaccount:kube-system:admin",
                  "dbSecret": {"name": "kube-system", "key": "url"},
                  "runtimeEnv": {"namespace": "kube-system"}},
                 id="service-account-and-secrets"),
    pytest.param({"securityContext": {"privileged": True}, "hostNetwork": True, "hostPID": True,
                  "head": {"securityContext": {"privileged": True}, "hostIPC": True},
                  "worker": {"securityContext": {"allowPrivilegeEscalation": True}}},
                 id="privileged-pod-settings"),
]
# Pod settings that reach the node; `spec.execution` can ask for none of them (hostPath
# volumes need the installation's consent: test_reconcile.py, host_path_volumes_need_...).
NODE_ACCESS = ("privileged", "hostNetwork", "hostPID", "hostIPC", "hostPath")


def _items(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield str(key), value
            yield from _items(value)
    elif isinstance(node, list):
        for item in node:
            yield from _items(item)


def _pods(job: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    cluster = job["spec"].get("rayClusterSpec")
    if cluster is None:  # a standing cluster (clusterSelector): no pods of ours
        return
    yield cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster["workerGroupSpecs"]:
        yield group["template"]["spec"]


def _metadata_namespaces(node: Any) -> Iterator[str]:
    """Every `namespace` of an object or template `metadata` anywhere in a manifest."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "metadata" and isinstance(value, Mapping) and "namespace" in value:
                yield str(value["namespace"])
            yield from _metadata_namespaces(value)
    elif isinstance(node, list):
        for item in node:
            yield from _metadata_namespaces(item)


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_rayjobs_stay_in_the_sweeps_namespace(
    cluster: FakeCluster, sessions: Any, execution: dict[str, Any]
) -> None:
    # An installation that permits every pod option (service accounts, any Secret, projected
    # tokens, network volumes): even then nothing leaves the Sweep's namespace. What a default
    # installation refuses is in test_hostile_pods.py.
    permissive = TrialPodPolicy(service_account=True, secrets=frozenset({ANY_SECRET}),
                                projected_tokens=True, network_volumes=True)
    reconciler = Reconciler(cluster, sessions, pod_policy=permissive)
    body = cluster.add_sweep("qs", {**SPEC, "execution": execution})
    result = reconciler.reconcile(NS, "qs")
    assert result is not None and result.invalid is None
    assert len(cluster.rayjobs) == 2  # the lane heads were launched...
    for (namespace, _), job in cluster.rayjobs.items():  # ...each in the Sweep's namespace
        assert namespace == NS and job["metadata"]["namespace"] == NS
        assert set(_metadata_namespaces(job)) <= {NS}, job
        assert not {k for k, _ in _items(job)} & set(NODE_ACCESS), job
        assert not [v for k, v in _items(job) if k == "allowPrivilegeEscalation" and v], job
        for pod in _pods(job):
            assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
            for container in pod["containers"]:
                assert container["securityContext"] == {
                    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        assert job["metadata"]["ownerReferences"] == [{
            "apiVersion": API_VERSION, "kind": KIND, "name": "qs",
            "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True,
        }]
