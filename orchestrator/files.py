"""Files the pure core's models are read from and written to: Sweep YAML, trial JSON.

The core (`orchestrator/core`) parses and validates text and never touches the file system;
this adapter does the reading and writing for the CLI, the local backend, the worker and the
tests. Errors name the file: an unreadable Sweep raises `SpecError` with the path.
"""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.core.spec import MAX_SWEEP_NAME, Sweep, load_sweep_text, read_sweep_file
from orchestrator.core.worker_contract import AttemptSpec

__all__ = ["load_sweep", "read_trial", "write_trial"]


def _sweep_name_from_path(path: Path) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", path.stem.lower()).strip("-")
    return stem[:MAX_SWEEP_NAME].strip("-") or "sweep"


def load_sweep(path: str | Path) -> Sweep:
    """Load a Sweep from a YAML file (a whole manifest, or a bare spec named after the file)."""
    path = Path(path)
    text = read_sweep_file(path)
    return load_sweep_text(text, source=str(path), default_name=_sweep_name_from_path(path))


def write_trial(spec: AttemptSpec, path: str | Path) -> Path:
    """Write the trial as the worker reads it (`python -m worker run --trial FILE`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec.model_dump_json(by_alias=True, indent=2) + "\n", encoding="utf-8")
    return path


def read_trial(path: str | Path) -> AttemptSpec:
    """The trial a `--trial FILE` names."""
    return AttemptSpec.model_validate_json(Path(path).read_text(encoding="utf-8"))
