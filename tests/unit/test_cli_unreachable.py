"""Hostile input, class 9 ("CLI"): a missing or invalid kubeconfig, an unreachable cluster or an
unreachable store is one line on stderr that names the problem, and exit code 1, never a
traceback, for `ladder submit`, `ladder controller`, `ladder status` and `ladder results`, and
`ladder run` given a Ray address where no runtime answers.

The unreachable cluster and database are loopback ports that nothing listens on (a port bound
and released by the test); no traffic leaves the machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
TOKEN = "kubeconfig-token-s3cret"
PASSWORD = "p@ss-w0rd"


def closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kubeconfig(server: str, context: str = "ctx") -> dict:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
    }


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# The invalid-kubeconfig corpus: each file's first line is `# expect: <what the line says>`.
CORPUS = ROOT / "tests" / "data" / "invalid-kubeconfigs"
EXPECT = "# expect: "
KUBECONFIGS = {
    **{path.stem: path.read_text(encoding="utf-8").splitlines()[0].removeprefix(EXPECT)
       for path in sorted(CORPUS.glob("*.yaml"))},
    "missing": "No configuration found",
    "unreachable-cluster": "cannot reach the API server https://127.0.0.1:",
}


def kubeconfig_file(tmp_path: Path, case: str) -> str:
    if case == "missing":
        return str(tmp_path / "missing.kubeconfig")
    if case == "unreachable-cluster":
        path = tmp_path / "unreachable.kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig(f"https://127.0.0.1:{closed_port()}")))
        return str(path)
    return str(CORPUS / f"{case}.yaml")


def test_the_kubeconfig_corpus_is_well_formed() -> None:
    files = sorted(CORPUS.glob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        assert path.read_text(encoding="utf-8").startswith(EXPECT), path


def one_line_error(result: object, *, exit_code: int = 1) -> str:
    """The error line: the last stderr line, starting with ✗; no traceback anywhere."""
    assert result.exit_code == exit_code, result.output  # type: ignore[attr-defined]
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # type: ignore[attr-defined]
    stderr = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr and "Traceback" not in result.output  # type: ignore[attr-defined]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("✗ "), stderr
    return lines[-1]


def invoke(*args: str) -> object:
    env = {"COLUMNS": "80", "KUBECONFIG": "", "LADDER_DB_URL": "", "KUBERNETES_SERVICE_HOST": ""}
    return CliRunner().invoke(app, list(args), env=env)


@pytest.mark.parametrize("case", list(KUBECONFIGS))
def test_submit_names_the_kubeconfig_problem_in_one_line(tmp_path: Path, case: str) -> None:
    path = kubeconfig_file(tmp_path, case)
    line = one_line_error(invoke("submit", str(QUICKSTART), "--kubeconfig", path))
    assert KUBECONFIGS[case] in line, line
    if case != "unreachable-cluster":
        assert path in line  # it names the file
    assert TOKEN not in line


@pytest.mark.parametrize("case", list(KUBECONFIGS))
def test_the_controller_names_the_kubeconfig_problem_in_one_line(
    tmp_path: Path, case: str
) -> None:
    path = kubeconfig_file(tmp_path, case)
    result = invoke("controller", "--kubeconfig", path, "--liveness", "",
                    "--db", f"sqlite:///{tmp_path / 'ladder.db'}")
    line = one_line_error(result)
    assert line.startswith("✗ the controller cannot start: ")
    assert KUBECONFIGS[case] in line and TOKEN not in result.output  # type: ignore[attr-defined]


STORES = {
    "postgresql-unreachable": (lambda tmp: f"postgresql+psycopg://u:pw@127.0.0.1:{closed_port()}/x",
                               "Connection refused"),
    "password-with-at": (lambda tmp: f"postgresql://u:{PASSWORD}@127.0.0.1:{closed_port()}/x",
                         "percent-encoded"),
    "sqlite-missing-dir": (lambda tmp: f"sqlite:///{tmp / 'no' / 'such' / 'dir.db'}",
                           "unable to open database file"),
    "sqlite-not-a-database": (lambda tmp: f"sqlite:///{write(tmp / 'x.db', 'not sqlite' * 99)}",
                              "file is not a database"),
    "unsupported": (lambda tmp: "mysql://u:pw@127.0.0.1:1/x", "not 'mysql'"),
    "not-a-url": (lambda tmp: "nonsense", "Could not parse"),
}


@pytest.mark.parametrize("command", ["status", "results", "controller"])
@pytest.mark.parametrize("case", list(STORES))
def test_an_unreachable_store_is_one_line(tmp_path: Path, command: str, case: str) -> None:
    make, says = STORES[case]
    url = make(tmp_path)
    extra = ["--liveness", "", "--kubeconfig", "/nonexistent"] if command == "controller" else []
    line = one_line_error(invoke(command, "--db", url, *extra))
    assert "cannot open the store" in line and says in line, line
    assert "Background on this error" not in line
    assert PASSWORD not in line and "ss-w0rd" not in line and ":pw@" not in line


def test_the_installed_entry_point_prints_one_line(tmp_path: Path) -> None:
    """Through the real `python -m orchestrator.cli` process, not typer's test runner."""
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "missing"), "COLUMNS": "40",
           "PYTHONPATH": str(ROOT)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "submit", str(QUICKSTART)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("✗ kubeconfig "), done.stderr
    assert done.stdout == ""


def test_run_refuses_a_ray_address_where_no_runtime_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = closed_port()
    base = ["run", str(QUICKSTART), "--db", f"sqlite:///{tmp_path / 'l.db'}", "--runs-dir",
            str(tmp_path / "runs")]
    cases = [(["--ray-address", "no-port"], "--ray-address no-port: not an address"),
             (["--ray-address", f"127.0.0.1:{port}"],
              f"--ray-address 127.0.0.1:{port}: no Ray runtime answers there")]
    for extra, message in cases:
        result = CliRunner().invoke(app, [*base, *extra])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], result.output
    monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{port}")
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 1 and f"RAY_ADDRESS ray://127.0.0.1:{port}: no Ray" in \
        result.output, result.output
