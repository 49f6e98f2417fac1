"""A Ray runtime Ladder starts on one machine stays on loopback (the network rule of the tests,
and what a laptop user expects): Ray rewrites 127.0.0.1 to the machine's routable address, so
the private head's node is names.LOOPBACK_NODE_IP."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

import psutil
import pytest

from orchestrator.core.names import LOOPBACK_NODE_IP

pytestmark = pytest.mark.integration

DRIVER = """
import ray
ray.init(configure_logging=False)
print(ray.get(ray.remote(lambda: ray.util.get_node_ip_address()).remote()))
"""


def _loopback(host: str) -> bool:
    return ipaddress.ip_address(host.removeprefix("::ffff:")).is_loopback


def test_a_private_head_and_its_drivers_stay_on_loopback(ray_address: str) -> None:
    host, port = ray_address.rsplit(":", 1)
    assert host == LOOPBACK_NODE_IP and _loopback(host)
    # A driver joins (RAY_ADDRESS and the token are in the environment) and runs a task.
    done = subprocess.run([sys.executable, "-c", DRIVER], env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == LOOPBACK_NODE_IP
    # Every connection to or from the GCS runs between loopback addresses (Ray's GCS listens on
    # every address; a private head's token guards it).
    gcs = [c for c in psutil.net_connections("tcp") if c.raddr
           and int(port) in (c.laddr.port, c.raddr.port)]
    assert gcs, "no connection to the GCS seen"
    for connection in gcs:
        assert _loopback(connection.laddr.ip) and _loopback(connection.raddr.ip), connection
