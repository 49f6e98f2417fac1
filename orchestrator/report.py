"""`ladder report`: the paper's tables and figures for one sweep, from the store alone.

Writes `report.md` and `report.html` (styles inline, figures as PNG files beside them) with:

- Table 3: the top k trials by best evaluation loss (model, method, rank, alpha, loss, GPU
  memory summed over devices, training-loop samples/s, time, and the generated DSL's exact
  match and JSON validity that the paper could not report);
- for the same trials, the text metrics the paper's limitations section asks for (BLEU, chrF,
  TER, the DSL's structural similarity) and throughput both ways: training-loop samples/s
  and end-to-end samples/s (evaluation, generation and saves included);
- Table 4 (when the sweep ran dssAlpha 0.5 and 1.0): per model x method, the mean best
  evaluation loss over seeds of each, and their difference;
- Figure 6: per model x method means of evaluation loss, samples/s, memory and training time
  (GPU memory summed over devices; peak host memory when the trials ran on CPU, said so on
  the chart);
- Figure 7: heatmaps of mean evaluation loss over (rank, alpha), one for LoRA, one for QLoRA;
- the lane ceilings, and per-epoch loss curves.

Only each trial's latest attempt counts, and only succeeded trials enter means and rankings.
Nothing here reads Prometheus, Ray or the runs directory: what the store holds is the report.
"""

from __future__ import annotations

import html
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import store
from orchestrator.bookkeeping import sweep_status
from orchestrator.core.formatting import fmt_bytes, fmt_float, fmt_opt, fmt_ratio, fmt_seconds
from orchestrator.core.grid import expand
from orchestrator.core.lifecycle import Method, TrialState
from orchestrator.core.plan import SweepStatus
from orchestrator.core.spec import Sweep
from orchestrator.core.stopping import StopReason
from orchestrator.core.worker_contract import AttemptResult
from orchestrator.store.records import latest_rows, sweep_from_row

DEFAULT_TOP = 8
DSS_ALPHAS = (0.5, 1.0)  # Table 4: DSS (rationale + label) against label-only training
ADAPTER_METHODS = (Method.LORA, Method.QLORA)
METHOD_COLORS = {Method.FULL: "#4C72B0", Method.LORA: "#DD8452", Method.QLORA: "#55A868"}
DPI = 110


class ReportError(Exception):
    """The store holds no such sweep, or several match."""


@dataclass(frozen=True)
class SweepData:
    """Everything a report shows, read from the store in one transaction."""

    sweep: Sweep
    status: SweepStatus | None  # None for a sweep stored without its spec
    results: list[AttemptResult]  # each trial's latest attempt, with its epochs
    attempts: int
    lane_info: dict[str, tuple[Method, int | None, int | None, float, int]] = field(
        default_factory=dict
    )

    @property
    def succeeded(self) -> list[AttemptResult]:
        return [r for r in self.results if r.status is TrialState.SUCCEEDED]

    @property
    def models(self) -> list[str]:
        """Models in ladder order (the spec's; else by ladder index)."""
        seen = {r.model: r.model_index for r in self.results}
        ladder = [m for m in self.sweep.spec.ladder if m in seen]
        return ladder + sorted(set(seen) - set(ladder), key=lambda m: (seen[m], m))

    @property
    def loss_shown(self) -> str:
        """Which evaluation loss `best_eval_loss` is (training.selectionLoss), as recorded by
        the results: 'label', 'rationale', 'dss'; 'mixed' when trials differ; results stored
        before it was recorded held the DSS-weighted loss."""
        selections = {r.selection_loss.value if r.selection_loss else "dss"
                      for r in self.results if r.best_eval_loss is not None}
        if not selections:
            return self.sweep.spec.training.selection_loss.value
        return selections.pop() if len(selections) == 1 else "mixed"

    @property
    def methods(self) -> list[Method]:
        present = {r.method for r in self.results}
        return [m for m in Method if m in present]


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    align_right: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Section:
    title: str
    text: Sequence[str] = ()
    table: Table | None = None
    image: str | None = None  # a PNG file name in the report directory
    image_alt: str = ""


@dataclass(frozen=True)
class Report:
    markdown: Path
    html: Path
    images: tuple[Path, ...]


# --- reading ------------------------------------------------------------------------------


