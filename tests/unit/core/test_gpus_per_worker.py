"""gpusPerWorker > 1 with two or more workers is refused, naming the field: the workers would
share a node's GPUs and Accelerate would build DDP on another device than the model's."""

from __future__ import annotations

import pytest

from orchestrator.core.spec import SpecError, parse_sweep


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
def test_refused_naming_the_field(resources: dict, field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_sweep(_sweep(resources))
    ((path, message),) = caught.value.problems
    assert path == field and "GPUs per worker" in message and "gpusPerWorker: 1" in message


@pytest.mark.parametrize("resources", [
    pytest.param({"workers": 8, "gpusPerWorker": 1}, id="one-gpu-each"),
    pytest.param({"workers": 1, "gpusPerWorker": 4}, id="one-worker-many-gpus"),
    pytest.param({"workers": 1, "gpusPerWorker": 2,
                  "overrides": {"google/flan-t5-xl": {"workers": 8, "gpusPerWorker": 1}}},
                 id="override-takes-one-gpu-each"),
])
def test_accepted(resources: dict) -> None:
    parse_sweep(_sweep(resources))
