"""`ray_head.SharedHead`'s locks: runs of one runs directory share its head at the same time,
and only the last one out stops it. The head itself is faked (starting a real one takes
seconds; tests/integration/sweep/test_decoder_sweep.py runs two real `ladder run`s on one);
the locks are real: flock locks belong to open files, so two SharedHeads in one process
contend as two processes would."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from orchestrator.backends import ray_head
from orchestrator.backends.ray_head import STATE_FILE, RayHead, SharedHead


@pytest.fixture
def heads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Fake heads: `start_head` makes one (alive until stopped); returns the event log."""
    events: list[str] = []
    alive: set[int] = set()

    def start_head(*, num_cpus: int, num_gpus: int | None) -> RayHead:
        pid = 1000 + len(events)
        alive.add(pid)
        events.append(f"start {pid}")
        return RayHead(address=f"127.0.0.2:{pid}", dashboard_url="http://127.0.0.1:1",
                       pid=pid, temp_dir=str(tmp_path / str(pid)), token="t")

    def stop(self: RayHead) -> None:
        alive.discard(self.pid)
        events.append(f"stop {self.pid}")

    monkeypatch.setattr(ray_head, "start_head", start_head)
    monkeypatch.setattr(RayHead, "is_alive", lambda self: self.pid in alive)
    monkeypatch.setattr(RayHead, "stop", stop)
    return events


def acquire_within(shared: SharedHead, seconds: float = 5.0) -> RayHead:
    """acquire(), failing instead of hanging when it blocks (as it did while another run
    held the head)."""
    got: list[RayHead] = []
    worker = threading.Thread(target=lambda: got.append(shared.acquire(num_cpus=2, num_gpus=0)),
                              daemon=True)
    worker.start()
    worker.join(seconds)
    assert got, "acquire() blocked while another run used the head"
    return got[0]


def test_a_concurrent_run_shares_the_head_and_the_last_one_out_stops_it(
    heads: list[str], tmp_path: Path
) -> None:
    first, second = SharedHead(tmp_path), SharedHead(tmp_path)
    head = acquire_within(first)
    assert not first.reused and heads == [f"start {head.pid}"]
    # While the first run still holds it, the second finds it at once.
    assert acquire_within(second) == head and second.reused
    assert first.release() is False  # the second still uses it
    assert heads == [f"start {head.pid}"] and (tmp_path / STATE_FILE).exists()
    assert second.release() is True
    assert heads == [f"start {head.pid}", f"stop {head.pid}"]
    assert not (tmp_path / STATE_FILE).exists()


def test_a_run_after_the_last_one_out_starts_a_new_head(heads: list[str], tmp_path: Path) -> None:
    first = SharedHead(tmp_path)
    old = acquire_within(first)
    assert first.release() is True
    later = SharedHead(tmp_path)
    new = acquire_within(later)
    assert not later.reused and new.pid != old.pid
    assert heads == [f"start {old.pid}", f"stop {old.pid}", f"start {new.pid}"]
    later.release()


def test_a_dead_head_left_behind_is_replaced(heads: list[str], tmp_path: Path) -> None:
    crashed = SharedHead(tmp_path)
    old = acquire_within(crashed)
    RayHead.stop(old)  # its processes died; the state file stays, as after a SIGKILL
    crashed._lock.close()  # type: ignore[union-attr]  # the killed run's locks go with it
    crashed._lock = None
    heads.clear()
    again = SharedHead(tmp_path)
    new = acquire_within(again)
    assert not again.reused and new.pid != old.pid
    assert heads == [f"stop {old.pid}", f"start {new.pid}"]  # leftovers stopped first
    again.release()