def load(sessions: sessionmaker[Session], sweep: str | None = None,
         namespace: str | None = None) -> SweepData:
    """The sweep's data; `sweep` may be omitted when the store holds exactly one."""
    with sessions() as session:
        rows = [r for r in store.list_sweeps(session)
                if (sweep is None or r.name == sweep)
                and (namespace is None or r.namespace == namespace)]
        if not rows:
            what = f"sweep {sweep!r}" if sweep else "sweep"
            where = f" in namespace {namespace!r}" if namespace is not None else ""
            raise ReportError(f"the store holds no {what}{where}")
        if len(rows) > 1:
            names = ", ".join(f"{r.namespace}/{r.name}" if r.namespace else r.name
                              for r in rows)
            raise ReportError(f"several sweeps match ({names}); name one (and --namespace)")
        sweep_row = rows[0]
        attempts = store.attempts(session, sweep_row.namespace, sweep_row.name,
                                  with_epochs=True)
        recorded = sweep_from_row(sweep_row)
        status = sweep_status(recorded, attempts) if sweep_row.spec else None
        results = [store.to_result(row) for row in latest_rows(attempts)]
    lanes = {lane.name: (lane.method, lane.rank, lane.alpha, lane.dss_alpha, lane.seed)
             for lane in expand(recorded).lanes} if status is not None else {}
    for result in results:
        lanes.setdefault(result.lane, (result.method, result.rank, result.alpha,
                                       result.dss_alpha, result.seed))
    results.sort(key=lambda r: (r.lane, r.model_index))
    return SweepData(sweep=recorded, status=status, results=results, attempts=len(attempts),
                     lane_info=lanes)


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(present) if present else None


def memory_of(
    results: Sequence[AttemptResult],
) -> tuple[str, Callable[[AttemptResult], float | None]]:
    """Which memory the figures show: GPU summed over devices, else peak host memory (CPU)."""
    if any(r.total_gpu_memory_bytes for r in results):
        return "GPU memory, summed over devices", lambda r: r.total_gpu_memory_bytes
    return ("host memory, peak RSS (CPU trials: no GPU memory recorded)",
            lambda r: r.peak_host_memory_bytes)


# --- tables -------------------------------------------------------------------------------


def top_trials(data: SweepData, k: int) -> list[AttemptResult]:
    ranked = [r for r in data.succeeded if r.best_eval_loss is not None]
    return sorted(ranked, key=lambda r: (r.best_eval_loss, r.lane, r.model_index))[:k]


def top_trials_table(data: SweepData, k: int) -> Table:
    """The top `k` succeeded trials by best eval loss, with their memory, speed and time (the
    paper's Table 3)."""
    rows = []
    for place, r in enumerate(top_trials(data, k), start=1):
        rows.append([
            str(place), r.model, r.method.value, fmt_opt(r.rank), fmt_opt(r.alpha),
            f"{r.dss_alpha:g}", str(r.seed), fmt_float(r.best_eval_loss),
            fmt_bytes(r.total_gpu_memory_bytes), fmt_bytes(r.peak_host_memory_bytes),
            fmt_float(r.samples_per_second, 1), fmt_seconds(r.wall_seconds),
            fmt_ratio(r.exact_match), fmt_ratio(r.json_valid_rate),
        ])
    headers = ["#", "model", "method", "rank", "alpha", "dssAlpha", "seed",
               f"eval loss ({data.loss_shown})",
               "GPU mem (summed)", "host mem (peak)", "samples/s (training loop)", "time",
               "exact match", "JSON valid"]
    return Table(headers, rows, frozenset({0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}))


def generation_table(data: SweepData, k: int) -> Table:
    """The top k trials' generated labels scored as text and as JSON, and their throughput
    both ways (training loop, and end to end)."""
    rows = []
    for place, r in enumerate(top_trials(data, k), start=1):
        rows.append([
            str(place), r.trial_id, r.model, r.method.value, fmt_opt(r.rank), fmt_opt(r.alpha),
            fmt_float(r.bleu, 1), fmt_float(r.chrf, 1), fmt_float(r.ter, 1),
            fmt_ratio(r.dsl_similarity), fmt_float(r.samples_per_second, 1),
            fmt_float(r.end_to_end_samples_per_second, 1),
        ])
    headers = ["#", "trial", "model", "method", "rank", "alpha", "BLEU", "chrF", "TER",
               "DSL similarity", "samples/s (training loop)", "samples/s (end to end)"]
    return Table(headers, rows, frozenset({0, 4, 5, 6, 7, 8, 9, 10, 11}))


