"""Files the pure core's models are read from and written to: Sweep YAML, trial JSON.

The core (`orchestrator/core`) parses and validates text and never touches the file system;
this adapter does the reading and writing for the CLI, the controller's `ladder submit`, the
local backend, the worker and the tests. Errors name the file: an unreadable Sweep raises
`SpecError` with the path. A Sweep file is bounded before it is read (`read_manifest_file`:
a regular file of at most etcd's object limit, UTF-8); its text is then parsed by the core
(`core/manifest_yaml.py`, `core/spec.py`).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from orchestrator.core.manifest_yaml import MAX_MANIFEST_BYTES, ManifestError
from orchestrator.core.spec import MAX_SWEEP_NAME, SpecError, Sweep, load_sweep_text
from orchestrator.core.worker_contract import AttemptSpec

__all__ = ["load_sweep", "read_manifest_file", "read_sweep_file", "read_trial", "write_trial"]


def read_manifest_file(path: str | Path) -> str:
    """A manifest file's text, after refusing what is not a regular file or is too large,
    from its `stat` (a FIFO or a device is never opened for reading)."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as error:
        raise ManifestError("file", f"cannot read: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ManifestError("file", "is a directory, not a Sweep file")
    if not stat.S_ISREG(info.st_mode):
        raise ManifestError("file", "is not a regular file (a device, FIFO or socket)")
    if info.st_size > MAX_MANIFEST_BYTES:
        raise ManifestError(
            "file", f"{info.st_size} bytes is more than a Sweep may have "
            f"({MAX_MANIFEST_BYTES} bytes, etcd's object limit)"
        )
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO after the stat, open does not wait.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ManifestError("file", "is not a regular file")
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as error:
        raise ManifestError("file", f"cannot read: {error.strerror or error}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            "file", f"more than {MAX_MANIFEST_BYTES} bytes (etcd's object limit)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ManifestError("file", f"is not UTF-8 text (byte {error.start})") from None


def read_sweep_file(path: str | Path) -> str:
    """The text of a Sweep file; SpecError for what is not a regular file, too large or not
    UTF-8 (checked from its `stat`, before anything is read)."""
    try:
        return read_manifest_file(path)
    except ManifestError as error:
        raise SpecError(str(path), [(error.where, error.message)]) from None


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
