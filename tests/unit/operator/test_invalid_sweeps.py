"""The invalid-Sweep corpus (tests/data/invalid-sweeps/) at the controller: a Sweep that got
past the apiserver anyway (a gap in the CRD, an older CRD, a CRD installed by hand) is
refused by the reconciler with the same field path, in its status and an event, and no RayJob
is created. The same files are refused by `ladder validate` (tests/unit/test_invalid_corpus.py)
and by kube-apiserver (tests/k8s/test_invalid_corpus.py).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestrator import store
from orchestrator.core.manifest_yaml import load_documents
from orchestrator.operator.reconcile import Reconciler
from tests.unit.operator.test_reconcile import NS, FakeCluster
from tests.unit.test_invalid_corpus import never_shown

CORPUS = Path(__file__).resolve().parents[2] / "data" / "invalid-sweeps"
FILES = sorted(CORPUS.glob("*.yaml"))


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return store.open_store(f"sqlite:///{tmp_path_factory.mktemp('store') / 'ladder.db'}")


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in FILES])
def test_the_controller_refuses_naming_the_field(sessions: Any, path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    field = text.splitlines()[0].removeprefix("# expect: ").strip()
    (body,) = load_documents(text)  # read as kubectl reads it (YAML 1.2 numbers)
    name = str(body["metadata"]["name"])
    body["metadata"].update({"namespace": NS, "uid": str(uuid.uuid4()), "generation": 1})
    cluster = FakeCluster()
    cluster.sweeps[(NS, name)] = body
    result = Reconciler(cluster, sessions).reconcile(NS, name)
    assert result is not None and result.invalid is not None
    assert f"{field}: " in result.invalid, result.invalid
    status = cluster.sweeps[(NS, name)]["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert f"{field}: " in status["message"]
    assert cluster.reasons() == ["InvalidSpec"] and cluster.rayjobs == {}
    for secret in never_shown(path):  # hostile input, class 6: refusals redact
        assert secret not in status["message"] and secret not in str(cluster.events)
