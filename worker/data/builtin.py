"""The built-in data sources (`builtin:NAME`): a small registry of generators.

`dss.load_dss` hands every `builtin:` source to `load_builtin`. A generator is imported only
when its source is asked for (the Query DSL generator is large). To add one, write a loader
with the signature of `_querydsl` and register it in `BUILTINS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from worker.data.examples import BUILTIN_PREFIX, DatasetError, DSSExample

__all__ = ["BUILTINS", "DEFAULT_BUILTIN_SIZE", "load_builtin"]

#: Examples a generator makes when the Sweep gives no `dataset.size` (the paper's 1,000).
DEFAULT_BUILTIN_SIZE: Final = 1000

Loader = Callable[[int, int, str], list[DSSExample]]  # (size, seed, preamble) -> examples


def _querydsl(size: int, seed: int, preamble: str) -> list[DSSExample]:
    from worker.data.querydsl import generate_querydsl

    return generate_querydsl(n=size, seed=seed, preamble=preamble)


#: Every built-in source by name (`builtin:querydsl` -> "querydsl").
BUILTINS: Final[dict[str, Loader]] = {"querydsl": _querydsl}


def load_builtin(source: str, *, size: int | None, preamble: str, seed: int) -> list[DSSExample]:
    """The examples of a `builtin:NAME` source; `DatasetError` names an unknown source or a
    bad option (a preamble the generator does not know)."""
    name = source[len(BUILTIN_PREFIX):]
    loader = BUILTINS.get(name)
    if loader is None:
        known = ", ".join(BUILTIN_PREFIX + known for known in sorted(BUILTINS))
        raise DatasetError(source, None, f"unknown built-in dataset (known: {known})")
    try:
        return loader(DEFAULT_BUILTIN_SIZE if size is None else size, seed, preamble)
    except ValueError as exc:
        raise DatasetError(source, None, str(exc)) from exc
