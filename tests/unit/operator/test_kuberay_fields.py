"""What KubeRay v1.6.2 (the real operator) needs in every RayJob Ladder builds: `rayVersion`
(without it the RayJob stays Initializing forever) and `authOptions` consistent with how
the Ray head runs (Ray 2.60 turns token auth on by default; KubeRay accepts `mode: token`
only with rayVersion >= 2.52.0)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from orchestrator.core.grid import expand
from orchestrator.operator.manifests import (
    RAY_AUTH_MODE_ENV,
    WORKER_RAY_VERSION,
    ExecutionConfig,
    ray_release,
)
from tests.unit.operator.test_operator_manifests import (
    _rayjob_schema,
    build,
    containers,
    quickstart,
    unknown_fields,
)

ROOT = Path(__file__).resolve().parents[3]


def manifest_for(execution: dict[str, Any]) -> dict[str, Any]:
    sweep = quickstart(execution)
    manifest, _ = build(sweep, expand(sweep).all_trials()[0])
    return manifest


def env_names(manifest: dict[str, Any]) -> dict[str, set[str]]:
    return {role: {item["name"] for item in c["env"]}
            for role, c in containers(manifest).items()}


def test_every_rayjob_carries_the_worker_images_ray_version() -> None:
    cluster = manifest_for({})["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == WORKER_RAY_VERSION


def test_the_default_ray_version_is_the_worker_images_and_the_charts() -> None:
    dockerfile = (ROOT / "docker" / "worker.Dockerfile").read_text()
    (base,) = re.findall(r"rayproject/ray:(\d+\.\d+\.\d+)-py", dockerfile)
    values = yaml.safe_load((ROOT / "helm" / "ladder" / "values.yaml").read_text())
    assert base == WORKER_RAY_VERSION
    assert values["execution"].get("rayVersion", WORKER_RAY_VERSION) == WORKER_RAY_VERSION


def test_an_explicit_ray_version_wins() -> None:
    assert manifest_for({"rayVersion": "2.53.1"})["spec"]["rayClusterSpec"][
        "rayVersion"] == "2.53.1"


@pytest.mark.parametrize(("text", "release"), [
    ("2.60.0", (2, 60, 0)), ("2.52", (2, 52, 0)), ("v2.9.3", (2, 9, 3)),
    ("2.53.0rc1", (2, 53, 0)), ("2.60.0-gpu", (2, 60, 0)),
])
def test_ray_release(text: str, release: tuple[int, ...]) -> None:
    assert ray_release(text) == release


@pytest.mark.parametrize("bad", ["", "latest", "2", "two.sixty"])
def test_a_bad_ray_version_is_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ExecutionConfig.model_validate({"rayVersion": bad})
    assert caught.value.errors()[0]["loc"] == ("rayVersion",)


def test_token_auth_by_default_with_a_secret_kuberay_makes() -> None:
    manifest = manifest_for({})
    assert manifest["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    # KubeRay injects RAY_AUTH_MODE/RAY_AUTH_TOKEN itself; Ladder must not pre-empt them.
    assert all(RAY_AUTH_MODE_ENV not in names for names in env_names(manifest).values())


def test_token_auth_with_the_installations_secret() -> None:
    manifest = manifest_for({"authOptions": {"mode": "token", "secretName": "ray-token"}})
    assert manifest["spec"]["rayClusterSpec"]["authOptions"] == {
        "mode": "token", "secretName": "ray-token"}


def test_disabled_auth_runs_the_head_without_tokens() -> None:
    manifest = manifest_for({"authOptions": {"mode": "disabled"}})
    assert manifest["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "disabled"}
    for container in containers(manifest).values():
        assert {"name": RAY_AUTH_MODE_ENV, "value": "disabled"} in container["env"]


def test_ray_before_token_auth_gets_no_auth_options() -> None:
    manifest = manifest_for({"rayVersion": "2.49.0"})
    assert "authOptions" not in manifest["spec"]["rayClusterSpec"]
    assert all(RAY_AUTH_MODE_ENV not in names for names in env_names(manifest).values())


@pytest.mark.parametrize(("execution", "field", "words"), [
    ({"rayVersion": "2.49.0", "authOptions": {"mode": "token"}}, (),
     "authOptions.mode token needs rayVersion 2.52.0 or later"),
    ({"authOptions": {"mode": "disabled", "secretName": "s"}}, ("authOptions",),
     "secretName needs mode token"),
    ({"authOptions": {"mode": "basic"}}, ("authOptions", "mode"), "'token' or 'disabled'"),
])
def test_inconsistent_auth_is_refused(execution: dict, field: tuple, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ExecutionConfig.model_validate(execution)
    error = caught.value.errors()[0]
    assert error["loc"] == field and words in error["msg"]


@pytest.mark.parametrize("execution", [
    {}, {"authOptions": {"mode": "disabled"}},
    {"authOptions": {"mode": "token", "secretName": "ray-token"}},
])
def test_auth_options_fit_the_kuberay_schema(execution: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = _rayjob_schema()
    manifest = manifest_for(execution)
    assert unknown_fields(manifest, schema) == []
    jsonschema.Draft4Validator(schema).validate(json.loads(json.dumps(manifest)))


def test_unschedulable_timeout_default_and_its_crd_type() -> None:
    from orchestrator.crd import spec_schema

    assert ExecutionConfig().unschedulable_timeout_seconds == 600
    assert ExecutionConfig.model_validate(
        {"unschedulableTimeoutSeconds": 30}).unschedulable_timeout_seconds == 30
    with pytest.raises(ValidationError):
        ExecutionConfig.model_validate({"unschedulableTimeoutSeconds": 0})
    execution = spec_schema()["properties"]["execution"]
    assert execution["x-kubernetes-preserve-unknown-fields"] is True  # still open
    typed = execution["properties"]["unschedulableTimeoutSeconds"]
    assert typed["type"] == "number" and typed["exclusiveMinimum"] is True
    assert "default" not in typed  # the chart's execution defaults must still apply


# --- Kueue (KubeRay's documented integration) ----------------------------------------------------


def test_a_queue_name_labels_the_rayjob_and_creates_it_suspended() -> None:
    manifest = manifest_for({"queueName": "team-a-gpus"})
    assert manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
    assert manifest["spec"]["suspend"] is True
    # The trial's own labels stay (the controller finds its RayJobs by them).
    assert manifest["metadata"]["labels"]["ladder.dev/sweep"] == "quickstart"
    # Kueue admits RayJobs that make their own cluster and delete it at the end.
    assert manifest["spec"]["shutdownAfterJobFinishes"] is True
    plain = manifest_for({})
    assert "suspend" not in plain["spec"]
    assert "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]


def test_a_queued_rayjob_fits_the_kuberay_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = _rayjob_schema()
    manifest = manifest_for({"queueName": "team-a-gpus"})
    assert unknown_fields(manifest, schema) == []
    jsonschema.Draft4Validator(schema).validate(json.loads(json.dumps(manifest)))


@pytest.mark.parametrize(("execution", "words"), [
    ({"queueName": "q", "clusterSelector": {"ray.io/cluster": "gpus"}},
     "queueName (Kueue) cannot be used with clusterSelector"),
    ({"queueName": "not a label"}, "should match pattern"),
    ({"queueName": ""}, "at least 1 character"),
])
def test_bad_queue_settings_are_refused(execution: dict, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ExecutionConfig.model_validate(execution)
    assert words in str(caught.value)
