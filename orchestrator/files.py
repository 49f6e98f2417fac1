"""Files the pure core's models are read from and written to: Sweep YAML, trial JSON.

The core (`orchestrator/core`) parses and validates text and never touches the file system;
this adapter does the reading and writing for the CLI, the controller's `ladder submit`, the
local backend, the worker and the tests. Errors name the file: an unreadable Sweep raises
`SpecError` with the path. A Sweep file is bounded before it is read (`read_manifest_file`:
a regular file of at most etcd's object limit, UTF-8); its text is then parsed by the core
(`core/manifest_yaml.py`, `core/spec.py`). Every other file a user hands the CLI (questions,
distillation inputs, templates, key files) is read the same bounded way (`read_user_text`),
so a FIFO, a device, a directory, a huge file or bytes that are not UTF-8 are one line naming
the file, never a hang or a traceback.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from orchestrator.core.manifest_yaml import MAX_MANIFEST_BYTES, ManifestError
from orchestrator.core.spec import MAX_SWEEP_NAME, SpecError, Sweep, load_sweep_text
from orchestrator.core.worker_contract import AttemptSpec

__all__ = [
    "MAX_INPUTS_BYTES",
    "MAX_KEY_FILE_BYTES",
    "MAX_QUESTIONS_BYTES",
    "MAX_TEMPLATE_BYTES",
    "UserFileError",
    "load_sweep",
    "read_manifest_file",
    "read_sweep_file",
    "read_trial",
    "read_user_bytes",
    "read_user_text",
    "write_trial",
]


MiB = 2**20
#: The most each kind of user-named file may hold: a bound, so that a mistaken path (a disk
#: image, a log) is refused in a line instead of filling memory.
MAX_QUESTIONS_BYTES = 256 * MiB  # `ladder predict --file`
MAX_INPUTS_BYTES = 1024 * MiB  # `ladder distill` inputs (JSONL/CSV, read whole)
MAX_TEMPLATE_BYTES = 16 * MiB  # `ladder distill --template`
MAX_KEY_FILE_BYTES = 64 * 1024  # `ladder distill --api-key-file`


class UserFileError(ValueError):
    """A file that cannot be read as text: the message says why, without the path (callers
    put it where their own errors put it)."""


def read_user_text(path: str | Path, *, max_bytes: int, what: str = "file",
                   why_limit: str = "") -> str:
    """The text of a file a user named (`read_user_bytes`); bytes that are not UTF-8 are
    refused too."""
    data = read_user_bytes(path, max_bytes=max_bytes, what=what, why_limit=why_limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserFileError(f"is not UTF-8 text (byte {error.start})") from None


def read_user_bytes(path: str | Path, *, max_bytes: int, what: str = "file",
                    why_limit: str = "") -> bytes:
    """The bytes of a file a user named, after refusing what is not a regular file or holds
    more than `max_bytes` (`why_limit`: where that limit comes from), from its `stat` (a FIFO
    or a device is never opened for reading: it would block or never end). `what` names the
    file in the messages ("Sweep file")."""
    path = Path(path)
    limit = f"{max_bytes} bytes" + (f", {why_limit}" if why_limit else "")
    try:
        info = path.stat()
    except OSError as error:
        raise UserFileError(f"cannot read: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserFileError(f"is a directory, not a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise UserFileError("is not a regular file (a device, FIFO or socket)")
    if info.st_size > max_bytes:
        raise UserFileError(f"{info.st_size} bytes is more than a {what} may have ({limit})")
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO after the stat, open does not wait.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise UserFileError("is not a regular file")
            data = handle.read(max_bytes + 1)
    except OSError as error:
        raise UserFileError(f"cannot read: {error.strerror or error}") from None
    if len(data) > max_bytes:
        raise UserFileError(f"more than {limit}")
    return data


def read_manifest_file(path: str | Path) -> str:
    """A manifest file's text, bounded by etcd's object limit (`read_user_text`)."""
    try:
        return read_user_text(path, max_bytes=MAX_MANIFEST_BYTES, what="Sweep file",
                              why_limit="etcd's object limit")
    except UserFileError as error:
        raise ManifestError("file", str(error)) from None


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
