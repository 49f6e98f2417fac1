"""Hostile input, class 5 ("text is text"): no user-controlled string is read as Rich markup
or as an emoji code, in any command that prints to a terminal.

Each hostile string goes into every field a user controls that reaches a terminal (model ids,
per-model override keys, dataset sources, tokenizers, file paths, output paths, stored error
messages), and every command must print it verbatim and exit as it would with plain text.
`ladder run` drives the real runner, live view and summary against `StandInRay`, a stand-in
for the Ray backend (no Ray runtime in unit tests), whose jobs end at the next poll.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

import orchestrator.backends.local as local_backend
import orchestrator.cli as cli
from orchestrator import store
from orchestrator.backends.runner import FinishedJob, LocalSweepRunner
from orchestrator.cli import app
from orchestrator.core.grid import attempt_spec, expand
from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.core.scheduler import Capacity
from orchestrator.core.worker_contract import AttemptSpec
from orchestrator.files import load_sweep

HOSTILE = ["[/x]", "[bold]b", "[link=https://example.invalid]l", ":smile:"]
IDS = ["closing-tag", "bold", "link", "emoji"]
ENV = {"COLUMNS": "400", "LADDER_DB_URL": ""}


def hostile_sweep(root: Path, text: str, on_oom: str = "continue") -> Path:
    """A valid Sweep whose free-text fields all quote `text`, in a path that quotes it."""
    models = [f"m{text}", f"org/{text}"]
    path = root / f"dir{text}" / f"sweep{text}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "apiVersion": "ladder.dev/v1alpha1", "kind": "Sweep", "metadata": {"name": "hostile"},
        "spec": {
            "ladder": models, "methods": ["full"],
            "resources": {"workers": 1, "gpusPerWorker": 0,
                          "overrides": {models[1]: {"cpusPerWorker": 2}}},
            "dataset": {"source": f"data/{text}.jsonl"},
            "training": {"tokenizer": f"tok{text}"},
            "escalation": {"onOOM": on_oom},
        },
    }), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's console is made at import, before CliRunner's COLUMNS: give it the 400
    columns outright, so that a long temporary path (pytest-xdist's, a deep TMPDIR) is not
    wrapped or cut and every assertion sees the whole text."""
    monkeypatch.setattr(cli, "console", Console(markup=False, emoji=False, width=400))


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args), env=ENV)
    assert "Traceback" not in result.output and "MarkupError" not in result.output, result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit), repr(result.exception)
    return result


def filled_store(root: Path, text: str) -> str:
    """A store holding the hostile sweep, its lane stopped by the first model running out of
    memory, with an error message that quotes the hostile text."""
    url = f"sqlite:///{root / 'ladder.db'}"
    sweep = load_sweep(hostile_sweep(root, text, on_oom="stop-lane"))
    sessions = store.open_store(url)
    with sessions.begin() as session:
        store.upsert_sweep(session, sweep)
        trial = expand(sweep).all_trials()[0]
        spec = attempt_spec(sweep, trial, attempt=1, output_dir=str(root / trial.trial_id))
        store.record_attempt(session, spec, status=TrialState.RUNNING)
        store.mark_attempt(session, spec.key, TrialState.OOM, oom_kind=OOMKind.BUDGET,
                           error=f"worker said {text}")
    return url


@pytest.mark.parametrize("text", HOSTILE, ids=IDS)
def test_validate_prints_the_path_verbatim(tmp_path: Path, text: str) -> None:
    path = hostile_sweep(tmp_path, text)
    result = invoke("validate", str(path))
    assert result.exit_code == 0
    assert str(path) in result.output


@pytest.mark.parametrize("text", HOSTILE, ids=IDS)
def test_validate_errors_quote_the_input_verbatim(tmp_path: Path, text: str) -> None:
    path = hostile_sweep(tmp_path, text)
    body = yaml.safe_load(path.read_text())
    body["spec"]["ladder"].append(body["spec"]["ladder"][0])  # a repeat quotes the model id
    path.write_text(yaml.safe_dump(body))
    result = invoke("validate", str(path))
    assert result.exit_code == 1
    assert f"{path}: invalid Sweep" in result.output
    assert f"model 'm{text}' appears twice" in result.output
    missing = tmp_path / f"missing{text}.yaml"
    result = invoke("plan", str(missing))
    assert result.exit_code == 1 and str(missing) in result.output


