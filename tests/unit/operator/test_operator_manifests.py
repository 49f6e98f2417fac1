"""The controller's pure RayJob builders (orchestrator.operator.manifests): names, labels,
owner references, resources per trial, the inline trial payload, clusterSelector mode, and
the manifest checked field by field against KubeRay v1.7's RayJob CRD schema."""

from __future__ import annotations

import functools
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.core.grid import GridPoint, attempt_spec, expand
from orchestrator.core.scheduler import Capacity
from orchestrator.core.spec import (
    MAX_SWEEP_NAME,
    PAPER_LADDER,
    SpecError,
    Sweep,
    SweepSpec,
    load_sweep_text,
)
from orchestrator.core.worker_contract import AttemptSpec
from orchestrator.operator.controller import parse_execution_defaults
from orchestrator.operator.manifests import (
    ANNOTATION_MODEL,
    DEFAULT_IMAGE,
    GPU_RESOURCE,
    LABEL_ATTEMPT,
    LABEL_LANE,
    LABEL_MANAGED_BY,
    LABEL_SWEEP,
    LABEL_TRIAL,
    MAX_NAME,
    TRIAL_JSON_ENV,
    UNBOUNDED,
    ExecutionConfig,
    SecretRef,
    TrialPodPolicy,
    attempt_of,
    decode_trial,
    execution_config,
    is_dns_label,
    label_value,
    merged_execution,
    owned_by,
    pod_policy_problems,
    rayjob_manifest,
    rayjob_name,
    sweep_capacity,
    sweep_selector,
    trial_output_dir,
)

ROOT = Path(__file__).resolve().parents[3]
RAYJOB_CRD = ROOT / "tests" / "crds" / "kuberay-v1.7.0" / "ray.io_rayjobs.yaml"
UID = "0b7e2a9c-5f7e-4c1e-9d1a-3f0e6c1b2a11"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# examples/quickstart.yaml's spec, inline so these tests do not follow the file around.
QUICKSTART = """
apiVersion: ladder.dev/v1alpha1
kind: Sweep
metadata: {name: quickstart}
spec:
  ladder: [ladder/t5-tiny-s, ladder/t5-tiny-m, ladder/t5-tiny-l]
  methods: [full, lora, qlora]
  adapters: [{rank: 8, alphas: [16]}, {rank: 16, alphas: [32]}]
  training: {epochs: 3, learningRate: 1.0e-3, batchSize: 8, precision: fp32, init: random}
  dataset: {source: "builtin:querydsl", size: 48, preamble: short, evalFraction: 0.25}
  resources: {workers: 1, gpusPerWorker: 0}
  escalation: {onOOM: stop-lane, retries: 1, memoryBudget: 160Mi}
  parallelism: 2
"""


def quickstart(execution: dict[str, Any] | None = None, namespace: str = "ml") -> Sweep:
    sweep = load_sweep_text(QUICKSTART)
    spec = sweep.spec
    if execution is not None:
        spec = spec.model_copy(update={"execution": execution})
    return sweep.model_copy(update={"namespace": namespace, "spec": spec})


def paper_spec() -> SweepSpec:
    return SweepSpec(ladder=list(PAPER_LADDER), resources={"workers": 8, "gpusPerWorker": 1})


def paper() -> Sweep:
    return Sweep(name="paper-grid", namespace="research", spec=paper_spec())


def build(
    sweep: Sweep, trial: GridPoint, attempt: int = 1, secret: SecretRef | None = None
) -> tuple[dict[str, Any], AttemptSpec]:
    config = execution_config(sweep)
    output = trial_output_dir(config, sweep.name, trial.trial_id, attempt)
    spec = attempt_spec(sweep, trial, attempt=attempt, output_dir=output)
    return rayjob_manifest(sweep, trial, spec, owner_uid=UID, db_url_secret=secret), spec


