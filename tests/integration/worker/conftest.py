"""A Ray runtime shared by the worker's integration tests (started once: it takes seconds)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="package")
def ray_address() -> Iterator[str]:
    """The GCS address of a local Ray runtime; 4 logical CPUs (more than the 2 real cores) so
    that a 2-worker trial and Ray Train's controller always find room."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()
