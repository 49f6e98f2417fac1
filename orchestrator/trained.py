"""From a stored trial to its saved weights, for `ladder export` and `ladder predict`.

The controller side never imports torch: this module finds the trial in the store (or the
sweep's best trial), the directory its weights were saved to, and runs the worker's side
(`python -m worker export|predict`, worker/export.py) as a subprocess. Every problem a user
can fix is a `TrainedError`: one line naming what is missing and how to get it.

Where the weights are: rank 0 writes `<trial output>/model` (worker.models.save_trained),
where the trial output is `<runs dir>/<sweep>/<trial>/<attempt>`: `ladder run`'s `--runs-dir`
locally, `spec.execution.outputDir` on Kubernetes (mounted here at the path given as
`--runs-dir`). The store records the sweep, trial and attempt; the path follows from them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.core.lifecycle import TrialState
from orchestrator.core.spec import SaveModel

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from orchestrator.store import AttemptRow

__all__ = ["Located", "TrainedError", "best_trial", "find_trial", "run_worker", "weights_dir"]

RERUN = "rerun with `training.saveModel: best`"
# Written by worker/export.py before a user error (exit 2); kept in step with ERROR_PREFIX there.
WORKER_ERROR_PREFIX = "ladder-error: "
MANIFEST = "ladder-model.json"  # worker.models.MANIFEST: what a trial's saved model/ holds


class TrainedError(RuntimeError):
    """Something the user can fix: one line."""


@dataclass(frozen=True)
class Located:
    """A stored trial attempt, its result record and where its weights are."""

    record: dict[str, Any]
    model_dir: Path


def _latest(rows: Sequence[AttemptRow]) -> list[AttemptRow]:
    from orchestrator.store.records import latest_rows

    return latest_rows(rows)


def find_trial(sessions: sessionmaker[Session], trial_id: str, runs_dir: Path) -> Located:
    """The latest attempt of trial `trial_id` (any sweep) and its weights' directory."""
    from orchestrator import store

    with sessions() as session:
        rows = _latest([r for r in store.all_attempts(session) if r.trial_id == trial_id])
        if not rows:
            raise TrainedError(f"no trial {trial_id!r} in the store (see `ladder results`)")
        if len(rows) > 1:
            sweeps = ", ".join(sorted(f"{r.sweep.namespace}/{r.sweep.name}" for r in rows))
            raise TrainedError(f"trial {trial_id!r} is in several sweeps ({sweeps})")
        return _located(rows[0], runs_dir)


def best_trial(
    sessions: sessionmaker[Session], sweep: str, runs_dir: Path, namespace: str | None = None
) -> Located:
    """The sweep's best trial: the succeeded latest attempt with the lowest best_eval_loss
    (the loss training.selectionLoss names, at its best epoch, as `ladder results` and the
    report's Table 3 rank them; ties go to the earlier lane and rung)."""
    from orchestrator import store

    with sessions() as session:
        rows = _latest(store.all_attempts(session, namespace=namespace, sweep=sweep))
        if not rows:
            raise TrainedError(f"no sweep {sweep!r} in the store (see `ladder status`)")
        done = [r for r in rows if r.status is TrialState.SUCCEEDED
                and r.best_eval_loss is not None]
        if not done:
            raise TrainedError(f"sweep {sweep!r} has no succeeded trial with an eval loss yet")
        best = min(done, key=lambda r: (r.best_eval_loss, r.lane, r.model_index))
        return _located(best, runs_dir)


def _located(row: AttemptRow, runs_dir: Path) -> Located:
    from orchestrator.store.records import result_record, sweep_from_row

    record = result_record(row)
    directory = weights_dir(runs_dir, row.sweep.name, row.trial_id, row.attempt)
    saved = sweep_from_row(row.sweep).spec.training.save_model
    if saved is SaveModel.NONE and not directory.is_dir():
        raise TrainedError(f"trial {row.trial_id} kept no weights (its sweep {row.sweep.name} "
                           f"ran with training.saveModel: none); {RERUN}")
    if not directory.is_dir():
        raise TrainedError(
            f"no saved weights of trial {row.trial_id} at {directory}: pass the runs directory "
            f"the sweep wrote to (--runs-dir; on Kubernetes where execution.outputDir is "
            f"mounted), or {RERUN} if the trial saved none")
    return Located(record, directory)


def weights_dir(runs_dir: Path, sweep: str, trial_id: str, attempt: int) -> Path:
    """`<runs dir>/<sweep>/<trial>/<attempt>/model`, as the backends name a trial's output."""
    return runs_dir / sweep / trial_id / str(attempt) / "model"


def run_worker(command: str, args: Sequence[str]) -> str:
    """Run `python -m worker COMMAND ARGS` (torch lives there); its stdout, or TrainedError
    with the worker's one-line message."""
    if importlib.util.find_spec("torch") is None:
        raise TrainedError(f"`ladder {command}` runs the model, which needs the worker's "
                           "dependencies: pip install 'ladder[worker]' (or use the worker image)")
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([sys.executable, "-m", "worker", command, *args], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        mine = [line for line in lines if line.startswith(WORKER_ERROR_PREFIX)]
        if mine:
            raise TrainedError(mine[-1].removeprefix(WORKER_ERROR_PREFIX))
        last = lines[-1] if lines else f"exit code {done.returncode}"
        raise TrainedError(f"python -m worker {command} failed: {last}")
    return done.stdout


def export(located: Located, out: Path, dtype: str) -> Path:
    run_worker("export", ["--model-dir", str(located.model_dir), "--out", str(out),
                          "--dtype", dtype, "--record", json.dumps(located.record)])
    return out


def predict(
    target: Path, questions: Sequence[str], *, explain: bool, device: str | None,
    batch_size: int, questions_file: Path,
) -> list[dict[str, Any]]:
    """The worker's predictions, one dict per question; `questions_file` is scratch space."""
    if not ((target / "config.json").is_file() or (target / MANIFEST).is_file()):
        raise TrainedError(
            f"{target} is not a model: no config.json (an exported model) and no {MANIFEST} "
            "(a trial's saved weights); make one with `ladder export`")
    questions_file.write_text("".join(json.dumps(q) + "\n" for q in questions),
                              encoding="utf-8")
    args = ["--model-dir", str(target), "--questions", str(questions_file),
            "--batch-size", str(batch_size)]
    if explain:
        args.append("--explain")
    if device:
        args += ["--device", device]
    out = run_worker("predict", args)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def read_questions(path: Path) -> list[str]:
    """Questions from a .jsonl file: each line a JSON string or an object with `input` (a DSS
    record) or `question`; TrainedError naming the line otherwise."""
    from orchestrator.files import MAX_QUESTIONS_BYTES, UserFileError, read_user_text
    from worker.data.dss import strict_json

    try:
        lines = read_user_text(path, max_bytes=MAX_QUESTIONS_BYTES,
                               what="questions file").splitlines()
    except UserFileError as error:
        raise TrainedError(f"{path}: {error}") from None
    questions = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = strict_json(line)
        except ValueError as error:
            raise TrainedError(f"{path}:{number}: not JSON ({error})") from None
        if isinstance(value, dict):
            value = value.get("input", value.get("question"))
        if not isinstance(value, str):
            raise TrainedError(f"{path}:{number}: expected a JSON string or an object with "
                               f"\"input\" or \"question\"")
        questions.append(value)
    if not questions:
        raise TrainedError(f"{path}: no questions in it")
    return questions
