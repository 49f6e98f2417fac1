"""The KubeRay stand-in's copies of what the real operator (v1.6.2) refuses, and Ladder's
RayJobs against them: a RayJob without `rayVersion` (stays Initializing), token auth with a
Ray before 2.52 (ValidationFailed), a Ray 2.60 head KubeRay cannot authenticate to (stays
Running). Ladder's own manifests must pass all three in every auth mode."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core.grid import expand
from tests.k8s.kuberay_standin import head_accepts_kuberay, validation_error
from tests.unit.operator.test_operator_manifests import build, quickstart


def cluster_spec(execution: dict[str, Any]) -> dict[str, Any]:
    sweep = quickstart(execution)
    manifest, _ = build(sweep, expand(sweep).all_trials()[0])
    return manifest["spec"]


@pytest.mark.parametrize("execution", [
    {}, {"authOptions": {"mode": "disabled"}}, {"rayVersion": "2.49.0"},
    {"authOptions": {"mode": "token", "secretName": "ray-token"}},
])
def test_ladders_rayjobs_pass_what_kuberay_checks(execution: dict[str, Any]) -> None:
    spec = cluster_spec(execution)
    assert spec["rayClusterSpec"]["rayVersion"]
    assert validation_error(spec) is None
    assert head_accepts_kuberay(spec["rayClusterSpec"])


def test_the_stand_in_refuses_what_kuberay_refuses() -> None:
    spec = cluster_spec({})
    cluster = spec["rayClusterSpec"]
    old = {**spec, "rayClusterSpec": {**cluster, "rayVersion": "2.49.0"}}
    assert "minimum Ray version is 2.52.0, got 2.49.0" in (validation_error(old) or "")
    unversioned = {**spec, "rayClusterSpec": {k: v for k, v in cluster.items()
                                              if k != "rayVersion"}}
    assert "RayVersion was not specified" in (validation_error(unversioned) or "")
    # A Ray 2.60 head without authOptions (and without RAY_AUTH_MODE=disabled) wants a token.
    bare = {k: v for k, v in cluster.items() if k != "authOptions"}
    assert not head_accepts_kuberay(bare)
    assert head_accepts_kuberay({**bare, "rayVersion": "2.49.0"})
