"""What a trial's pods need on GPU nodes: shared storage for what rank 0 keeps.

A per-trial RayCluster runs the driver on the head and every rank on a worker pod, so
`<outputDir>` is a different disk on each; trial results travel through Ray, the weights of
`training.saveModel` need a volume every Ray pod shares.
"""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core.spec import SaveModel, Sweep
from orchestrator.operator.manifests import execution_config, unshared_outputs
from orchestrator.operator.reconcile import Reconciler
from tests.unit.operator.test_operator_manifests import quickstart
from tests.unit.operator.test_reconcile import NS, SPEC, FakeCluster


def _saving(execution: dict[str, Any], save: str = "best") -> Sweep:
    sweep = quickstart(execution)
    training = sweep.spec.training.model_copy(update={"save_model": SaveModel(save)})
    return sweep.model_copy(update={"spec": sweep.spec.model_copy(update={"training": training})})


PVC = {"name": "models", "persistentVolumeClaim": {"claimName": "ladder-models"}}


@pytest.mark.parametrize(("execution", "save", "refused"), [
    pytest.param({}, "none", False, id="measure-only-needs-nothing"),
    pytest.param({}, "best", True, id="best-on-pod-local-disk"),
    pytest.param({}, "final", True, id="final-on-pod-local-disk"),
    pytest.param({"outputDir": "/models/runs", "volumes": [PVC],
                  "volumeMounts": [{"name": "models", "mountPath": "/models"}]}, "best", False,
                 id="claim-over-the-output-dir"),
    pytest.param({"outputDir": "/models", "volumes": [PVC],
                  "volumeMounts": [{"name": "models", "mountPath": "/models/"}]}, "best", False,
                 id="claim-exactly-at-the-output-dir"),
    pytest.param({"outputDir": "/models/runs", "volumes": [PVC],
                  "volumeMounts": [{"name": "models", "mountPath": "/model"}]}, "best", True,
                 id="claim-mounted-beside-not-over"),
    pytest.param({"outputDir": "/scratch/runs", "volumes": [{"name": "s", "emptyDir": {}}],
                  "volumeMounts": [{"name": "s", "mountPath": "/scratch"}]}, "best", True,
                 id="emptydir-is-per-pod"),
    pytest.param({"outputDir": "/scratch/runs",
                  "volumes": [{"name": "s", "hostPath": {"path": "/data"}}],
                  "volumeMounts": [{"name": "s", "mountPath": "/scratch"}]}, "best", True,
                 id="hostpath-is-per-node"),
    pytest.param({"outputDir": "/models/runs", "volumes": [PVC],
                  "volumeMounts": [{"name": "other", "mountPath": "/models"}]}, "best", True,
                 id="mount-of-an-undeclared-volume"),
    pytest.param({"clusterSelector": {"ray.io/cluster": "gpus"}}, "best", False,
                 id="standing-cluster-is-not-ours-to-inspect"),
])
def test_saved_weights_need_storage_every_pod_shares(
    execution: dict[str, Any], save: str, refused: bool
) -> None:
    sweep = _saving(execution, save)
    problems = unshared_outputs(sweep, execution_config(sweep))
    assert bool(problems) == refused
    if refused:
        ((field, message),) = problems
        assert field == "spec.training.saveModel"
        assert "spec.execution.outputDir" in message and "ReadWriteMany" in message


def test_the_controller_refuses_such_a_sweep_naming_the_field(tmp_path) -> None:
    from orchestrator import store

    cluster = FakeCluster()
    reconciler = Reconciler(cluster, store.open_store(f"sqlite:///{tmp_path / 'l.db'}"))
    cluster.add_sweep("qs", {**SPEC, "training": {"epochs": 1, "saveModel": "best"}})
    result = reconciler.reconcile(NS, "qs")
    assert result is not None and result.invalid is not None and cluster.jobs() == []
    assert "spec.training.saveModel" in result.invalid
    assert "spec.training.saveModel" in cluster.sweeps[(NS, "qs")]["status"]["message"]


