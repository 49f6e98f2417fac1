"""The CRD is generated from the spec model: the committed file must match, and be structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.crd import CRD_NAME, crd_manifest

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "k8s/crd/sweeps.ladder.dev.yaml"


def test_committed_crd_matches_the_model() -> None:
    committed = yaml.safe_load(COMMITTED.read_text())
    assert committed == crd_manifest(), (
        "k8s/crd/sweeps.ladder.dev.yaml is stale: run `ladder crd > k8s/crd/sweeps.ladder.dev.yaml`"
    )


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _walk(value, f"{path}[{i}]")
    return found


def test_schema_is_structural() -> None:
    schema = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "$defs" not in node, path
        assert "title" not in node or path.endswith(".properties"), path
        if path.endswith(".properties"):
            for name, prop in node.items():
                assert "type" in prop or prop.get("x-kubernetes-preserve-unknown-fields"), (
                    f"{path}.{name} has no type"
                )


def test_names_and_columns() -> None:
    crd = crd_manifest()
    assert crd["metadata"]["name"] == CRD_NAME == "sweeps.ladder.dev"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("Sweep", "sweeps", ["sw"])
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Done", "Total", "OOM", "Best-Loss", "Age"} <= columns
