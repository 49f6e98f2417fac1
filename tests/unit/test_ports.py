"""orchestrator.ports: free ports that the kernel will not hand to anyone else meanwhile."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import pytest

from orchestrator import ports


def test_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    low = ports.ephemeral_low()
    chosen = ports.free_ports(50)
    assert len(set(chosen)) == 50
    if low - ports.PORT_FLOOR >= ports.MIN_POOL:
        assert all(ports.PORT_FLOOR <= port < low for port in chosen)
    for port in chosen[:5]:  # each can be listened on
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen()


def test_a_port_in_use_on_any_address_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.2", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        # Twice the busy port, then other ports: any of those may be in use too on a shared
        # machine (CI once found busy + 1 taken), so the test asks only that a later one is chosen.
        others = (port for port in itertools.count(1024) if port != busy)
        draws: list[int] = []

        def draw(*_: int) -> int:
            draws.append(busy if len(draws) < 2 else next(others))
            return draws[-1]

        monkeypatch.setattr(ports._random, "randrange", draw)
        monkeypatch.setattr(ports, "ephemeral_low", lambda: 65536)
        monkeypatch.setattr(ports, "PORT_FLOOR", 1024)
        [chosen] = ports.free_ports(1)
        assert draws[:2] == [busy, busy]
        assert chosen != busy and chosen in draws[2:]


def test_without_room_below_the_range_the_kernel_chooses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("21000\t60999\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", range_file)
    assert ports.ephemeral_low() == 21000
    assert len(set(ports.free_ports(3))) == 3
    range_file.write_text("garbage")
    assert ports.ephemeral_low() == ports.DEFAULT_EPHEMERAL_LOW
