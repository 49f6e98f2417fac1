"""Free TCP ports for the servers Ladder and its tests start on this machine.

A port found free must still be free when its server binds it, seconds later on a loaded
machine. The usual probe (bind port 0, read the number, close) hands out a port from the
kernel's ephemeral range, the same range every other process's `connect()` and `bind(0)` draw
from meanwhile, and two probes in a row may even return the same number. A Ray head given such
a port lost it once: its runtime-env agent's port was answered by another server, and the raylet
exited ("Runtime Env Agent network error: ... bad version", then "Raylet is terminated").

So ports are drawn at random from below the kernel's ephemeral range (and above Ray's worker
ports, 10002-19999 by default), where the kernel never assigns one on its own, and the ports of
one call are held open together until all are chosen, so none repeats. The probe binds the
wildcard address: a port in use on any address is refused. Nothing is sent anywhere.
"""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack
from pathlib import Path

PORT_FLOOR = 20000  # above Ray's default worker ports (min/max_worker_port 10002-19999)
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_LOW = 32768  # Linux's default start of ip_local_port_range
MIN_POOL = 2000  # fewer ports than this below the ephemeral range: use the kernel's choice
MAX_TRIES = 1000

_random = random.SystemRandom()  # not the `random` module's state, which tests reseed


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (where `bind(0)` and `connect()` draw)."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_LOW


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports nobody listens on now, none of which the kernel will hand to
    another process on its own (see the module's docstring)."""
    low = ephemeral_low()
    chosen: list[int] = []
    with ExitStack() as held:
        for _ in range(MAX_TRIES):
            if len(chosen) == count:
                break
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            port = _random.randrange(PORT_FLOOR, low) if low - PORT_FLOOR >= MIN_POOL else 0
            try:
                probe.bind(("", port))
            except OSError:
                probe.close()
                continue  # in use (or reserved): draw again
            held.enter_context(probe)  # held until all are chosen: none repeats
            chosen.append(int(probe.getsockname()[1]))
        if len(chosen) < count:
            raise RuntimeError(f"no {count} free TCP ports found in {MAX_TRIES} tries")
    return chosen


def free_port() -> int:
    """One free TCP port (free_ports)."""
    return free_ports(1)[0]
