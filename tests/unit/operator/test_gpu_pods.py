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
