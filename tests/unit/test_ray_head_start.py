"""`ray_head.start_head`: a head whose `ray start` exits while starting is started again on other
ports, and the error names what its logs say. `ray start` is a stand-in here, a script that
fails the way Ray does when a port was taken (exit 1, "Failed to start GCS"), then comes up as
a head would (its address file, a dashboard answering /api/version); a real head taking a busy
GCS port was checked by hand (it exits 1 after about 40 s, and the second start succeeds)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from orchestrator.backends import ray_head

FAKE_RAY = '''
import http.server, os, sys
args = dict(a.split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
temp, port = args["--temp-dir"], int(args["--dashboard-port"])
failures = int(os.environ["FAKE_RAY_FAILURES"])
count_file = os.environ["FAKE_RAY_COUNT"]
starts = int(open(count_file).read()) + 1 if os.path.exists(count_file) else 1
open(count_file, "w").write(str(starts))
open(count_file + ".env", "w").write("\\n".join(f"{k}={v}" for k, v in os.environ.items()))
if starts <= failures:
    os.makedirs(os.path.join(temp, "session_latest", "logs"))
    with open(os.path.join(temp, "session_latest", "logs", "gcs_server.err"), "w") as err:
        err.write("Failed to start the grpc server. The specified port is %s\\n" % args["--port"])
    print("RuntimeError: Failed to start GCS.", flush=True)
    sys.exit(1)

class Version(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/api/version" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", port), Version)
open(os.path.join(temp, "ray_current_cluster"), "w").write("127.0.0.2:%s" % args["--port"])
server.serve_forever()
'''


@pytest.fixture
def fake_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "ray"
    script.write_text(f"#!{sys.executable}\n{FAKE_RAY}")
    script.chmod(0o755)
    monkeypatch.setattr(ray_head, "_ray_executable", lambda: str(script))
    monkeypatch.setenv("FAKE_RAY_COUNT", str(tmp_path / "starts"))
    return tmp_path / "starts"


def test_a_head_that_exits_while_starting_is_started_again_on_other_ports(
    fake_ray: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FAKE_RAY_FAILURES", "1")
    commands: list[list[str]] = []
    head_command = ray_head.head_command

    def recorded(**kwargs: object) -> tuple[list[str], int]:
        command, dashboard = head_command(**kwargs)  # type: ignore[arg-type]
        commands.append(command)
        return command, dashboard

    monkeypatch.setattr(ray_head, "head_command", recorded)
    with caplog.at_level(logging.WARNING, logger=ray_head.__name__):
        head = ray_head.start_head(num_cpus=1, num_gpus=0, timeout=30)
    try:
        assert fake_ray.read_text() == "2" and head.is_alive()
        first, second = ({a for a in c if a.startswith("--port=")} for c in commands)
        assert first != second  # other ports the second time
        assert head.address == f"127.0.0.2:{second.pop().split('=')[1]}"
        assert head.token  # the local backend's head takes a token
        [warning] = [r.getMessage() for r in caplog.records]
        assert warning == ("the local Ray head exited while starting (exit 1); starting it "
                           "again on other ports")
    finally:
        head.stop()
    assert not head.is_alive() and not Path(head.temp_dir).exists()


def test_a_head_that_keeps_exiting_fails_with_its_logs(
    fake_ray: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_RAY_FAILURES", str(ray_head.START_TRIES))
    with pytest.raises(ray_head.HeadExited) as failed:
        ray_head.start_head(num_cpus=1, num_gpus=0, auth=False, timeout=30)
    assert fake_ray.read_text() == str(ray_head.START_TRIES)
    message = str(failed.value)
    assert message.startswith("the local Ray head exited while starting (exit 1):")
    assert "--- ray-start.log ---\nRuntimeError: Failed to start GCS." in message
    assert "--- gcs_server.err ---\nFailed to start the grpc server. The specified port" in message


def test_a_head_without_auth_is_joined_without_a_token(
    fake_ray: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_RAY_FAILURES", "0")
    head = ray_head.start_head(num_cpus=1, num_gpus=0, auth=False, timeout=30)
    try:
        assert head.token == "" and head.is_alive()
        assert head.env() == {"RAY_ADDRESS": head.address, "RAY_AUTH_MODE": "disabled"}
    finally:
        head.stop()


@pytest.mark.parametrize(("preset", "expected"), [(None, "0"), ("1", "1")],
                         ids=["ladder-default", "the-callers-value-wins"])
def test_a_head_prestarts_no_idle_workers_unless_asked(
    fake_ray: Path, monkeypatch: pytest.MonkeyPatch, preset: str | None, expected: str
) -> None:
    """Idle workers for the first driver cost CPU just as the first trials start, and no job
    of Ladder's can use them (tests/bench/bench_head.py measures it)."""
    monkeypatch.setenv("FAKE_RAY_FAILURES", "0")
    if preset is None:
        monkeypatch.delenv(ray_head.PRESTART_ENV, raising=False)
    else:
        monkeypatch.setenv(ray_head.PRESTART_ENV, preset)
    head = ray_head.start_head(num_cpus=1, num_gpus=0, auth=False, timeout=30)
    try:
        env = dict(line.split("=", 1) for line in
                   Path(f"{fake_ray}.env").read_text().splitlines() if "=" in line)
        assert env[ray_head.PRESTART_ENV] == expected
    finally:
        head.stop()
