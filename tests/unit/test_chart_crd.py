"""The chart installs the Sweep CRD from helm/ladder/crds/: a byte-for-byte copy of the
generated k8s/crd/sweeps.ladder.dev.yaml (which tests/unit/core/test_crd.py ties to the model)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "k8s" / "crd" / "sweeps.ladder.dev.yaml"
CHART_COPY = ROOT / "helm" / "ladder" / "crds" / "sweeps.ladder.dev.yaml"


def test_chart_crd_is_the_generated_crd() -> None:
    assert CHART_COPY.read_bytes() == GENERATED.read_bytes(), (
        "helm/ladder/crds/sweeps.ladder.dev.yaml differs from k8s/crd/sweeps.ladder.dev.yaml: "
        "cp k8s/crd/sweeps.ladder.dev.yaml helm/ladder/crds/"
    )


def test_chart_crds_folder_holds_only_the_sweep_crd() -> None:
    assert sorted(p.name for p in CHART_COPY.parent.iterdir()) == [CHART_COPY.name]
