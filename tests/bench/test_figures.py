"""The benchmarks' figures (tests/bench/figures.py) draw what their results say, and only that."""

from __future__ import annotations

from pathlib import Path

from tests.bench.test_bench_quick import load

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def scenario(lanes: int, bound: float, ladder: float, paper: float) -> dict[str, object]:
    return {"lanes": lanes, "cluster": "2 x 4 GPUs", "lower_bound_hours": bound,
            "ladder_hours": ladder, "paper_procedure_hours": paper,
            "ladder_ratio_to_bound": ladder / bound,
            "paper_procedure_ratio_to_bound": paper / bound}


def test_the_makespan_figure_puts_each_scenario_against_its_bound(tmp_path: Path) -> None:
    figures = load("figures")
    result = {"scenarios": {"B": scenario(25, 200.0, 210.0, 600.0),
                            "A": scenario(25, 20.0, 21.0, 35.0)}}
    figure = figures.makespan_figure(result, 1.10, tmp_path / "makespan.png")
    assert (tmp_path / "makespan.png").read_bytes().startswith(PNG_MAGIC)
    ax = figure.axes[0]
    # A on top, then B; each with Ladder's point above the paper procedure's.
    points = [(round(line.get_xdata()[0], 6), round(line.get_ydata()[0], 6))
              for line in ax.lines if len(line.get_xdata()) == 1]
    assert sorted(points, key=lambda p: -p[1]) == [(1.05, 1.18), (1.75, 0.82), (1.05, 0.18),
                                                   (3.0, -0.18)]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["1.050x  (21.0 h)", "1.75x  (35.0 h)", "1.050x  (210.0 h)",
                     "3.00x  (600.0 h)"]
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "B: 25 lanes, 2 x 4 GPUs\nbound 200.0 h", "A: 25 lanes, 2 x 4 GPUs\nbound 20.0 h"]
    assert sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--") \
        == [1.10]


def test_the_scale_figure_draws_the_frozen_cells_one_line_per_count_in_flight(
        tmp_path: Path) -> None:
    figures = load("figures")
    rows = [
        {"trials": 1_000, "in_flight": 10, "freeze": True, "pass_cpu_ms": 8.0,
         "held_rss_mib": 4.0},
        {"trials": 10_000, "in_flight": 10, "freeze": True, "pass_cpu_ms": 25.0,
         "held_rss_mib": 9.0},
        {"trials": 10_000, "in_flight": 1_000, "freeze": True, "pass_cpu_ms": 191.0,
         "held_rss_mib": 46.0},
        {"trials": 10_000, "in_flight": 10, "freeze": False, "pass_cpu_ms": 99.0,
         "held_rss_mib": 99.0},
    ]
    figure = figures.scale_figure({"machine": "test", "rows": rows}, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").read_bytes().startswith(PNG_MAGIC)
    cpu_ax, held_ax = figure.axes
    assert [(line.get_label(), list(line.get_xdata()), list(line.get_ydata()))
            for line in cpu_ax.lines] == [("10 in flight", [1_000, 10_000], [8.0, 25.0]),
                                          ("1,000 in flight", [10_000], [191.0])]
    assert [list(line.get_ydata()) for line in held_ax.lines] == [[4.0, 9.0], [46.0]]


def test_the_first_step_figure_stacks_each_modes_phases_in_order(tmp_path: Path) -> None:
    figures = load("figures")
    total = "time to first step"

    def run(fork_server: bool, submission: float, imports: float) -> dict[str, object]:
        medians = {"job submission": submission, "imports": imports, "probe step": 0.01,
                   total: submission + imports + 0.01}
        return {"fork_server": fork_server, "methods": ["full"], "median": {"full": medians}}

    result = {"runs_by_mode": {"fork server": run(True, 0.9, 0.0),
                               "fresh process": run(False, 0.7, 3.0)}}
    figure = figures.first_step_figure(result, total, tmp_path / "first-step.png")
    assert (tmp_path / "first-step.png").read_bytes().startswith(PNG_MAGIC)
    ax = figure.axes[0]
    segments = [(round(bar.get_y() + bar.get_height() / 2), round(bar.get_x(), 6),
                 round(bar.get_width(), 6)) for bar in ax.patches]
    # The fork server's bar on top (y 1), each phase starting where the one before ended.
    assert segments == [(1, 0.0, 0.9), (1, 0.9, 0.0), (1, 0.9, 0.01),
                        (0, 0.0, 0.7), (0, 0.7, 3.0), (0, 3.7, 0.01)]
    assert [t.get_text() for t in ax.texts] == ["0.9 s", "3.7 s"]
    # A phase under 0.05 s in every bar is drawn but not named in the legend.
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["job submission", "imports"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["fresh process: full",
                                                            "fork server: full"]
