"""gpusPerWorker > 1 with two or more workers on one node: `ladder run` (one local Ray node
holds every worker) refuses it naming the field; on Kubernetes such workers never share a pod
(each pod is its own Ray node), so the Sweep is valid there."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.core.spec import parse_sweep, workers_sharing_gpus
from orchestrator.operator.manifests import ExecutionConfig, workers_per_pod


def _sweep(resources: dict) -> dict:
    return {"apiVersion": "ladder.dev/v1alpha1", "kind": "Sweep", "metadata": {"name": "g"},
            "spec": {"ladder": ["google/flan-t5-small", "google/flan-t5-xl"],
                     "methods": ["full"], "resources": resources}}


@pytest.mark.parametrize(("resources", "field"), [
    pytest.param({"workers": 4, "gpusPerWorker": 2}, "spec.resources.gpusPerWorker", id="sweep"),
    pytest.param({"workers": 1, "gpusPerWorker": 2,
                  "overrides": {"google/flan-t5-xl": {"workers": 4}}},
                 "spec.resources.overrides.google/flan-t5-xl.gpusPerWorker",
                 id="override-adds-workers"),
    pytest.param({"workers": 8, "gpusPerWorker": 1,
                  "overrides": {"google/flan-t5-xl": {"gpusPerWorker": 8}}},
                 "spec.resources.overrides.google/flan-t5-xl.gpusPerWorker",
                 id="override-adds-gpus"),
])
def test_named(resources: dict, field: str) -> None:
    spec = parse_sweep(_sweep(resources)).spec  # valid as a Sweep (Kubernetes runs it)
    ((path, message),) = workers_sharing_gpus(spec.resources)
    assert path == field and "GPUs per worker" in message and "gpusPerWorker: 1" in message


@pytest.mark.parametrize("resources", [
    pytest.param({"workers": 8, "gpusPerWorker": 1}, id="one-gpu-each"),
    pytest.param({"workers": 1, "gpusPerWorker": 4}, id="one-worker-many-gpus"),
])
def test_accepted(resources: dict) -> None:
    assert workers_sharing_gpus(parse_sweep(_sweep(resources)).spec.resources) == []


def test_ladder_run_refuses_naming_the_field(tmp_path: Path) -> None:
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump(_sweep({"workers": 4, "gpusPerWorker": 2})))
    done = CliRunner().invoke(app, ["run", str(file), "--db", f"sqlite:///{tmp_path}/l.db"])
    assert done.exit_code == 1
    assert "spec.resources.gpusPerWorker: 2 GPUs per worker with 4 workers" in done.output


def test_kubernetes_never_packs_workers_of_several_gpus() -> None:
    from orchestrator.core.spec import ResourceShape

    config = ExecutionConfig.model_validate({"gpusPerNode": 8, "podShape": "node"})
    shape = ResourceShape(workers=4, gpus_per_worker=2, cpus_per_worker=1)
    assert workers_per_pod(shape, config) == 1
