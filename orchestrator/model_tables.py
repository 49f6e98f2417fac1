"""What `ladder models` and `ladder plan` print about model sizes: the catalogue with its
memory estimates, and which rungs of a sweep's ladder the estimator expects to fit.

Pure presentation over `orchestrator.core.estimate` (no torch, no I/O): rich Tables and JSON-
ready dicts that the CLI prints.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.core.estimate import CatalogEntry, FitRow, catalog_estimates, fit_table
from orchestrator.core.formatting import fmt_bytes
from orchestrator.core.grid import Grid
from orchestrator.core.lifecycle import Method
from orchestrator.core.spec import PAPER_ADAPTERS, SweepSpec, Training

#: Columns the catalogue table needs; narrower terminals wrap rather than cut model names.
TABLE_WIDTH = 100

__all__ = [
    "TABLE_WIDTH", "catalog_json", "catalog_settings", "catalog_table", "fit_rich_table",
    "fit_rows", "wide",
]


def wide(console: Console) -> Console:
    """A console like `console` (text is text: no markup, no emoji) at least TABLE_WIDTH
    wide, so that a narrow or piped terminal wraps the catalogue rather than cutting names."""
    return Console(file=console.file, width=max(console.width, TABLE_WIDTH), markup=False,
                   emoji=False)


def catalog_settings(spec: SweepSpec | None) -> dict[str, Any]:
    """The settings the catalogue is estimated at: a sweep's (its training, workers, first
    LoRA rank and DSS weight), or the defaults: the paper's recipe on its 8 GPUs (one example
    per device), rank 32."""
    if spec is None:
        training = Training()
        return {"training": training, "workers": training.batch_size,
                "rank": PAPER_ADAPTERS[0].rank, "dss_two_tasks": True}
    return {
        "training": spec.training, "workers": spec.resources.workers,
        "rank": spec.adapters[0].rank if spec.adapters else PAPER_ADAPTERS[0].rank,
        "dss_two_tasks": spec.axes.dss_alpha[0] != 1.0,
    }


def _entries(settings: dict[str, Any]) -> list[CatalogEntry]:
    return catalog_estimates(settings["training"], workers=settings["workers"],
                             rank=settings["rank"], dss_two_tasks=settings["dss_two_tasks"])


def catalog_json(settings: dict[str, Any]) -> dict[str, Any]:
    training: Training = settings["training"]
    return {
        "maxInputTokens": training.max_input_tokens,
        "maxOutputTokens": training.max_output_tokens,
        "batchPerDevice": training.pass_batch(settings["workers"]),
        "precision": training.precision.value,
        "gradientCheckpointing": training.gradient_checkpointing,
        "loraRank": settings["rank"],
        "models": [
            {
                "name": e.name, "family": e.family, "parameters": e.parameters,
                "tiedEmbeddings": e.tied_embeddings,
                "memoryBytes": {m.value: est.total_bytes for m, est in e.estimates.items()},
            }
            for e in _entries(settings)
        ],
    }


def catalog_table(settings: dict[str, Any]) -> Table:
    table = Table(show_edge=False, title="estimated peak GPU memory per device",
                  title_justify="left")
    table.add_column("model", no_wrap=True)
    table.add_column("family", no_wrap=True)
    table.add_column("parameters", justify="right", no_wrap=True)
    table.add_column("tied", no_wrap=True)
    for method in Method:
        table.add_column(method.value, justify="right", no_wrap=True)
    for e in _entries(settings):
        table.add_row(e.name, e.family, f"{e.parameters / 1e6:,.1f}M",
                      "yes" if e.tied_embeddings else "",
                      *(fmt_bytes(e.estimates[m].total_bytes) if m in e.estimates else "-"
                        for m in Method))
    return table


def fit_rows(spec: SweepSpec, grid: Grid) -> list[FitRow]:
    """The ladder of each method's first lane, estimated (see `estimate.fit_table`)."""
    first: dict[Method, list[Any]] = {}
    for lane in grid.lanes:
        if lane.method not in first:
            first[lane.method] = list(grid.trials[lane.name])
    return fit_table(spec, first)


def fit_rich_table(spec: SweepSpec, grid: Grid) -> Table | None:
    """Model x method: the estimated peak per device and whether it fits; None when no model
    of the ladder has a known architecture."""
    rows = fit_rows(spec, grid)
    if all(r.estimate is None for r in rows):
        return None
    methods = list(dict.fromkeys(r.method for r in rows))
    device = spec.escalation.device_memory_bytes
    budget = spec.escalation.memory_budget_bytes
    title = "estimated peak GPU memory per device"
    if any(r.predicted_oom is not None for r in rows) and device is not None:
        limit = min(device, budget) if budget is not None else device
        title += f" of {fmt_bytes(limit)}"
    else:
        title += " (no verdict: deviceMemory unset or predictOOM off)"
    table = Table(show_edge=False, title=title, title_justify="left")
    table.add_column("model", no_wrap=True)
    for method in methods:
        table.add_column(method.value, justify="right")
    cells = {(r.model, r.method): r for r in rows}
    for model in spec.ladder:
        row = [model]
        for method in methods:
            r = cells.get((model, method))
            if r is None or r.estimate is None:
                row.append("?")
                continue
            verdict = {None: "", True: " OOM", False: " fits"}[r.predicted_oom]
            row.append(fmt_bytes(r.estimate.total_bytes) + verdict)
        table.add_row(*row)
    return table
