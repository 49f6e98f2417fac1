"""The benchmarks' figures, drawn from their JSON results (docs/benchmarks.md shows them).

    python tests/bench/makespan.py --plot docs/img/makespan.png
    python tests/bench/bench_scale.py --plot docs/img/controller-scale.png
    python tests/bench/bench_first_step.py --plot docs/img/first-step.png

Each function takes a benchmark's result (as its `--json` writes it) and returns the figure it
drew, saved to `path`; the drawing itself is the report's (`orchestrator.report.new_figure`,
`save_figure`: Agg, no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure

from orchestrator.report import new_figure, save_figure

LADDER_COLOR, PAPER_COLOR, BOUND_COLOR = "#4C72B0", "#DD8452", "#555555"


def makespan_figure(result: dict[str, Any], goal_ratio: float, path: Path) -> Figure:
    """Each scenario's makespan over its lower bound, Ladder's and the paper procedure's, as
    stems from the bound (1) on a log axis, with issue 16's `goal_ratio` as a dashed line;
    every point names its ratio and hours."""
    scenarios = result["scenarios"]
    keys = sorted(scenarios)
    figure = new_figure(9.5, 0.9 + 0.8 * len(keys))
    ax = figure.add_subplot()
    step = 0.18
    for i, key in enumerate(keys):
        s = scenarios[key]
        y = len(keys) - 1 - i
        for offset, ratio, hours, color, digits in (
            (step, s["ladder_ratio_to_bound"], s["ladder_hours"], LADDER_COLOR, 3),
            (-step, s["paper_procedure_ratio_to_bound"], s["paper_procedure_hours"],
             PAPER_COLOR, 2),
        ):
            ax.hlines(y + offset, 1.0, ratio, color=color, linewidth=2)
            ax.plot([ratio], [y + offset], marker="o", color=color)
            ax.annotate(f"{ratio:.{digits}f}x  ({hours:,.1f} h)", (ratio, y + offset),
                        xytext=(6, 0), textcoords="offset points", va="center", fontsize=8,
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    ax.set_xscale("log")
    ax.set_xlim(0.95, max(s["paper_procedure_ratio_to_bound"] for s in scenarios.values()) * 3)
    ax.set_ylim(-0.6, len(keys) - 0.4)
    ax.axvline(1.0, color=BOUND_COLOR, linewidth=1)
    ax.axvline(goal_ratio, color=BOUND_COLOR, linewidth=1, linestyle="--")
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels([f"{k}: {scenarios[k]['lanes']} lanes, {scenarios[k]['cluster']}\n"
                        f"bound {scenarios[k]['lower_bound_hours']:,.1f} h"
                        for k in reversed(keys)], fontsize=8)
    ax.set_xlabel("makespan / lower bound (log scale; solid line: the bound, "
                  f"dashed: the goal {goal_ratio:.2f})")
    ax.plot([], [], marker="o", color=LADDER_COLOR, label="Ladder")  # legend handles only
    ax.plot([], [], marker="o", color=PAPER_COLOR, label="the paper's procedure")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Simulated makespan against its physical limit (tests/bench/makespan.py)",
                 fontsize=10)
    save_figure(figure, path)
    return figure


def scale_figure(result: dict[str, Any], path: Path) -> Figure:
    """The controller's steady pass (CPU ms) and what it holds (MiB over its imports) against
    the potential trials, one line per count of trials in flight (the frozen grid, as the
    controller runs; unfrozen cells are left out)."""
    rows = [r for r in result["rows"] if r["freeze"]]
    in_flight = sorted({r["in_flight"] for r in rows})
    figure = new_figure(10, 4)
    cpu_ax, held_ax = figure.subplots(1, 2)
    for k in in_flight:
        cells = sorted((r for r in rows if r["in_flight"] == k), key=lambda r: r["trials"])
        trials = [r["trials"] for r in cells]
        cpu_ax.plot(trials, [r["pass_cpu_ms"] for r in cells], marker="o",
                    label=f"{k:,} in flight")
        held_ax.plot(trials, [r["held_rss_mib"] for r in cells], marker="o",
                     label=f"{k:,} in flight")
    for ax, label in ((cpu_ax, "steady reconcile pass, CPU ms"),
                      (held_ax, "held by the controller, MiB (RSS over imports)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("potential trials in the Sweep")
        ax.set_ylabel(label)
        ax.grid(True, which="major", linewidth=0.4)
        ax.legend(fontsize=8)
    figure.suptitle(f"Controller scale (tests/bench/bench_scale.py; {result['machine']})",
                    fontsize=10)
    save_figure(figure, path)
    return figure


def first_step_figure(result: dict[str, Any], total: str, path: Path) -> Figure:
    """Where a tiny trial's time to first step goes: one stacked bar per mode (fork server,
    fresh process) and method, a segment per phase (the medians; `total`, the sum's name, is
    not a phase), phases under 0.05 s left out of the legend."""
    modes = result.get("runs_by_mode") or {
        "fork server" if result.get("fork_server", True) else "fresh process": result}
    bars = [(f"{mode}: {method}", run["median"][method])
            for mode, run in modes.items() for method in run["methods"]]
    phases = list(dict.fromkeys(p for _, medians in bars for p in medians if p != total))
    named = {p for p in phases if any(m.get(p, 0.0) >= 0.05 for _, m in bars)}
    colors = colormaps["tab20"].colors
    figure = new_figure(10, 1.2 + 0.42 * len(bars))
    ax = figure.add_subplot()
    for i, (_, medians) in enumerate(bars):
        y = len(bars) - 1 - i
        left = 0.0
        for k, phase in enumerate(phases):
            width = medians.get(phase, 0.0)
            ax.barh(y, width, left=left, color=colors[k % len(colors)], height=0.6,
                    label=phase if phase in named and i == 0 else None)
            left += width
        ax.annotate(f"{medians[total]:.1f} s", (left, y), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set_xlim(0, max(medians[total] for _, medians in bars) * 1.12)
    ax.set_yticks(range(len(bars)))
    ax.set_yticklabels([label for label, _ in reversed(bars)], fontsize=8)
    ax.set_xlabel("seconds from the launch (submit_job) to the end of the probe step (median)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("Time to first step of a tiny trial, by phase "
                 "(tests/bench/bench_first_step.py)", fontsize=10)
    save_figure(figure, path)
    return figure