@pytest.mark.parametrize("text", HOSTILE, ids=IDS)
@pytest.mark.parametrize("extra", [[], ["--trials"]], ids=["lanes", "trials"])
def test_plan_prints_model_ids_verbatim(tmp_path: Path, text: str, extra: list[str]) -> None:
    result = invoke("plan", str(hostile_sweep(tmp_path, text)), *extra)
    assert result.exit_code == 0
    assert f"Ladder: m{text} → org/{text}" in result.output
    if extra:
        assert f"m{text}" in result.output.split("Ladder:")[1].split("\n", 1)[1]


@pytest.mark.parametrize("text", HOSTILE, ids=IDS)
def test_status_prints_stored_model_ids_verbatim(tmp_path: Path, text: str) -> None:
    url = filled_store(tmp_path, text)
    result = invoke("status", "--db", url)
    assert result.exit_code == 0, result.output
    assert f"m{text} (oom/budget)" in result.output
    missing = invoke("status", text, "--db", url)
    assert missing.exit_code == 1 and f"no sweep {text!r} in the store" in missing.output


@pytest.mark.parametrize("text", HOSTILE, ids=IDS)
def test_results_prints_stored_text_verbatim(tmp_path: Path, text: str) -> None:
    url = filled_store(tmp_path, text)
    result = invoke("results", "--db", url)
    assert result.exit_code == 0, result.output
    assert f"m{text}".rsplit("/", 1)[-1] in result.output and "oom/budget" in result.output