GENERATION_NOTE = (
    "The metrics the paper's limitations section asks for, on the greedy generations of the "
    "last generation round (training.generateEvery, generateLimit): corpus BLEU, chrF and TER "
    "from sacrebleu (default settings, 0-100; TER lower is better), and the DSL similarity: "
    "the JSON leaves (path, value) the generated and reference Query DSL share, over the "
    "leaves of either, averaged. Throughput both ways: **training-loop** samples/s (Table 3 "
    "and Figure 6; evaluation, generation and saves excluded) and **end-to-end** samples/s "
    "over the whole epoch loop, the closest to the HF Trainer's train_samples_per_second "
    "that the paper likely read."
)


def has_dss_ablation(data: SweepData) -> bool:
    alphas = {r.dss_alpha for r in data.succeeded}
    return all(any(math.isclose(a, b) for a in alphas) for b in DSS_ALPHAS)


def dss_ablation_table(data: SweepData) -> Table:
    """Per model x method: mean best eval loss at dssAlpha 0.5 and 1.0, and the difference
    (the paper's Table 4, the DSS ablation)."""
    losses: dict[tuple[str, Method], dict[float, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in data.succeeded:
        for dss in DSS_ALPHAS:
            if math.isclose(r.dss_alpha, dss) and r.best_eval_loss is not None:
                losses[(r.model, r.method)][dss].append(r.best_eval_loss)
    rows = []
    for model in data.models:
        for method in data.methods:
            cell = losses.get((model, method))
            if not cell or not all(cell.get(d) for d in DSS_ALPHAS):
                continue
            dss, label = (statistics.fmean(cell[d]) for d in DSS_ALPHAS)
            rows.append([
                model, method.value, f"{dss:.5f} (n={len(cell[0.5])})",
                f"{label:.5f} (n={len(cell[1.0])})", f"{label - dss:+.2e}",
                "yes" if dss < label else "no",
            ])
    headers = ["model", "method", "dssAlpha 0.5 (DSS)", "dssAlpha 1.0 (label only)",
               "difference (1.0 - 0.5)", "DSS better"]
    return Table(headers, rows, frozenset({2, 3, 4}))


def helped_rows(data: SweepData) -> list[tuple[str, Method, AttemptResult]]:
    """Per model x method that has a baseline: the best tuned trial (lowest best eval loss)."""
    out = []
    for model in data.models:
        for method in data.methods:
            tuned = [r for r in data.succeeded if (r.model, r.method) == (model, method)
                     and r.best_eval_loss is not None and r.baseline_eval_loss is not None]
            if tuned:
                best = min(tuned, key=lambda r: (r.best_eval_loss, r.lane, r.model_index))
                out.append((model, method, best))
    return out


def helped_table(data: SweepData) -> Table:
    """"Did fine-tuning help?": per model x method, the best tuned trial against its own
    baseline (the same trial's untuned model, epoch 0): eval loss and exact match."""
    rows = []
    for model, method, r in helped_rows(data):
        assert r.baseline_eval_loss is not None and r.best_eval_loss is not None
        gain = r.baseline_eval_loss - r.best_eval_loss
        rows.append([
            model, method.value, fmt_float(r.baseline_eval_loss), fmt_float(r.best_eval_loss),
            f"{gain:+.5f}", fmt_ratio(r.baseline_exact_match), fmt_ratio(r.exact_match),
            "yes" if gain > 0 else "no", f"`{r.trial_id}` {r.lane}",
        ])
    headers = ["model", "method", f"baseline eval loss ({data.loss_shown})",
               "best tuned eval loss", "gain (baseline - tuned)", "baseline exact match",
               "tuned exact match", "helped", "best tuned trial"]
    return Table(headers, rows, frozenset({2, 3, 4, 5, 6}))


def ceilings_table(data: SweepData) -> Table:
    rows = []
    if data.status is not None:
        for lane in data.status.lanes:
            method, rank, alpha, dss, seed = data.lane_info[lane.name]
            stop = lane.stopped_at_model or "-"
            if lane.oom_kind is not None:
                stop += f" (oom/{lane.oom_kind.value})"
            rows.append([lane.name, method.value, fmt_opt(rank), fmt_opt(alpha), f"{dss:g}",
                         str(seed), lane.state.value, lane.ceiling_model or "-", stop])
    headers = ["lane", "method", "rank", "alpha", "dssAlpha", "seed", "state",
               "ceiling (largest model that fitted)", "stopped at"]
    return Table(headers, rows)


def stopping_section(data: SweepData) -> Section | None:
    """The epoch each trial's training stopped at and why (training.earlyStopping), for
    trials that ended normally; None when no trial recorded it."""
    stopped = [r for r in data.results if r.stopped_epoch is not None and r.stop_reason]
    if not stopped:
        return None
    configured = data.sweep.spec.training.epochs
    rule = data.sweep.spec.training.early_stopping
    rows = [[r.trial_id, r.lane, _short(r.model), str(r.stopped_epoch), str(configured),
             r.stop_reason.value if r.stop_reason else "-", fmt_opt(r.best_epoch)]
            for r in stopped]
    early = sum(r.stop_reason is StopReason.EARLY_STOPPING for r in stopped)
    saved = sum(configured - (r.stopped_epoch or configured) for r in stopped)
    setting = (f"training.earlyStopping: patience {rule.patience}, minDelta "
               f"{rule.min_delta:g} on the {data.loss_shown} loss; " if rule else
               "training.earlyStopping is off (every configured epoch runs); ")
    text = [f"{setting}{early} of {len(stopped)} trials stopped early, {saved} epochs not run."]
    headers = ["trial", "lane", "model", "stopped after epoch", "of", "why", "best epoch"]
    return Section("Where training stopped", text, table=Table(headers, rows))


def estimator_rows(data: SweepData) -> list[tuple[AttemptResult, float]]:
    """Trials with both the estimate made before launch and a measured GPU peak (the
    allocator's reserve of the busiest device), with estimate / measured."""
    return [(r, r.estimated_memory_bytes / r.peak_torch_reserved_bytes)
            for r in data.succeeded
            if r.estimated_memory_bytes and r.peak_torch_reserved_bytes]


def estimator_section(data: SweepData) -> Section:
    title = "Memory estimate against the measured peak"
    pairs = estimator_rows(data)
    if not pairs:
        return Section(title, [
            "No trial has both the estimate and a GPU peak (CPU trials record host memory "
            "only), so the estimator's error cannot be measured from this sweep; "
            "docs/benchmarks.md has the GPU figures where a GPU was available."])
    rows = [[r.trial_id, _short(r.model), r.method.value, fmt_opt(r.rank),
             fmt_bytes(r.estimated_memory_bytes), fmt_bytes(r.peak_torch_reserved_bytes),
             fmt_bytes(r.peak_gpu_memory_bytes), f"{ratio:.2f}"] for r, ratio in pairs]
    errors = [abs(ratio - 1) for _, ratio in pairs]
    within = sum(e <= 0.2 for e in errors)
    text = [f"{len(pairs)} trials; mean absolute error {100 * sum(errors) / len(errors):.0f}%, "
            f"{within} within 20% (the target). The measured peak is the CUDA allocator's "
            "reserve on the busiest device (what runs out); NVML's figure adds the CUDA "
            "context and other processes."]
    headers = ["trial", "model", "method", "rank", "estimate", "measured (torch reserved)",
               "NVML peak", "estimate / measured"]
    return Section(title, text, table=Table(headers, rows, frozenset({4, 5, 6, 7})))


LOSS_NOTE = (
    "Evaluation loss shown: the **{}** loss (training.selectionLoss; it also picked each "
    "trial's best epoch and drove the LR plateau). label is the authors' metric (they "
    "evaluate with output_rationale=False); dss is a * label + (1 - a) * rationale. All "
    "three are stored per epoch, and `ladder results --json` has eval_label_loss and "
    "eval_rationale_loss at the best epoch."
)


def summary_lines(data: SweepData) -> list[str]:
    counts: dict[str, int] = defaultdict(int)
    for r in data.results:
        counts[r.status.value] += 1
    states = ", ".join(f"{state.value} {counts[state.value]}" for state in TrialState
                       if counts[state.value])
    lines = []
    if data.status is not None:
        lines.append(f"Phase **{data.status.phase.value}**: {data.status.trials_done} of "
                     f"{data.status.trials_total} potential trials have a final outcome "
                     f"({len(data.status.lanes)} lanes x {len(data.sweep.spec.ladder)} "
                     f"models).")
    lines.append(f"Trials (latest attempt of each): {states or 'none'}; "
                 f"{data.attempts} attempts in all.")
    best = top_trials(data, 1)
    if best:
        b = best[0]
        adapter = f" r{b.rank}/a{b.alpha}" if b.rank is not None else ""
        lines.append(f"Best trial: `{b.trial_id}` {b.model} {b.method.value}{adapter}, "
                     f"eval loss ({data.loss_shown}) **{fmt_float(b.best_eval_loss)}**.")
    lines.append(LOSS_NOTE.format(data.loss_shown))
    gpu = any(r.total_gpu_memory_bytes for r in data.results)
    lines.append("Devices: GPU memory as NVML measured it, summed over each trial's devices."
                 if gpu else "Devices: CPU only (no GPU memory recorded); memory figures "
                 "show each trial's peak host memory (RSS).")
    return lines


# --- figures ------------------------------------------------------------------------------


def new_figure(width: float, height: float) -> Figure:
    """A figure drawn off-screen (Agg, no display needed): the report's, and the benchmarks'
    (tests/bench/figures.py)."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: Path) -> Path:
    """Write `figure` as a PNG on white, trimmed to its content."""
    figure.savefig(path, dpi=DPI, facecolor="white", bbox_inches="tight", pad_inches=0.15)
    return path


def _scale(values: Iterable[float]) -> tuple[float, str]:
    top = max(values, default=0.0)
    if top >= 2**30:
        return 2**30, "GiB"
    return 2**20, "MiB"


def _short(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def model_method_bars(data: SweepData, path: Path) -> Path:
    """2 x 2 grouped bars: per model x method means of loss, samples/s, memory, time (the
    paper's Figure 6; written as figure6.png)."""
    succeeded = data.succeeded
    memory_label, memory = memory_of(succeeded)
    factor, unit = _scale(v for r in succeeded if (v := memory(r)) is not None)
    panels: list[tuple[str, Callable[[AttemptResult], float | None]]] = [
        (f"Evaluation loss, {data.loss_shown} (best epoch)", lambda r: r.best_eval_loss),
        ("Training-loop samples/s", lambda r: r.samples_per_second),
        (f"Memory ({unit}): {memory_label}",
         lambda r: None if (v := memory(r)) is None else v / factor),
        ("Training time (s, wall)", lambda r: r.wall_seconds),
    ]
    models, methods = data.models, data.methods
    figure = new_figure(11, 7.5)
    figure.suptitle(f"Figure 6 form: sweep {data.sweep.name}, means per model x method "
                    f"(succeeded trials)", fontsize=12)
    axes = figure.subplots(2, 2)
    width = 0.8 / max(len(methods), 1)
    for ax, (title, value) in zip(axes.flat, panels, strict=True):
        for m_index, method in enumerate(methods):
            xs, means, errors, counts = [], [], [], []
            for x, model in enumerate(models):
                values = [v for r in succeeded if r.model == model and r.method is method
                          and (v := value(r)) is not None]
                if not values:
                    _no_bar(ax, x + (m_index - (len(methods) - 1) / 2) * width, data, model,
                            method)
                    continue
                xs.append(x + (m_index - (len(methods) - 1) / 2) * width)
                means.append(statistics.fmean(values))
                errors.append(statistics.stdev(values) if len(values) > 1 else 0.0)
                counts.append(len(values))
            bars = ax.bar(xs, means, width * 0.95, yerr=errors, capsize=3,
                          color=METHOD_COLORS[method], label=method.value,
                          error_kw={"elinewidth": 0.8, "alpha": 0.7})
            ax.bar_label(bars, labels=[f"{m:.3g}" for m in means], fontsize=7, padding=2)
        ax.set_title(title, fontsize=10, wrap=True)
        ax.set_xticks(range(len(models)), [_short(m) for m in models], fontsize=8)
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].legend(title="method", fontsize=8, title_fontsize=8)
    figure.text(0.5, -0.01, "Bars: mean over lanes and seeds; whiskers: standard deviation.",
                ha="center", fontsize=8, color="#555555")
    return save_figure(figure, path)


def _no_bar(ax: Axes, x: float, data: SweepData, model: str, method: Method) -> None:
    """Say why a bar is missing: the trial's state (oom, failed, running, ...)."""
    states = sorted({r.status.value + (f"/{r.oom_kind.value}" if r.oom_kind else "")
                     for r in data.results if r.model == model and r.method is method})
    if states:
        ax.text(x, 0, "\n".join(states), ha="center", va="bottom", fontsize=7, rotation=90,
                color="#aa3333")


def rank_alpha_heatmaps(data: SweepData, path: Path) -> Path:
    """Heatmaps of mean best eval loss over (rank, alpha), one per adapter method (the paper's
    Figure 7; written as figure7.png)."""
    methods = [m for m in ADAPTER_METHODS if any(r.method is m for r in data.results)]
    methods = methods or [Method.LORA]
    succeeded = data.succeeded
    figure = new_figure(5.2 * len(methods) + 0.8, 4.6)
    figure.suptitle(f"Figure 7 form: mean evaluation loss over (rank, alpha), sweep "
                    f"{data.sweep.name}", fontsize=12)
    axes = figure.subplots(1, len(methods), squeeze=False)[0]
    grid = [r for r in data.results if r.method in ADAPTER_METHODS]
    ranks = sorted({r.rank for r in grid if r.rank is not None})
    alphas = sorted({r.alpha for r in grid if r.alpha is not None})
    cells: dict[Method, list[list[float]]] = {}
    counts: dict[Method, list[list[int]]] = {}
    for method in methods:
        cells[method], counts[method] = [], []
        for rank in ranks:
            row, n_row = [], []
            for alpha in alphas:
                values = [r.best_eval_loss for r in succeeded
                          if r.method is method and r.rank == rank and r.alpha == alpha
                          and r.best_eval_loss is not None]
                row.append(statistics.fmean(values) if values else math.nan)
                n_row.append(len(values))
            cells[method].append(row)
            counts[method].append(n_row)
    finite = [v for m in methods for row in cells[m] for v in row if not math.isnan(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    image = None
    for ax, method in zip(axes, methods, strict=True):
        ax.set_title(f"{method.value}", fontsize=11)
        if not ranks or not alphas:
            ax.text(0.5, 0.5, "no adapter trials", ha="center", va="center")
            ax.set_axis_off()
            continue
        image = ax.imshow(cells[method], cmap="viridis_r", vmin=low, vmax=high,
                          aspect="auto", origin="lower")
        ax.set_facecolor("#eeeeee")
        ax.set_xticks(range(len(alphas)), [str(a) for a in alphas])
        ax.set_yticks(range(len(ranks)), [str(r) for r in ranks])
        ax.set_xlabel("alpha")
        ax.set_ylabel("rank")
        best = None
        for i, row in enumerate(cells[method]):
            for j, value in enumerate(row):
                if math.isnan(value):
                    ax.text(j, i, "not run", ha="center", va="center", fontsize=7,
                            color="#777777")
                    continue
                if best is None or value < best[0]:
                    best = (value, i, j)
                dark = high == low or (value - low) / (high - low) > 0.5
                ax.text(j, i, f"{value:.4f}\nn={counts[method][i][j]}", ha="center",
                        va="center", fontsize=8, color="white" if dark else "black")
        if best is not None:
            ax.add_patch(_box(best[2], best[1]))
    if image is not None:
        figure.colorbar(image, ax=list(axes), label=f"mean best eval loss ({data.loss_shown})",
                        shrink=0.9)
    figure.text(0.5, -0.02, "Cell: mean over every model and seed that succeeded at that "
                "(rank, alpha); red box: the method's best cell.", ha="center", fontsize=8,
                color="#555555")
    return save_figure(figure, path)


def _box(x: int, y: int) -> Rectangle:
    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)


LEGEND_LANES = 10  # more lanes than this: colour by method, with the method's mean in bold


def loss_curves(data: SweepData, path: Path) -> Path:
    """Per-epoch eval (solid) and train (dashed) loss of every trial, one panel per model.

    Up to LEGEND_LANES lanes each get a colour and a legend entry; a larger grid is coloured
    by method, each trial a thin line and the method's mean eval loss per epoch in bold.
    """
    order = list(data.lane_info)

    def lane_order(name: str) -> int:
        return order.index(name) if name in order else len(order)

    with_epochs = sorted((r for r in data.results if r.epochs),
                         key=lambda r: (lane_order(r.lane), r.model_index))
    models = [m for m in data.models if any(r.model == m for r in with_epochs)] or ["(none)"]
    lanes = sorted({r.lane for r in with_epochs}, key=lane_order)
    by_lane = len(lanes) <= LEGEND_LANES
    figure = new_figure(4.2 * len(models) + (3.2 if by_lane else 1.6), 4.4)
    figure.suptitle(f"Per-epoch loss, sweep {data.sweep.name}: eval (solid), train (dashed); "
                    "epoch 0: the untuned baseline", fontsize=12)
    axes = figure.subplots(1, len(models), squeeze=False, sharey=True)[0]
    colors = _lane_colors(lanes)
    for ax, model in zip(axes, models, strict=True):
        ax.set_title(_short(model), fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        trials = [r for r in with_epochs if r.model == model]
        for r in trials:
            epochs = [e.epoch for e in r.epochs]
            suffix = "" if r.status is TrialState.SUCCEEDED else f" ({r.status.value})"
            color = colors[r.lane] if by_lane else METHOD_COLORS[r.method]
            width, alpha = (1.5, 1.0) if by_lane else (0.6, 0.35)
            ax.plot(epochs, [e.eval_loss for e in r.epochs], marker="o" if by_lane else None,
                    markersize=3, linewidth=width, alpha=alpha, color=color,
                    label=r.lane + suffix if by_lane else None)
            train = [math.nan if e.train_loss is None else e.train_loss for e in r.epochs]
            ax.plot(epochs, train, linestyle="--", linewidth=width,
                    alpha=0.6 * alpha, color=color)
        if not by_lane:
            for method in data.methods:
                per_epoch: dict[int, list[float]] = defaultdict(list)
                for r in trials:
                    if r.method is method:
                        for e in r.epochs:
                            per_epoch[e.epoch].append(e.eval_loss)
                if per_epoch:
                    xs = sorted(per_epoch)
                    ax.plot(xs, [_mean(per_epoch[x]) for x in xs], linewidth=2.5,
                            color=METHOD_COLORS[method], label=f"{method.value} (mean eval)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("loss")
    if with_epochs:
        handles = {}
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
        figure.legend(handles.values(), handles.keys(), loc="outside right center",
                      fontsize=7, title="lane" if by_lane else "method", title_fontsize=8)
    else:
        axes[0].text(0.5, 0.5, "no epochs recorded", ha="center", va="center",
                     transform=axes[0].transAxes)
    return save_figure(figure, path)


def _lane_colors(lanes: Sequence[str]) -> dict[str, tuple[float, ...]]:
    palette = colormaps["tab10"]
    return {lane: palette(i % palette.N) for i, lane in enumerate(lanes)}


# --- rendering ----------------------------------------------------------------------------


def sections(data: SweepData, top: int) -> list[Section]:
    memory_label, _ = memory_of(data.succeeded)
    out = [Section("Summary", summary_lines(data))]
    out.append(Section(
        f"Table 3: top {top} trials by evaluation loss",
        ["Best evaluation loss over the epochs of each succeeded trial (latest attempt). GPU "
         "memory is the peak per device summed over the trial's devices, as the paper "
         "reports it; '-' where the trial ran on CPU."],
        table=top_trials_table(data, top),
    ))
    if helped_rows(data):
        out.append(Section(
            "Did fine-tuning help?",
            ["Per model and method, the best tuned trial against its baseline: the same "
             "trial's untuned model, evaluated before training (epoch 0, training.baseline) "
             "on the same split and generation subset. A positive gain: fine-tuning lowered "
             "the evaluation loss."],
            table=helped_table(data),
        ))
    out.append(Section(
        f"Generated labels and throughput: top {top} trials", [GENERATION_NOTE],
        table=generation_table(data, top),
    ))
    if has_dss_ablation(data):
        out.append(Section(
            "Table 4: DSS (dssAlpha 0.5) against label-only training (dssAlpha 1.0)",
            ["Mean best evaluation loss over seeds (and over adapter pairs where several "
             "ran) per model x method; a positive difference means DSS is better."],
            table=dss_ablation_table(data),
        ))
    out.append(Section(
        "Figure 6: per model x method means", [f"Memory panel: {memory_label}."],
        image="figure6.png", image_alt="Figure 6: means per model and method",
    ))
    out.append(Section(
        "Figure 7: evaluation loss over (rank, alpha)",
        ["LoRA and QLoRA lanes; full fine-tuning has no (rank, alpha)."],
        image="figure7.png", image_alt="Figure 7: heatmaps over rank and alpha",
    ))
    out.append(Section("Lane ceilings", ["The largest model of each lane's ladder that "
                                          "fitted, and where the lane stopped."],
                       table=ceilings_table(data)))
    stopping = stopping_section(data)
    if stopping is not None:
        out.append(stopping)
    out.append(estimator_section(data))
    out.append(Section("Per-epoch loss", image="loss_curves.png",
                       image_alt="Per-epoch train and eval loss"))
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(title: str, generated: str, parts: Sequence[Section]) -> str:
    lines = [f"# {title}", "", f"_{generated}_", ""]
    for part in parts:
        lines += [f"## {part.title}", ""]
        for paragraph in part.text:
            lines += [paragraph, ""]
        if part.table is not None:
            if not part.table.rows:
                lines += ["(none)", ""]
            else:
                lines.append("| " + " | ".join(part.table.headers) + " |")
                lines.append("|" + "|".join(
                    "---:" if i in part.table.align_right else "---"
                    for i in range(len(part.table.headers))) + "|")
                for row in part.table.rows:
                    lines.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
                lines.append("")
        if part.image is not None:
            lines += [f"![{part.image_alt}]({part.image})", ""]
    return "\n".join(lines)


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; }
.meta { color: #666; font-style: italic; }
"""


def _inline_md(text: str) -> str:
    """The little Markdown the report's paragraphs use (**bold**, `code`), as HTML."""
    out, bold, code = [], False, False
    for piece in _split_marks(html.escape(text)):
        if piece == "**" and not code:
            out.append("</strong>" if bold else "<strong>")
            bold = not bold
        elif piece == "`":
            out.append("</code>" if code else "<code>")
            code = not code
        else:
            out.append(piece)
    return "".join(out)


def _split_marks(text: str) -> list[str]:
    pieces, current, i = [], "", 0
    while i < len(text):
        mark = "**" if text.startswith("**", i) else "`" if text[i] == "`" else ""
        if mark:
            pieces += [current, mark]
            current = ""
            i += len(mark)
        else:
            current += text[i]
            i += 1
    return [*pieces, current]


def to_html(title: str, generated: str, parts: Sequence[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", f'<p class="meta">{_inline_md(generated)}</p>']
    for part in parts:
        body.append(f"<h2>{html.escape(part.title)}</h2>")
        body += [f"<p>{_inline_md(p)}</p>" for p in part.text]
        if part.table is not None:
            if not part.table.rows:
                body.append("<p>(none)</p>")
            else:
                head = "".join(f"<th>{html.escape(h)}</th>" for h in part.table.headers)
                rows = []
                for row in part.table.rows:
                    cells = "".join(
                        f'<td class="num">{html.escape(c)}</td>' if i in part.table.align_right
                        else f"<td>{html.escape(c)}</td>" for i, c in enumerate(row))
                    rows.append(f"<tr>{cells}</tr>")
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>"
                            + "".join(rows) + "</tbody></table>")
        if part.image is not None:
            body.append(f'<p><img src="{html.escape(part.image)}" '
                        f'alt="{html.escape(part.image_alt)}"></p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def render(data: SweepData, out: Path, top: int = DEFAULT_TOP,
           generated_at: datetime | None = None) -> Report:
    """Write report.md, report.html and the PNG figures into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    images = (model_method_bars(data, out / "figure6.png"),
              rank_alpha_heatmaps(data, out / "figure7.png"),
              loss_curves(data, out / "loss_curves.png"))
    where = f"{data.sweep.namespace}/" if data.sweep.namespace else ""
    title = f"Ladder report: sweep {where}{data.sweep.name}"
    when = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    generated = f"Generated by `ladder report` from the store on {when}."
    parts = sections(data, top)
    markdown = out / "report.md"
    markdown.write_text(to_markdown(title, generated, parts), encoding="utf-8")
    page = out / "report.html"
    page.write_text(to_html(title, generated, parts), encoding="utf-8")
    return Report(markdown=markdown, html=page, images=images)


def write_report(sessions: sessionmaker[Session], out: Path, sweep: str | None = None,
                 namespace: str | None = None, top: int = DEFAULT_TOP) -> Report:
    """Read the sweep from the store and render its report into `out`."""
    return render(load(sessions, sweep, namespace), out, top)
