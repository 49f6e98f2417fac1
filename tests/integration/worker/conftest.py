"""A Ray runtime shared by the worker's integration tests (started once: it takes seconds)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from orchestrator.backends.ray_head import reload_ray_auth_settings, start_head


@pytest.fixture(scope="package")
def ray_address() -> Iterator[str]:
    """The GCS address of a private Ray head; 4 logical CPUs (more than the 2 real cores) so
    that a 2-worker trial and Ray Train's controller always find room.

    The local backend's own head (ray_head.start_head: `ray start` on free loopback ports), not
    `ray.init()`, whose runtime takes Ray's fixed ports (another runtime on the machine, such as
    a second pytest-xdist worker's, keeps it from starting) and the machine's routable address.
    Its address and token are in this process's environment for the package: a trial run in
    this process joins it, and so do the `python -m worker` processes the tests start."""
    import ray

    head = start_head(num_cpus=4, num_gpus=0)
    saved = {key: os.environ.get(key) for key in head.env()}
    os.environ.update(head.env())
    reload_ray_auth_settings()
    try:
        yield head.address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reload_ray_auth_settings()
        head.stop()
