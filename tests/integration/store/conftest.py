"""Store fixtures: a migrated session factory per backend, and a real sweep's trials."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.core.spec import Sweep
from orchestrator.core.worker_contract import AttemptSpec
from orchestrator.store import open_store
from tests.integration.store.store_helpers import make_sweep, trial_specs


@pytest.fixture
def factory(store_url: str) -> sessionmaker[Session]:
    """A session factory on a freshly migrated store (SQLite file or PostgreSQL schema)."""
    return open_store(store_url)


@pytest.fixture
def session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction the test commits (or not) itself."""
    with factory() as session:
        yield session


@pytest.fixture
def sweep() -> Sweep:
    return make_sweep()


@pytest.fixture
def spec(sweep: Sweep) -> AttemptSpec:
    return trial_specs(sweep)[0]
