"""Fixtures of the fault-injection tests (docs/reliability.md).

They reuse the local control plane of tests/k8s (etcd + kube-apiserver, built and started by
tests/k8s/controlplane; the same LADDER_CP_* settings) and run a PostgreSQL server of their
own (tests/reliability/pgserver.py) that a test may stop.

Tests marked `soak` (the long runs: 20 controller-kill seeds, a 30 s store outage) are
skipped unless LADDER_SOAK=1:

    LADDER_SOAK=1 python -m pytest -m soak tests/reliability
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.operator.kube import Kube, load_config
from tests.k8s import conftest as k8s
from tests.k8s.conftest import REPO_ROOT, ControlPlane
from tests.reliability.pgserver import PostgresServer
from tests.reliability.rig import Rig

# Shared with tests/k8s: the control plane fixtures, and the hook that builds its binaries
# before the first test (a cache hit after the first build).
control_plane = k8s.control_plane
kuberay_crds = k8s.kuberay_crds
pytest_collection_finish = k8s.pytest_collection_finish

SOAK_ENV = "LADDER_SOAK"
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(SOAK_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"soak run: set {SOAK_ENV}=1 (docs/reliability.md)")
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sweep_crd(control_plane: ControlPlane) -> list[str]:
    return control_plane.install_crds(REPO_ROOT / "k8s" / "crd")


@pytest.fixture(scope="session")
def kopf_peering_crd(control_plane: ControlPlane) -> list[str]:
    """Kopf's KopfPeering CRD (namespaced peering, `ladder controller --peering`)."""
    return control_plane.install_crds(HERE / "crds")


@pytest.fixture
def kube(control_plane: ControlPlane) -> Kube:
    return Kube(load_config(str(control_plane.kubeconfig)))


@pytest.fixture
def rig(control_plane: ControlPlane, kuberay_crds: list[str], sweep_crd: list[str],
        kube: Kube, tmp_path: Path) -> Iterator[Rig]:
    """A namespace with a SQLite store, the KubeRay stand-in (subprocess mode) running."""
    made = Rig.create(control_plane, kube, f"sqlite:///{tmp_path / 'ladder.db'}", tmp_path)
    made.start_standin()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this session that tests may stop and start."""
    if os.environ.get("LADDER_SKIP_POSTGRES") == "1":
        pytest.skip("LADDER_SKIP_POSTGRES=1")
    try:
        server = PostgresServer()
    except RuntimeError as error:  # no server binaries: fail loudly, as tests/integration
        pytest.fail(str(error), pytrace=False)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_rig(control_plane: ControlPlane, kuberay_crds: list[str], sweep_crd: list[str],
           kube: Kube, tmp_path: Path, postgres_server: PostgresServer) -> Iterator[Rig]:
    """A namespace whose store is a fresh database on `postgres_server`."""
    if not postgres_server.running:
        postgres_server.start()  # a failed test may have left it stopped
    made = Rig.create(control_plane, kube, postgres_server.create_database(), tmp_path)
    made.start_standin()
    try:
        yield made
    finally:
        made.close()