def containers(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = manifest["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    (group,) = cluster["workerGroupSpecs"]
    return {"head": head, "worker": group["template"]["spec"]["containers"][0]}


class TestNames:
    def test_format(self) -> None:
        assert rayjob_name("quickstart", "0123456789", 2) == "quickstart-0123456789-2"

    def test_every_trial_of_the_paper_grid_is_unique_and_valid(self) -> None:
        sweep = paper()
        names = {
            rayjob_name(sweep.name, t.trial_id, attempt)
            for t in expand(sweep).all_trials()
            for attempt in (1, 2, 3)
        }
        assert len(names) == 300
        assert all(is_dns_label(n) and len(n) <= MAX_NAME for n in names)

    def test_longest_sweep_name_fits(self) -> None:
        name = rayjob_name("s" * MAX_SWEEP_NAME, "abcdef0123", 999)
        assert len(name) <= MAX_NAME and DNS_LABEL.match(name)
        assert name == f"{'s' * MAX_SWEEP_NAME}-abcdef0123-999"

    @given(
        sweep=st.from_regex(r"[a-z0-9]([-a-z0-9]{0,80}[a-z0-9])?", fullmatch=True),
        trial_id=st.from_regex(r"[0-9a-f]{10}", fullmatch=True),
        attempt=st.integers(min_value=1, max_value=10**6),
    )
    def test_always_a_deterministic_dns_label(self, sweep: str, trial_id: str,
                                              attempt: int) -> None:
        name = rayjob_name(sweep, trial_id, attempt)
        assert len(name) <= MAX_NAME and DNS_LABEL.match(name), name
        assert name == rayjob_name(sweep, trial_id, attempt)
        assert name.endswith(f"-{trial_id}-{attempt}")

    def test_overlong_names_stay_distinct(self) -> None:
        a = rayjob_name("x" * 60 + "a", "abcdef0123", 1)
        b = rayjob_name("x" * 60 + "b", "abcdef0123", 1)
        assert a != b and len(a) <= MAX_NAME and len(b) <= MAX_NAME

    def test_attempts_start_at_one(self) -> None:
        with pytest.raises(ValueError):
            rayjob_name("s", "abcdef0123", 0)

    @pytest.mark.parametrize(
        "value", ["lora-r32-a64-dss0.5-seed0", "x" * 63, "full-dss0.5-seed0-lr5e-05"]
    )
    def test_valid_label_values_are_kept(self, value: str) -> None:
        assert label_value(value) == value

    @pytest.mark.parametrize("value", ["x" * 64, "google/flan-t5-xl", "-odd-", "a b"])
    def test_invalid_label_values_are_made_valid(self, value: str) -> None:
        out = label_value(value)
        assert len(out) <= 63 and LABEL_VALUE.match(out), out
        assert out == label_value(value)


class TestManifest:
    def test_identity_labels_and_owner(self) -> None:
        sweep = quickstart()
        trial = expand(sweep).all_trials()[4]
        manifest, _ = build(sweep, trial, attempt=2)
        meta = manifest["metadata"]
        assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
        assert meta["name"] == f"quickstart-{trial.trial_id}-2"
        assert meta["namespace"] == "ml"
        assert meta["labels"] == {
            LABEL_MANAGED_BY: "ladder",
            LABEL_SWEEP: "quickstart",
            LABEL_LANE: trial.lane.name,
            LABEL_TRIAL: trial.trial_id,
            LABEL_ATTEMPT: "2",
            "ladder.dev/method": trial.lane.method.value,
        }
        assert meta["annotations"][ANNOTATION_MODEL] == trial.model
        assert meta["ownerReferences"] == [{
            "apiVersion": "ladder.dev/v1alpha1", "kind": "Sweep", "name": "quickstart",
            "uid": UID, "controller": True, "blockOwnerDeletion": True,
        }]
        assert attempt_of(manifest) == (trial.trial_id, 2)
        assert owned_by(manifest, UID) and not owned_by(manifest, "other")
        # The pods carry the same labels, so they are found by sweep and trial as well.
        for group in containers(manifest):
            cluster = manifest["spec"]["rayClusterSpec"]
            template = (cluster["headGroupSpec"] if group == "head"
                        else cluster["workerGroupSpecs"][0])["template"]
            assert template["metadata"]["labels"] == meta["labels"]

    def test_selector_matches_labels(self) -> None:
        assert sweep_selector("quickstart") == (
            "app.kubernetes.io/managed-by=ladder,ladder.dev/sweep=quickstart"
        )

    def test_deterministic(self) -> None:
        sweep = quickstart()
        trial = expand(sweep).all_trials()[0]
        assert build(sweep, trial)[0] == build(sweep, trial)[0]

    def test_job_settings(self) -> None:
        sweep = quickstart({"ttlSecondsAfterFinished": 120, "activeDeadlineSeconds": 3600})
        manifest, _ = build(sweep, expand(sweep).all_trials()[0])
        spec = manifest["spec"]
        assert spec["shutdownAfterJobFinishes"] is True
        assert spec["ttlSecondsAfterFinished"] == 120
        assert spec["activeDeadlineSeconds"] == 3600
        assert spec["submissionMode"] == "K8sJobMode"
        assert spec["backoffLimit"] == 0
        assert spec["jobId"] == manifest["metadata"]["name"]
        assert "clusterSelector" not in spec

    def test_http_submission_mode(self) -> None:
        # HTTPMode: the operator posts the job to the head's dashboard; no submitter pod.
        sweep = quickstart({"submissionMode": "HTTPMode"})
        assert build(sweep, expand(sweep).all_trials()[0])[0]["spec"][
            "submissionMode"] == "HTTPMode"
        with pytest.raises(ValueError, match=r"submissionMode|submission_mode"):
            ExecutionConfig.model_validate({"submissionMode": "SidecarMode"})

    def test_default_ttl(self) -> None:
        sweep = quickstart()
        assert build(sweep, expand(sweep).all_trials()[0])[0]["spec"][
            "ttlSecondsAfterFinished"] == 60

    def test_entrypoint_is_the_worker_contract_with_the_trial_inline(self) -> None:
        sweep = quickstart()
        trial = expand(sweep).all_trials()[1]
        manifest, spec = build(sweep, trial, attempt=3)
        entry = manifest["spec"]["entrypoint"]
        trial_file = f"/tmp/ladder/runs/quickstart/{trial.trial_id}/3/trial.json"
        assert spec.output_dir == f"/tmp/ladder/runs/quickstart/{trial.trial_id}/3"
        assert entry.endswith(shlex.join(["python", "-m", "worker", "run", "--trial",
                                          trial_file]))
        assert f"printenv {TRIAL_JSON_ENV} > {trial_file}" in entry
        env = yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])
        payload = AttemptSpec.model_validate(json.loads(env["env_vars"][TRIAL_JSON_ENV]))
        assert payload == spec
        assert decode_trial(manifest) == spec
        assert payload.attempt == 3 and payload.trial_id == trial.trial_id
        assert payload.memory_budget_bytes == 160 * 2**20
        assert "LADDER_DB_URL" not in manifest["spec"]["runtimeEnvYAML"]

    def test_entrypoint_runs_in_a_shell(self) -> None:
        sweep = quickstart({"outputDir": "/data/my runs", "python": "/opt/venv/bin/python"})
        manifest, _ = build(sweep, expand(sweep).all_trials()[0])
        words = shlex.split(manifest["spec"]["entrypoint"])
        assert words[:3] == ["mkdir", "-p", words[2]] and words[2].startswith("/data/my runs/")
        assert words[-6:-1] == ["/opt/venv/bin/python", "-m", "worker", "run", "--trial"]

    def test_extra_runtime_env_is_merged(self) -> None:
        sweep = quickstart({"runtimeEnv": {"env_vars": {"HF_HOME": "/cache"},
                                           "working_dir": "s3://bucket/code.zip"}})
        manifest, _ = build(sweep, expand(sweep).all_trials()[0])
        env = yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])
        assert env["working_dir"] == "s3://bucket/code.zip"
        assert env["env_vars"]["HF_HOME"] == "/cache"
        assert TRIAL_JSON_ENV in env["env_vars"]

    def test_db_url_comes_from_a_secret(self) -> None:
        sweep = quickstart()
        manifest, _ = build(sweep, expand(sweep).all_trials()[0],
                            secret=SecretRef(name="ladder-db", key="url"))
        for container in containers(manifest).values():
            (db,) = [e for e in container["env"] if e["name"] == "LADDER_DB_URL"]
            assert db == {"name": "LADDER_DB_URL",
                          "valueFrom": {"secretKeyRef": {"name": "ladder-db", "key": "url"}}}

    def test_sweep_secret_overrides_the_controllers(self) -> None:
        sweep = quickstart({"dbSecret": {"name": "team-db", "key": "dsn"}})
        manifest, _ = build(sweep, expand(sweep).all_trials()[0], secret=SecretRef(name="x"))
        ref = containers(manifest)["worker"]["env"][0]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "team-db", "key": "dsn"}

    def test_no_secret_no_db_env(self) -> None:
        sweep = quickstart()
        manifest, _ = build(sweep, expand(sweep).all_trials()[0])
        for container in containers(manifest).values():
            assert all(e["name"] != "LADDER_DB_URL" for e in container["env"])

    def test_secret_ref_parsing(self) -> None:
        assert SecretRef.parse("ladder-db") == SecretRef(name="ladder-db", key="url")
        assert SecretRef.parse("db/dsn") == SecretRef(name="db", key="dsn")


