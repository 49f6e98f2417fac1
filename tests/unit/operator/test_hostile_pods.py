"""Hostile input, class 7 ("pods"): a Sweep cannot choose its pods' service account, mount a
Secret other than the store's, mount projected service-account tokens, or mount network and
node volumes, unless the installation permits it (the chart's `trialPods` and
`allowPrivilegedTrials`; docs/security.md, "Trial pods").

The corpus tests/data/refused-pod-sweeps/ holds Sweeps that are valid Sweeps (the CRD and
`ladder validate` accept them: what pods may hold is the installation's choice) and that a
default installation refuses: each file names the field (`# expect:`) and the chart value that
would allow it (`# allowed-by:`). The reconciler runs against the in-memory FakeCluster of
test_reconcile.py and a real SQLite store.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator import cli, store
from orchestrator.core.grid import attempt_spec, expand
from orchestrator.core.spec import parse_sweep
from orchestrator.files import load_sweep
from orchestrator.operator.manifests import (
    ANY_SECRET,
    PodPolicyError,
    SecretRef,
    TrialPodPolicy,
    execution_config,
    rayjob_manifest,
)
from orchestrator.operator.reconcile import Reconciler
from tests.unit.operator.test_reconcile import NS, SPEC, FakeCluster

CORPUS = Path(__file__).resolve().parents[2] / "data" / "refused-pod-sweeps"
FILES = sorted(CORPUS.glob("*.yaml"))
STORE = SecretRef(name="ladder-db", key="url")
# Each chart value, as the controller's policy.
ALLOWED_BY = {
    "allowPrivilegedTrials": TrialPodPolicy(host_paths=True),
    "trialPods.allowServiceAccountName": TrialPodPolicy(service_account=True),
    "trialPods.allowedSecrets": TrialPodPolicy(secrets=frozenset({"other-team-token"})),
    "trialPods.allowProjectedTokens": TrialPodPolicy(projected_tokens=True),
    "trialPods.allowNetworkVolumes": TrialPodPolicy(network_volumes=True),
}


@pytest.fixture
def sessions(tmp_path: Path) -> Any:
    return store.open_store(f"sqlite:///{tmp_path / 'ladder.db'}")


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


def header(path: Path, key: str) -> str:
    prefix = f"# {key}: "
    line = next(x for x in path.read_text(encoding="utf-8").splitlines() if x.startswith(prefix))
    return line.removeprefix(prefix).strip()


def reconcile_file(sessions: Any, path: Path, **options: Any) -> tuple[Any, FakeCluster, str]:
    body = yaml.safe_load(path.read_text(encoding="utf-8"))
    name = body["metadata"]["name"]
    body["metadata"].update({"namespace": NS, "uid": str(uuid.uuid4()), "generation": 1})
    cluster = FakeCluster()
    cluster.sweeps[(NS, name)] = body
    result = Reconciler(cluster, sessions, db_secret=STORE, **options).reconcile(NS, name)
    assert result is not None
    return result, cluster, name


def test_the_corpus_covers_every_permission() -> None:
    assert len(FILES) >= 10
    assert {header(p, "allowed-by") for p in FILES} == set(ALLOWED_BY)


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in FILES])
def test_a_default_installation_refuses_naming_the_field(sessions: Any, path: Path) -> None:
    load_sweep(path)  # a valid Sweep: what its pods may hold is the installation's choice
    result, cluster, name = reconcile_file(sessions, path)
    field = header(path, "expect")
    assert result.invalid is not None and f"{field}: " in result.invalid, result.invalid
    assert header(path, "allowed-by").split(".")[-1] in result.invalid  # says what allows it
    status = cluster.sweeps[(NS, name)]["status"]
    assert status["reason"] == "InvalidSpec" and cluster.rayjobs == {}


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in FILES])
def test_the_chart_value_permits_it(sessions: Any, path: Path) -> None:
    """...and the one permission it names lets the same Sweep through, into its pods."""
    policy = ALLOWED_BY[header(path, "allowed-by")]
    result, cluster, _ = reconcile_file(sessions, path, pod_policy=policy)
    assert result.invalid is None, result.invalid
    (job,) = cluster.rayjobs.values()
    pod = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    execution = yaml.safe_load(path.read_text(encoding="utf-8"))["spec"]["execution"]
    for volume in execution.get("volumes", []):
        assert volume in pod["volumes"]
    if "serviceAccountName" in execution:
        assert pod["serviceAccountName"] == execution["serviceAccountName"]


def test_the_stores_secret_and_plain_volumes_are_always_allowed(
    cluster: FakeCluster, sessions: Any
) -> None:
    cluster.add_sweep("qs", {**SPEC, "methods": ["full"], "execution": {
        "dbSecret": {"name": "ladder-db", "key": "url"},
        "env": [{"name": "DB", "valueFrom": {"secretKeyRef": {"name": "ladder-db",
                                                               "key": "url"}}}],
        "volumes": [{"name": "e", "emptyDir": {}}, {"name": "c", "configMap": {"name": "cm"}},
                    {"name": "d", "persistentVolumeClaim": {"claimName": "hf-cache"}},
                    {"name": "p", "projected": {"sources": [{"configMap": {"name": "cm"}},
                                                            {"downwardAPI": {"items": []}}]}}],
    }})
    result = Reconciler(cluster, sessions, db_secret=STORE).reconcile(NS, "qs")
    assert result is not None and result.invalid is None, result.invalid
    assert len(cluster.jobs()) == 1


def test_what_the_installation_defaults_hold_is_allowed(
    cluster: FakeCluster, sessions: Any
) -> None:
    """The chart's own execution values are the operator's choice: a Sweep inherits them, and
    may repeat them, but cannot add to them."""
    nfs = {"name": "data", "nfs": {"server": "10.0.0.1", "path": "/data"}}
    defaults = {"serviceAccountName": "trainer", "volumes": [nfs],
                "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
                    "name": "hf-token", "key": "token"}}}]}
    reconciler = Reconciler(cluster, sessions, db_secret=STORE, execution_defaults=defaults)
    cluster.add_sweep("inherits", {**SPEC, "methods": ["full"]})
    cluster.add_sweep("repeats", {**SPEC, "methods": ["full"], "execution": {
        "serviceAccountName": "trainer", "volumes": [nfs, {"name": "e", "emptyDir": {}}],
        "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "t"}}}],
    }})
    cluster.add_sweep("adds", {**SPEC, "methods": ["full"], "execution": {
        "serviceAccountName": "admin",
        "volumes": [{"name": "data", "nfs": {"server": "10.6.6.6", "path": "/"}}],
    }})
    for name in ("inherits", "repeats"):
        result = reconciler.reconcile(NS, name)
        assert result is not None and result.invalid is None, (name, result.invalid)
    result = reconciler.reconcile(NS, "adds")
    assert result is not None and result.invalid is not None
    assert "spec.execution.serviceAccountName: " in result.invalid
    assert "spec.execution.volumes[0].nfs: " in result.invalid


def test_the_builder_refuses_a_pod_the_policy_does_not_permit() -> None:
    """Defence in depth: rayjob_manifest itself checks every pod it builds."""
    body = {**SPEC, "methods": ["full"], "execution": {
        "serviceAccountName": "admin",
        "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {
            "path": "t"}}]}}]}}
    sweep = parse_sweep({"apiVersion": "ladder.dev/v1alpha1", "kind": "Sweep",
                         "metadata": {"name": "qs", "namespace": NS}, "spec": body})
    trial = expand(sweep).all_trials()[0]
    spec = attempt_spec(sweep, trial, attempt=1, output_dir="/tmp/x")
    config = execution_config(sweep)
    with pytest.raises(PodPolicyError) as refused:
        rayjob_manifest(sweep, trial, spec, owner_uid="u", config=config,
                        policy=TrialPodPolicy(store_secret="ladder-db"))
    assert "pod.serviceAccountName" in str(refused.value)
    assert "serviceAccountToken" in str(refused.value)
    permissive = TrialPodPolicy(service_account=True, projected_tokens=True)
    assert rayjob_manifest(sweep, trial, spec, owner_uid="u", config=config, policy=permissive)
    assert rayjob_manifest(sweep, trial, spec, owner_uid="u", config=config)  # no policy


def test_any_secret_means_any(sessions: Any) -> None:
    path = CORPUS / "secret-volume.yaml"
    policy = replace(TrialPodPolicy(), secrets=frozenset({ANY_SECRET}))
    result, _, _ = reconcile_file(sessions, path, pod_policy=policy)
    assert result.invalid is None


def test_the_controller_reads_the_permissions_from_the_chart_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The env vars the chart sets (tests/helm: trialPods) become the controller's policy."""
    seen: list[Any] = []
    monkeypatch.setattr("orchestrator.operator.controller.run_controller",
                        lambda options: seen.append(options))
    env = {"LADDER_ALLOW_TRIAL_SERVICE_ACCOUNT": "true",
           "LADDER_ALLOWED_TRIAL_SECRETS": "hf-token, wandb",
           "LADDER_ALLOW_TRIAL_PROJECTED_TOKENS": "false",
           "LADDER_ALLOW_TRIAL_NETWORK_VOLUMES": "true",
           "LADDER_ALLOW_PRIVILEGED_TRIALS": "false"}
    out = CliRunner().invoke(cli.app, ["controller", "--db", "sqlite://"], env=env)
    assert out.exit_code == 0, out.output
    (options,) = seen
    assert options.pod_policy == TrialPodPolicy(
        service_account=True, secrets=frozenset({"hf-token", "wandb"}), network_volumes=True)


def test_trial_pods_get_no_api_token_unless_given_a_service_account(
    cluster: FakeCluster, sessions: Any
) -> None:
    """The namespace's default service account's token is not mounted into trial pods; a
    service account the installation chose keeps Kubernetes' default."""
    cluster.add_sweep("plain", {**SPEC, "methods": ["full"]})
    cluster.add_sweep("chosen", {**SPEC, "methods": ["full"]})
    Reconciler(cluster, sessions, db_secret=STORE).reconcile(NS, "plain")
    Reconciler(cluster, sessions, db_secret=STORE,
               execution_defaults={"serviceAccountName": "trainer"}).reconcile(NS, "chosen")
    pods = {job["metadata"]["labels"]["ladder.dev/sweep"]:
            job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
            for job in cluster.rayjobs.values()}
    assert pods["plain"]["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pods["plain"]
    assert pods["chosen"]["serviceAccountName"] == "trainer"
    assert "automountServiceAccountToken" not in pods["chosen"]
