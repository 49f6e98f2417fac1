"""Rank 0's latest summary, kept for the driver: the one class a trial's `ProgressBox` actor
process imports.

It lives apart from worker.train on purpose: Ray starts the actor in a fresh process that
imports the class's module, and worker.train imports torch, transformers and the data code
(about 4 CPU-seconds). This module imports nothing, so the actor costs Ray's own start-up only.
"""

from __future__ import annotations

from typing import Any


class ProgressBox:
    """Rank 0's latest summary, kept for the driver by an actor on the driver's node.

    It outlives a failed or killed rank (its pod may be gone), needs no storage and no
    checkpoint, and crosses nodes through Ray's own RPC.
    """

    def __init__(self) -> None:
        self._summary: dict[str, Any] = {}

    def put(self, summary: dict[str, Any]) -> None:
        self._summary = summary

    def get(self) -> dict[str, Any]:
        return self._summary
