"""The types every DSS data source shares: the example, the dataset error, the columns.

Kept apart from the loader (`dss.py`) and the generators (`querydsl.py`) so that neither
imports the other: the loader reaches the generators only through the registry in
`builtin.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from orchestrator.core import spec

__all__ = ["BUILTIN_PREFIX", "COLUMNS", "TASK_PREFIXES", "DSSExample", "DatasetError"]

#: Sources of this form name a generated dataset instead of a file (the spec's constant: the
#: spec refuses `builtin:` names that `builtin.BUILTINS` lacks, a test ties the two).
BUILTIN_PREFIX: Final = spec.BUILTIN_PREFIX
#: The three columns every record must carry, in the order CSV files are written.
COLUMNS: Final = ("input", "label", "rationale")
#: DSS trains each example twice: this prefix + input -> label, and this one -> rationale.
TASK_PREFIXES: Final = ("predict: ", "explain: ")


@dataclass(frozen=True, slots=True)
class DSSExample:
    """One training example: the model sees `input` and learns `label` and `rationale` from it."""

    input: str
    label: str
    rationale: str


class DatasetError(ValueError):
    """A dataset that cannot be used, with the file, 1-based line and problem in the message.

    The message reads `path:line: problem`, the format editors and CI annotators link to.
    Problems with the file as a whole (missing, empty, unknown extension) point at line 1 so
    the format never varies; `line` is None only for sources that are not files (an unknown
    `builtin:` name).
    """

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions travel between Ray processes by pickle; the default reduce would call
        # __init__ with the formatted message only and fail.
        return (type(self), (self.path, self.line, self.problem))
