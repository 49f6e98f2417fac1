"""Smoke tests of the local control plane (etcd + kube-apiserver, tests/k8s/controlplane)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.k8s.conftest import ControlPlane

pytestmark = pytest.mark.k8s

RAYJOB = """
apiVersion: ray.io/v1
kind: RayJob
metadata:
  name: {name}
  namespace: {namespace}
  labels:
    ladder.dev/sweep: smoke
spec:
  entrypoint: python -c "print('hello')"
  shutdownAfterJobFinishes: true
  rayClusterSpec:
    headGroupSpec:
      rayStartParams: {{}}
      template:
        spec:
          containers:
          - name: ray-head
            image: rayproject/ray:2.40.0
            resources:
              limits: {{cpu: "1", memory: 2Gi}}
    workerGroupSpecs:
    - groupName: gpu
      replicas: 1
      minReplicas: 1
      maxReplicas: 1
      rayStartParams: {{}}
      template:
        spec:
          containers:
          - name: ray-worker
            image: rayproject/ray:2.40.0
            resources:
              limits: {{cpu: "2", memory: 8Gi, nvidia.com/gpu: "1"}}
"""


def test_apiserver_is_ready(control_plane: ControlPlane) -> None:
    assert control_plane.kubectl_ok("get", "--raw", "/readyz").strip() == "ok"
    version = json.loads(control_plane.kubectl_ok("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    assert version["serverVersion"]["gitVersion"] == version["clientVersion"]["gitVersion"]


def test_default_namespace_exists(control_plane: ControlPlane) -> None:
    # The apiserver creates default, kube-system and kube-public by itself.
    out = control_plane.kubectl_ok("get", "namespace", "default", "-o", "jsonpath={.status.phase}")
    assert out == "Active"


def test_rayjob_crd_is_established(control_plane: ControlPlane, kuberay_crds: list[str]) -> None:
    assert {"rayjobs.ray.io", "rayclusters.ray.io"} <= set(kuberay_crds)
    status = control_plane.kubectl_ok(
        "get", "crd", "rayjobs.ray.io",
        "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}",
    )  # fmt: skip
    assert status == "True"
    resources = control_plane.kubectl_ok("api-resources", "--api-group=ray.io", "-o", "name")
    assert "rayjobs.ray.io" in resources.split()


def test_prometheus_operator_crds_install(
    control_plane: ControlPlane, prometheus_operator_crds: list[str]
) -> None:
    assert "podmonitors.monitoring.coreos.com" in prometheus_operator_crds


def test_rayjob_roundtrip(
    control_plane: ControlPlane, kuberay_crds: list[str], k8s_namespace: str
) -> None:
    manifest = RAYJOB.format(name="smoke", namespace=k8s_namespace)
    control_plane.kubectl_ok("create", "-f", "-", input=manifest)
    got = json.loads(
        control_plane.kubectl_ok("-n", k8s_namespace, "get", "rayjob", "smoke", "-o", "json")
    )
    assert got["kind"] == "RayJob"
    assert got["metadata"]["labels"]["ladder.dev/sweep"] == "smoke"
    assert got["spec"]["entrypoint"] == "python -c \"print('hello')\""
    worker = got["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert (
        worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    )
    # The status subresource exists and is writable separately from spec.
    control_plane.kubectl_ok(
        "-n", k8s_namespace, "patch", "rayjob", "smoke", "--subresource=status",
        "--type=merge", "-p", '{"status": {"jobStatus": "RUNNING"}}',
    )  # fmt: skip
    status = control_plane.kubectl_ok(
        "-n", k8s_namespace, "get", "rayjob", "smoke", "-o", "jsonpath={.status.jobStatus}"
    )
    assert status == "RUNNING"


def test_rayjob_schema_is_enforced(
    control_plane: ControlPlane, kuberay_crds: list[str], k8s_namespace: str
) -> None:
    bad = RAYJOB.format(name="bad", namespace=k8s_namespace).replace(
        "replicas: 1\n", "replicas: lots\n", 1
    )
    proc = control_plane.kubectl("create", "-f", "-", input=bad)
    assert proc.returncode != 0
    assert "replicas" in proc.stderr


def test_rbac_is_enforced_for_service_accounts(
    control_plane: ControlPlane, kuberay_crds: list[str], k8s_namespace: str, tmp_path: Path
) -> None:
    ns = k8s_namespace
    sa_kubeconfig = control_plane.sa_kubeconfig(ns, "ladder-controller", tmp_path / "sa.kubeconfig")

    def can_i(verb: str, resource: str) -> str:
        proc = control_plane.kubectl(
            "auth", "can-i", verb, resource, "-n", ns, kubeconfig=sa_kubeconfig
        )
        # can-i prints yes/no; it exits 1 for "no".
        assert proc.returncode in (0, 1), proc.stderr
        return proc.stdout.strip()

    whoami = json.loads(
        control_plane.kubectl_ok("auth", "whoami", "-o", "json", kubeconfig=sa_kubeconfig)
    )
    username = whoami["status"]["userInfo"]["username"]
    assert username == f"system:serviceaccount:{ns}:ladder-controller"

    assert can_i("list", "rayjobs.ray.io") == "no"
    denied = control_plane.kubectl("-n", ns, "get", "rayjobs", kubeconfig=sa_kubeconfig)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()

    control_plane.kubectl_ok(
        "-n", ns, "create", "role", "rayjob-editor",
        "--verb=get,list,watch,create,update,patch,delete", "--resource=rayjobs.ray.io",
    )  # fmt: skip
    control_plane.kubectl_ok(
        "-n", ns, "create", "rolebinding", "ladder-controller-rayjobs",
        "--role=rayjob-editor", f"--serviceaccount={ns}:ladder-controller",
    )  # fmt: skip

    assert can_i("list", "rayjobs.ray.io") == "yes"
    assert can_i("create", "rayjobs.ray.io") == "yes"
    # The Role is namespaced and only about rayjobs.
    assert can_i("list", "rayclusters.ray.io") == "no"
    assert can_i("list", "secrets") == "no"
    control_plane.kubectl_ok("-n", ns, "get", "rayjobs", kubeconfig=sa_kubeconfig)
    other = control_plane.create_namespace()
    proc = control_plane.kubectl(
        "auth", "can-i", "list", "rayjobs.ray.io", "-n", other, kubeconfig=sa_kubeconfig
    )
    assert proc.stdout.strip() == "no"
