"""Every file a user names on the command line is read the bounded way
(`orchestrator.files.read_user_text`): a FIFO, a device, a directory, a file over its limit or
bytes that are not UTF-8 give one line naming the file, exit 1, never a hang or a traceback.

The readers: `ladder predict --file`, `ladder distill` inputs, `--template` and
`--api-key-file`, and the Sweep file itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.files import UserFileError, read_user_text

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")


def hostile_files(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"input": "\xff\xfe"}\n')
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    files = {"fifo": fifo, "binary": binary, "directory": folder,
             "missing": tmp_path / "missing.jsonl"}
    if Path("/dev/zero").exists():
        files["device"] = Path("/dev/zero")
    return files


def within(seconds: float, call: Callable[[], Any], fifo: Path) -> Any:
    """`call()`, failing (after unblocking any reader) if it takes longer than `seconds`."""
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading blocked")
    return outcome[0]


def test_read_user_text_refuses_each_kind_in_one_line(tmp_path: Path) -> None:
    files = hostile_files(tmp_path)
    expected = {"fifo": "is not a regular file (a device, FIFO or socket)",
                "device": "is not a regular file (a device, FIFO or socket)",
                "binary": "is not UTF-8 text (byte 11)",
                "directory": "is a directory, not a questions file",
                "missing": "cannot read: No such file or directory"}
    for kind, path in files.items():
        def read(path: Path = path) -> str:
            try:
                read_user_text(path, max_bytes=1024, what="questions file")
            except UserFileError as error:
                return str(error)
            return "read"
        assert within(5, read, files["fifo"]) == expected[kind], kind
    big = tmp_path / "big.jsonl"
    big.write_text("x" * 2048)
    with pytest.raises(UserFileError, match=r"^2048 bytes is more than a f may have \(1024 b"):
        read_user_text(big, max_bytes=1024, what="f")
    assert read_user_text(big, max_bytes=4096) == "x" * 2048


@pytest.mark.parametrize("command", [
    lambda path: ["predict", "some-trial", "--file", str(path)],
    lambda path: ["distill", str(path), "--url", "http://127.0.0.1:9", "--model", "m",
                  "--out", str(path.parent / "out" / "d.jsonl"), "--no-progress"],
], ids=["predict --file", "distill inputs"])
def test_the_cli_names_the_file_in_one_line(tmp_path: Path, command: Callable) -> None:
    files = hostile_files(tmp_path)
    (tmp_path / "out").mkdir()
    for kind, path in files.items():
        result = within(20, lambda path=path: CliRunner().invoke(app, command(path)),
                        files["fifo"])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1, (kind, result.output)
        assert len(lines) == 1 and str(path) in lines[0], (kind, lines)
        assert "Traceback" not in result.output, kind


def test_distill_template_and_key_files(tmp_path: Path) -> None:
    files = hostile_files(tmp_path)
    inputs = tmp_path / "q.jsonl"
    inputs.write_text('{"input": "count orders"}\n')
    for option in ("--template", "--api-key-file"):
        for kind, path in files.items():
            args = ["distill", str(inputs), "--url", "http://127.0.0.1:9", "--model", "m",
                    "--out", str(tmp_path / "d.jsonl"), "--no-progress", option, str(path)]
            result = within(20, lambda args=args: CliRunner().invoke(app, args), files["fifo"])
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert result.exit_code != 0, (option, kind, result.output)
            assert len(lines) == 1 and option in lines[0] and str(path) in lines[0], \
                (option, kind, lines)


def test_run_refuses_a_runs_dir_it_cannot_use_before_starting_anything(tmp_path: Path) -> None:
    sweep = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
    in_the_way = tmp_path / "runs"
    in_the_way.write_text("")
    for runs_dir, why in ((in_the_way, "a file is in the way"),
                          (in_the_way / "below", "cannot create it")):
        result = CliRunner().invoke(app, ["run", str(sweep), "--db",
                                          f"sqlite:///{tmp_path / 'l.db'}", "--runs-dir",
                                          str(runs_dir)])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1, result.output
        assert len(lines) == 1 and f"--runs-dir {runs_dir}: {why}" in lines[0], lines
        assert "starting Ray" not in result.output


def test_output_paths_under_a_file_are_refused_naming_the_option(tmp_path: Path) -> None:
    in_the_way = tmp_path / "file"
    in_the_way.write_text("")
    inputs = tmp_path / "q.jsonl"
    inputs.write_text('{"input": "count orders"}\n')
    db = f"sqlite:///{tmp_path / 'l.db'}"
    cases = [
        (["report", "--db", db, "--out", str(in_the_way / "r")],
         f"--out {in_the_way / 'r'}: cannot create it"),
        (["export", "--best", "s", "--db", db, "--out", str(in_the_way / "x")],
         f"the directory of --out {in_the_way}: a file is in the way"),
        (["export", "--best", "s", "--db", db, "--out", str(in_the_way)],
         f"--out {in_the_way}: a file is in the way"),
        (["distill", str(inputs), "--url", "http://127.0.0.1:9", "--model", "m",
          "--no-progress", "--out", str(in_the_way / "d.jsonl")],
         f"the directory of --out {in_the_way}: a file is in the way"),
        (["distill", str(inputs), "--url", "http://127.0.0.1:9", "--model", "m",
          "--no-progress", "--out", str(tmp_path)], f"--out {tmp_path}: is a directory"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1, (args, result.output)
        assert len(lines) == 1 and message in lines[0], (args, lines)


def test_question_lines_are_strict_json(tmp_path: Path) -> None:
    deep = "[" * 50_000 + "]" * 50_000
    for text, says in (('{"question": ' + deep + "}", "nested too deeply"),
                       ('{"input": "a", "input": "b"}', "key 'input' appears twice"),
                       ('{"question": NaN}', "NaN is not valid JSON")):
        path = tmp_path / "q.jsonl"
        path.write_text('"fine"\n' + text + "\n")
        result = CliRunner().invoke(app, ["predict", "some-trial", "--file", str(path)])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert f"{path}:2: not JSON" in lines[0] and says in lines[0], lines