@pytest.mark.parametrize("text", HOSTILE, ids=IDS)
def test_report_prints_its_paths_verbatim(tmp_path: Path, text: str) -> None:
    url = filled_store(tmp_path, text)
    out = tmp_path / f"report{text}"
    result = invoke("report", "--db", url, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert str(out / "report.md") in result.output.replace("\n", "")
    bad = invoke("report", text, "--db", url, "--out", str(out))
    assert bad.exit_code == 1 and text in bad.output


@pytest.mark.parametrize("text", HOSTILE, ids=IDS)
def test_dataset_prints_its_paths_and_errors_verbatim(tmp_path: Path, text: str) -> None:
    out = tmp_path / f"data{text}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = invoke("dataset", "querydsl", "-n", "2", "-o", str(out))
    assert result.exit_code == 0 and str(out) in result.output.replace("\n", "")
    bad = invoke("dataset", "querydsl", "-n", "2", "--preamble", text, "-o", str(out))
    assert bad.exit_code == 1 and repr(text) in bad.output


class StandInRay:
    """Stands in for LocalRayBackend in unit tests (no Ray runtime): a launched job ends at
    the next poll, out of memory, with an error message that quotes the trial's model id."""

    def __init__(self, **_: Any) -> None:
        self.jobs: dict[tuple[str, int], AttemptSpec] = {}
        self.reused_runtime = False

    def start(self) -> None: ...
    def stop(self) -> None: ...

    def head_left_running(self) -> bool:
        return False

    def capacity(self) -> Capacity:
        return Capacity(gpus=0, cpus=8)

    def launch(self, spec: AttemptSpec) -> str:
        self.jobs[(spec.trial_id, spec.attempt)] = spec
        return f"job-{spec.trial_id}"

    def cancel(self, trial_id: str, attempt: int) -> None:
        self.jobs.pop((trial_id, attempt), None)

    def adopt(self, spec: AttemptSpec) -> bool:
        return False

    def active(self) -> set[tuple[str, int]]:
        return set(self.jobs)

    def poll(self) -> list[FinishedJob]:
        done = [FinishedJob(t, a, TrialState.OOM, None, f"CUDA out of memory in {spec.model}",
                           OOMKind.GPU) for (t, a), spec in self.jobs.items()]
        self.jobs.clear()
        return done


@pytest.mark.parametrize("text", HOSTILE, ids=IDS)
def test_run_live_view_and_summary_print_verbatim(
    tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_backend, "LocalRayBackend", StandInRay)
    monkeypatch.setattr(LocalSweepRunner, "poll_interval", 0.0)
    url = f"sqlite:///{tmp_path / 'ladder.db'}"
    result = invoke("run", str(hostile_sweep(tmp_path, text)), "--db", url,
                    "--runs-dir", str(tmp_path / "runs"))
    assert result.exit_code == 1, result.output  # a sweep where nothing fitted has failed
    for model in (f"m{text}", f"org/{text}"):
        assert f"{model} attempt 1" in result.output  # the live view's launch line
        assert f"{model}: oom/gpu" in result.output  # its outcome line
    assert "Lane ceilings" in result.output and f"org/{text} (oom/gpu)" in result.output
    # The live view gives way to the summary: its lane table is not left behind as well.
    assert result.output.count(f"org/{text} (oom/gpu)") == 1
    assert "\nTrials: oom 2. OOMs: 2." in result.output
    with store.open_store(url)() as session:
        rows = store.attempts(session, "", "hostile")
    assert sorted(TrialState(r.status) for r in rows) == [TrialState.OOM] * 2


def test_a_finished_sweep_runs_again_without_starting_a_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[Path] = []

    class CountingRay(StandInRay):
        def __init__(self, runs_dir: Path, **_: Any) -> None:
            super().__init__()
            self.runs_dir = runs_dir

        def start(self) -> None:
            starts.append(self.runs_dir)

        def head_left_running(self) -> bool:
            return (self.runs_dir / "ray-head.json").exists()

    monkeypatch.setattr(local_backend, "LocalRayBackend", CountingRay)
    monkeypatch.setattr(LocalSweepRunner, "poll_interval", 0.0)
    url = f"sqlite:///{tmp_path / 'ladder.db'}"
    args = ("run", str(hostile_sweep(tmp_path, "[/x]")), "--db", url,
            "--runs-dir", str(tmp_path / "runs"))
    first = invoke(*args)
    assert first.exit_code == 1 and len(starts) == 1  # every lane out of memory: failed
    before = _rows(store.open_store(url))
    again = invoke(*args)
    assert again.exit_code == 1, again.output  # still failed, said the same way
    assert "nothing to run (Ray not started)" in again.output and len(starts) == 1
    assert "Lane ceilings" in again.output and "\nTrials: oom 2. OOMs: 2." in again.output
    assert [(r.trial_id, r.attempt, r.status) for r in _rows(store.open_store(url))] == [
        (r.trial_id, r.attempt, r.status) for r in before]
    # A head an earlier run left behind is taken over (and stopped) as before.
    (tmp_path / "runs" / "ray-head.json").write_text("{}")
    invoke(*args)
    assert len(starts) == 2


def _runner(tmp_path: Path, backend: Any, on_update: Any = None) -> tuple[LocalSweepRunner, Any]:
    sweep = load_sweep(hostile_sweep(tmp_path, "[/x]"))
    sessions = store.open_store(f"sqlite:///{tmp_path / 'runner.db'}")
    runner = LocalSweepRunner(sweep, backend, sessions, tmp_path / "runs", poll_interval=0.0,
                              on_update=on_update)
    return runner, sessions


def _rows(sessions: Any) -> list[Any]:
    with sessions() as session:
        return store.attempts(session, "", "hostile")


def test_a_failing_display_is_switched_off_and_the_sweep_goes_on(tmp_path: Path) -> None:
    calls = []

    def broken_display(status: Any, events: Any) -> None:
        calls.append(status)
        raise RuntimeError("closing tag '[/x]' doesn't match any open tag")

    runner, sessions = _runner(tmp_path, StandInRay(), broken_display)
    status = runner.run()
    assert len(calls) == 1  # switched off after the first failure
    assert status.phase.value == "Failed"  # ended: every model ran out of memory
    assert sorted(TrialState(r.status) for r in _rows(sessions)) == [TrialState.OOM] * 2


class DyingRay(StandInRay):
    """The stand-in backend, whose runtime dies (poll raises) once a trial is running."""

    def poll(self) -> list[FinishedJob]:
        if self.jobs:
            raise ConnectionError("Ray is gone (postgresql://u:hunter2@db/ladder)")
        return []


def test_a_failing_runner_records_its_running_attempts_as_cancelled(tmp_path: Path) -> None:
    runner, sessions = _runner(tmp_path, DyingRay())
    with pytest.raises(ConnectionError):
        runner.run()
    rows = _rows(sessions)
    assert rows and all(TrialState(r.status) is TrialState.CANCELLED for r in rows)
    assert all("the runner failed: ConnectionError" in r.error for r in rows), rows[0].error
    assert not any("hunter2" in r.error for r in rows)


def test_ladder_run_reports_a_failing_runner_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_backend, "LocalRayBackend", DyingRay)
    monkeypatch.setattr(LocalSweepRunner, "poll_interval", 0.0)
    url = f"sqlite:///{tmp_path / 'ladder.db'}"
    result = invoke("run", str(hostile_sweep(tmp_path, "[/x]")), "--db", url,
                    "--runs-dir", str(tmp_path / "runs"))
    assert result.exit_code == 1
    line = next(x for x in result.output.splitlines() if x.startswith("✗"))
    assert "the sweep stopped: ConnectionError" in line and "hunter2" not in result.output