def test_the_builders_defaults_are_the_charts() -> None:
    """A controller run without the chart builds the pods the chart would (16Gi of memory and
    2Gi of /dev/shm before, against the chart's 160Gi and 32Gi)."""
    import yaml

    from orchestrator.operator.manifests import ExecutionConfig
    from tests.unit.operator.test_operator_manifests import ROOT

    chart = yaml.safe_load((ROOT / "helm/ladder/values.yaml").read_text())["execution"]
    builder = ExecutionConfig().model_dump(by_alias=True)
    for key in ("head", "sharedMemory", "outputDir", "ttlSecondsAfterFinished"):
        got = builder[key]
        if isinstance(got, dict):
            got = {k: v for k, v in got.items() if v not in (None, {})}
        assert got == chart[key], key
    assert builder["worker"]["memory"] == chart["worker"]["memory"]
    assert builder["worker"]["resources"] == chart["worker"]["resources"]
    # cpu stays the Sweep's cpusPerWorker unless an installation sets it (the chart: 16).
    assert builder["worker"]["cpu"] is None


# --- pod shapes: one worker per pod, or node-sized pods (NCCL on NVLink within a node) -----


def _paper_trial(execution: dict[str, Any], workers: int, gpus: int = 1):
    from orchestrator.core.grid import expand
    from tests.unit.operator.test_operator_manifests import build, paper_spec

    spec = paper_spec()
    spec = spec.model_copy(update={
        "execution": execution,
        "resources": spec.resources.model_validate(
            {"workers": workers, "gpusPerWorker": gpus, "cpusPerWorker": 4})})
    sweep = Sweep(name="paper-grid", namespace="research", spec=spec)
    trial = expand(sweep).all_trials()[0]
    manifest, _ = build(sweep, trial)
    (group,) = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return group


def _limits(group: dict[str, Any]) -> dict[str, str]:
    return group["template"]["spec"]["containers"][0]["resources"]["limits"]


@pytest.mark.parametrize(("execution", "workers", "pods", "gpus_per_pod"), [
    pytest.param({}, 8, 8, 1, id="node-size-unknown-one-per-pod"),
    pytest.param({"gpusPerNode": 8}, 8, 1, 8, id="auto-whole-node"),
    pytest.param({"gpusPerNode": 4}, 8, 2, 4, id="auto-two-whole-nodes"),
    pytest.param({"gpusPerNode": 8}, 4, 4, 1, id="auto-part-of-a-node-one-per-pod"),
    pytest.param({"gpusPerNode": 8}, 12, 12, 1, id="auto-not-whole-nodes-one-per-pod"),
    pytest.param({"gpusPerNode": 8, "podShape": "worker"}, 8, 8, 1, id="worker-forced"),
    pytest.param({"gpusPerNode": 8, "podShape": "node"}, 4, 1, 4, id="node-packs-a-part"),
    pytest.param({"gpusPerNode": 8, "podShape": "node"}, 12, 2, 6, id="node-packs-evenly"),
])
def test_pod_shapes(execution: dict[str, Any], workers: int, pods: int,
                    gpus_per_pod: int) -> None:
    group = _paper_trial(execution, workers)
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == pods
    limits = _limits(group)
    per_pod = workers // pods
    assert limits["nvidia.com/gpu"] == str(gpus_per_pod) and per_pod == gpus_per_pod
    # A pod of k workers asks for k workers' CPUs, memory and scratch space.
    assert limits["cpu"] == str(4 * per_pod)
    assert limits["memory"] == f"{160 * per_pod}Gi"
    assert limits["ephemeral-storage"] == f"{100 * per_pod}Gi"


def test_cpu_trials_keep_one_worker_per_pod() -> None:
    group = _paper_trial({"gpusPerNode": 8, "podShape": "node"}, 8, gpus=0)
    assert group["replicas"] == 8 and "nvidia.com/gpu" not in _limits(group)