class TestResources:
    def test_workers_and_gpus_follow_the_trials_resources(self) -> None:
        # The paper's grid: 8 workers x 1 GPU, except the smaller models on one worker.
        spec = paper_spec()
        spec = spec.model_copy(update={"resources": spec.resources.model_validate({
            "workers": 8, "gpusPerWorker": 1, "cpusPerWorker": 4,
            "overrides": {"google/flan-t5-small": {"workers": 1, "gpusPerWorker": 2}},
        })})
        sweep = Sweep(name="paper-grid", namespace="research", spec=spec)
        lane = expand(sweep).lanes[0]
        small, *_, xl = expand(sweep).trials[lane.name]
        for trial, workers, gpus in ((small, 1, 2), (xl, 8, 1)):
            manifest, _ = build(sweep, trial)
            (group,) = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"]
            assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == workers
            worker = containers(manifest)["worker"]["resources"]
            assert worker["limits"][GPU_RESOURCE] == str(gpus)
            assert worker["requests"]["cpu"] == worker["limits"]["cpu"] == "4"
            assert worker["limits"]["memory"] == "160Gi"
            head = containers(manifest)["head"]["resources"]
            assert GPU_RESOURCE not in head["limits"]
            assert head["limits"] == {"cpu": "2", "memory": "8Gi"}

    def test_cpu_only_trials_ask_for_no_gpu(self) -> None:
        sweep = quickstart()  # gpusPerWorker: 0
        manifest, _ = build(sweep, expand(sweep).all_trials()[0])
        assert GPU_RESOURCE not in containers(manifest)["worker"]["resources"]["limits"]

    def test_execution_template(self) -> None:
        sweep = quickstart({
            "image": "registry.example/ladder-worker:1.2", "imagePullPolicy": "Always",
            "imagePullSecrets": ["regcred"], "serviceAccountName": "trainer",
            "rayVersion": "2.49.0",
            "head": {"cpu": 2, "memory": "8Gi"},
            "worker": {"cpu": "6", "memory": "60Gi", "resources": {"ephemeral-storage": "50Gi"}},
            "env": [{"name": "HF_HOME", "value": "/cache"}],
            "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "hf"}}],
            "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "sharedMemory": "16Gi",
        })
        manifest, _ = build(sweep, expand(sweep).all_trials()[0])
        cluster = manifest["spec"]["rayClusterSpec"]
        assert cluster["rayVersion"] == "2.49.0"
        pod = cluster["workerGroupSpecs"][0]["template"]["spec"]
        (worker,) = pod["containers"]
        assert worker["image"] == "registry.example/ladder-worker:1.2"
        assert worker["imagePullPolicy"] == "Always"
        assert worker["resources"]["limits"] == {
            "cpu": "6", "memory": "60Gi", "ephemeral-storage": "50Gi"
        }
        assert {"name": "HF_HOME", "value": "/cache"} in worker["env"]
        assert {"name": "cache", "mountPath": "/cache"} in worker["volumeMounts"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in worker["volumeMounts"]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod[
            "volumes"]
        assert pod["serviceAccountName"] == "trainer"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["nodeSelector"] == {"gpu": "a100"}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert head["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}

    def test_default_image(self) -> None:
        sweep = quickstart()
        manifest, _ = build(sweep, expand(sweep).all_trials()[0])
        assert {c["image"] for c in containers(manifest).values()} == {DEFAULT_IMAGE}


class TestClusterSelector:
    def test_standing_cluster(self) -> None:
        sweep = quickstart({"clusterSelector": {"ray.io/cluster": "gpu-pool"}})
        manifest, _ = build(sweep, expand(sweep).all_trials()[0], secret=SecretRef(name="db"))
        spec = manifest["spec"]
        assert spec["clusterSelector"] == {"ray.io/cluster": "gpu-pool"}
        assert "rayClusterSpec" not in spec
        # KubeRay refuses shutdownAfterJobFinishes together with a selector.
        assert "shutdownAfterJobFinishes" not in spec
        assert "ttlSecondsAfterFinished" not in spec
        assert spec["submissionMode"] == "K8sJobMode"
        assert "LADDER_DB_URL" not in json.dumps(manifest)


class TestExecutionConfig:
    def test_capacity(self) -> None:
        assert sweep_capacity(ExecutionConfig()) == UNBOUNDED
        config = ExecutionConfig.model_validate({"capacity": {"gpus": 8, "cpus": 64}})
        assert sweep_capacity(config) == Capacity(gpus=8, cpus=64)
        assert sweep_capacity(ExecutionConfig.model_validate({"capacity": {"gpus": 2}})).gpus == 2

    def test_bad_capacity(self) -> None:
        with pytest.raises(ValueError, match="capacity"):
            ExecutionConfig.model_validate({"capacity": {"tpus": 8}})

    def test_unknown_keys_are_left_to_other_backends(self) -> None:
        assert ExecutionConfig.model_validate({"localOnly": 1}).image == DEFAULT_IMAGE

    def test_attempt_of_ignores_foreign_objects(self) -> None:
        assert attempt_of({"metadata": {"labels": {}}}) is None
        assert attempt_of({"metadata": {"labels": {LABEL_TRIAL: "x", LABEL_ATTEMPT: "0"}}}) is None
        assert attempt_of({}) is None
        assert decode_trial({"spec": {"runtimeEnvYAML": "env_vars: {}"}}) is None
        assert decode_trial({"spec": {"runtimeEnvYAML": ": ::"}}) is None


# --- the manifest against KubeRay's CRD schema -----------------------------------------------


@functools.cache
def _load_crd() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(RAYJOB_CRD.read_text(), Loader=loader)


def _rayjob_schema() -> dict[str, Any]:
    if not RAYJOB_CRD.exists():
        pytest.skip(f"KubeRay CRDs not found at {RAYJOB_CRD}")
    crd = _load_crd()
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths in `value` that the structural schema does not declare (the apiserver would
    silently prune them, so a typo there is a setting that never takes effect)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                found += unknown_fields(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(item, extra, f"{path}.{key}")
            elif (props is not None or schema.get("type") == "object") and path != ".metadata":
                found.append(f"{path}.{key}")  # (ObjectMeta is not in CRD schemas)
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


@pytest.mark.parametrize("execution", [
    {},
    {"clusterSelector": {"ray.io/cluster": "gpu-pool"}},
    {"head": {"cpu": 2, "memory": "8Gi"}, "volumes": [{"name": "c", "emptyDir": {}}],
     "volumeMounts": [{"name": "c", "mountPath": "/c"}], "activeDeadlineSeconds": 60,
     "serviceAccountName": "sa", "imagePullSecrets": ["x"], "nodeSelector": {"a": "b"}},
])
def test_manifest_fits_the_kuberay_schema(execution: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = _rayjob_schema()
    sweep = quickstart(execution)
    manifest, _ = build(sweep, expand(sweep).all_trials()[0], secret=SecretRef(name="db"))
    assert unknown_fields(manifest, schema) == []
    # Types, enums and required fields (OpenAPI v3 is close enough to draft 4 for this).
    jsonschema.Draft4Validator(schema).validate(json.loads(json.dumps(manifest)))


def test_paper_grid_manifests_fit_the_schema() -> None:
    schema = _rayjob_schema()
    sweep = paper()
    for trial in expand(sweep).all_trials()[:8]:
        manifest, _ = build(sweep, trial)
        assert unknown_fields(manifest, schema) == []


def test_bare_spec_without_namespace() -> None:
    sweep = Sweep(name="s", spec=SweepSpec(ladder=["m"], methods=["full"]))
    manifest, _ = build(sweep, expand(sweep).all_trials()[0])
    assert "namespace" not in manifest["metadata"]


# --- installation execution defaults ---------------------------------------------------------



@pytest.mark.parametrize(("defaults", "own", "expected"), [
    pytest.param({}, {"image": "a"}, {"image": "a"}, id="no-defaults"),
    pytest.param({"image": "a"}, {}, {"image": "a"}, id="defaults-only"),
    pytest.param({"image": "a"}, {"image": "b"}, {"image": "b"}, id="sweep-wins"),
    pytest.param({"worker": {"cpu": "16", "memory": "160Gi"}}, {"worker": {"memory": "8Gi"}},
                 {"worker": {"cpu": "16", "memory": "8Gi"}}, id="mappings-merge"),
    pytest.param({"tolerations": [{"key": "a"}]}, {"tolerations": []}, {"tolerations": []},
                 id="lists-replaced"),
    pytest.param({"worker": {"resources": {"ephemeral-storage": "100Gi"}}},
                 {"worker": {"resources": {"nvidia.com/mig-1g.10gb": 1}}},
                 {"worker": {"resources": {"ephemeral-storage": "100Gi",
                                           "nvidia.com/mig-1g.10gb": 1}}}, id="nested"),
])
def test_execution_defaults_merge_under_the_sweep(
    defaults: dict, own: dict, expected: dict
) -> None:
    before = json.dumps(defaults, sort_keys=True)
    assert merged_execution(defaults, own) == expected
    assert json.dumps(defaults, sort_keys=True) == before  # the defaults are not mutated


@pytest.mark.parametrize(("execution", "found"), [
    pytest.param({}, [], id="nothing"),
    pytest.param({"volumes": [{"name": "c", "persistentVolumeClaim": {"claimName": "hf"}}]},
                 [], id="pvc-is-fine"),
    pytest.param({"volumes": [{"name": "c", "emptyDir": {}},
                              {"name": "h", "hostPath": {"path": "/"}}]},
                 ["spec.execution.volumes[1].hostPath"], id="host-path"),
])
def test_host_access_names_the_field(execution: dict, found: list[str]) -> None:
    assert [path for path, _ in pod_policy_problems(execution, TrialPodPolicy())] == found


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param(None, {}, id="unset"),
    pytest.param("  ", {}, id="blank"),
    pytest.param('{"image": "w:1", "capacity": {"gpus": 8}}',
                 {"image": "w:1", "capacity": {"gpus": 8}}, id="object"),
])
def test_execution_defaults_from_the_environment(text: str | None, expected: dict) -> None:
    assert parse_execution_defaults(text) == expected


@pytest.mark.parametrize(("text", "problem"), [
    pytest.param("{image: w}", "not valid JSON", id="not-json"),
    pytest.param("[1, 2]", "must be a JSON object, not list", id="not-an-object"),
])
def test_bad_execution_defaults_are_refused(text: str, problem: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_execution_defaults(text)
    assert caught.value.source == "LADDER_DEFAULT_EXECUTION"
    assert problem in caught.value.problems[0][1]
