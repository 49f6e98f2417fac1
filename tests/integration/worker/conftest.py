"""A Ray runtime shared by the worker's integration tests (started once: it takes seconds)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.backends.ray_head import join_head_env, restore_env, start_head


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
    saved = join_head_env(head)
    try:
        yield head.address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        restore_env(saved)
        head.stop()