def test_node_shape_needs_the_node_size() -> None:
    from pydantic import ValidationError

    from orchestrator.operator.manifests import ExecutionConfig

    with pytest.raises(ValidationError, match="podShape: node needs gpusPerNode"):
        ExecutionConfig.model_validate({"podShape": "node"})
    with pytest.raises(ValidationError, match="NCCL_"):
        ExecutionConfig.model_validate({"ncclEnv": {"LD_PRELOAD": "/x.so"}})


def test_gpu_network_is_off_by_default() -> None:
    group = _paper_trial({}, 8)
    container = group["template"]["spec"]["containers"][0]
    assert not [e for e in container["env"] if e["name"].startswith("NCCL_")]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert not [k for k in _limits(group) if k.startswith("rdma/")]


def test_gpu_network_when_asked() -> None:
    from dataclasses import replace

    from orchestrator.operator.manifests import TrialPodPolicy, pod_policy_problems

    execution = {"gpusPerNode": 8, "ipcLock": True,
                 "rdmaResources": {"rdma/rdma_shared_device_a": 1},
                 "ncclEnv": {"NCCL_SOCKET_IFNAME": "eth0", "NCCL_IB_HCA": "mlx5",
                             "NCCL_DEBUG": "WARN"}}
    group = _paper_trial(execution, 16)
    container = group["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["NCCL_SOCKET_IFNAME"], env["NCCL_IB_HCA"], env["NCCL_DEBUG"]) == (
        "eth0", "mlx5", "WARN")
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"],
                                                            "add": ["IPC_LOCK"]}
    # RDMA devices are per pod, not per worker: two node-sized pods, one device each.
    assert group["replicas"] == 2 and _limits(group)["rdma/rdma_shared_device_a"] == "1"
    # IPC_LOCK is a privilege: it needs the installation's consent, like hostPath.
    policy = TrialPodPolicy()
    assert [path for path, _ in pod_policy_problems(execution, policy)] == [
        "spec.execution.ipcLock"]
    assert pod_policy_problems(execution, replace(policy, host_paths=True)) == []


@pytest.mark.parametrize(("value", "factor", "expected"), [
    ("16", 4, "64"), (16, 2, "32"), ("160Gi", 4, "640Gi"), ("500m", 3, "1500m"),
    ("1.5Gi", 2, "3Gi"), ("0.5", 3, "1.5"), ("100Gi", 1, "100Gi"),
])
def test_scale_quantity(value: str | int, factor: int, expected: str) -> None:
    from orchestrator.operator.manifests import scale_quantity

    assert scale_quantity(value, factor) == expected


def test_node_sized_pods_with_the_gpu_network_fit_the_kuberay_schema() -> None:
    import json

    jsonschema = pytest.importorskip("jsonschema")
    from orchestrator.core.grid import expand
    from orchestrator.operator.manifests import SecretRef
    from tests.unit.operator.test_operator_manifests import (
        _rayjob_schema,
        build,
        paper_spec,
        unknown_fields,
    )

    spec = paper_spec().model_copy(update={"execution": {
        "gpusPerNode": 8, "ipcLock": True, "rdmaResources": {"rdma/ib": 1},
        "ncclEnv": {"NCCL_DEBUG": "WARN"}}})
    sweep = Sweep(name="paper-grid", namespace="research", spec=spec)
    manifest, _ = build(sweep, expand(sweep).all_trials()[0], secret=SecretRef(name="db"))
    schema = _rayjob_schema()
    assert unknown_fields(manifest, schema) == []
    jsonschema.Draft4Validator(schema).validate(json.loads(json.dumps(manifest)))


def test_zero_gpus_per_node_means_unknown() -> None:
    group = _paper_trial({"gpusPerNode": 0}, 8)
    assert group["replicas"] == 8
