"""Prometheus metrics of sweeps, served by `ladder run --metrics-port` and `ladder controller`.

Two sources, one endpoint:
- `StoreCollector` reads the store at scrape time: trials by state, finished attempts by
  outcome, sweep progress, phase and last activity, every trial's figures (best eval loss,
  samples/s, GPU and host memory, wall time, exact match, JSON validity), lane ceilings,
  OOMs by kind, and the latest epoch of running trials. Workers write each
  epoch to the store as it ends, so live training figures reach Prometheus through the
  controller in both the local and the cluster setting, with no Pushgateway and no scrape
  target per Ray pod (see docs/observability.md). What Prometheus shows is what the store
  holds, by construction.
- Process metrics kept in memory: reconcile duration and trial launch latency histograms.

Label sets are bounded by the grid (sweep, namespace, trial, lane, model, method, rank,
alpha, dss_alpha, seed; per-trial result figures add the latest attempt's `state`): no
per-epoch labels and no free text (errors never become labels).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import store
from orchestrator.bookkeeping import sweep_status
from orchestrator.core.grid import expand
from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.core.plan import SweepPhase
from orchestrator.store.records import latest_rows, sweep_from_row

log = logging.getLogger(__name__)

SWEEP_LABELS = ("sweep", "namespace")
TRIAL_LABELS = (*SWEEP_LABELS, "trial", "lane", "model", "method", "rank", "alpha",
                "dss_alpha", "seed")
LANE_LABELS = (*SWEEP_LABELS, "lane", "method", "rank", "alpha", "dss_alpha", "seed")
# Labels whose values come from closed sets: a trial's or lane's state, an OOM's kind, a
# sweep's phase.
STATE_LABEL, KIND_LABEL, PHASE_LABEL = "state", "kind", "phase"
# Every label name a metric of this module carries (plus the histograms' `le`); the values
# are grid coordinates, ids and enum values, never free text such as an error message.
LABEL_NAMES = frozenset({*TRIAL_LABELS, *LANE_LABELS, STATE_LABEL, KIND_LABEL, PHASE_LABEL})

# (metric name, AttemptRow attribute, help) of per-trial result gauges.
TRIAL_FIGURES = (
    ("ladder_trial_best_eval_loss", "best_eval_loss",
     "Best evaluation loss over the epochs: the loss training.selectionLoss names (default "
     "label, the authors' metric)."),
    ("ladder_trial_best_eval_label_loss", "eval_label_loss",
     "Evaluation label loss at the best epoch."),
    ("ladder_trial_best_eval_rationale_loss", "eval_rationale_loss",
     "Evaluation rationale loss at the best epoch (absent when dssAlpha = 1)."),
    ("ladder_trial_samples_per_second", "samples_per_second",
     "Training-loop samples per second (evaluation, generation and saves excluded), summed "
     "over workers."),
    ("ladder_trial_peak_gpu_memory_bytes", "peak_gpu_memory_bytes",
     "Peak GPU memory of the busiest device (NVML)."),
    ("ladder_trial_summed_gpu_memory_bytes", "total_gpu_memory_bytes",
     "Peak GPU memory summed over the trial's devices, as the paper reports it."),
    ("ladder_trial_peak_host_memory_bytes", "peak_host_memory_bytes",
     "Peak resident memory of a worker process."),
    ("ladder_trial_wall_seconds", "wall_seconds", "Wall time of the trial attempt."),
    ("ladder_trial_exact_match_ratio", "exact_match",
     "Fraction of generated DSL equal to the label (as parsed JSON)."),
    ("ladder_trial_json_valid_ratio", "json_valid_rate",
     "Fraction of generations that parse as JSON."),
    ("ladder_trial_baseline_eval_loss", "baseline_eval_loss",
     "Evaluation loss of the untuned model (epoch 0, training.baseline), the same loss as "
     "ladder_trial_best_eval_loss: their difference is what fine-tuning gained."),
    ("ladder_trial_baseline_exact_match_ratio", "baseline_exact_match",
     "Exact match of the untuned model's generations (epoch 0, training.baseline)."),
    ("ladder_trial_bleu", "bleu", "Corpus BLEU of the generated labels (sacrebleu, 0-100)."),
    ("ladder_trial_chrf", "chrf", "Corpus chrF of the generated labels (sacrebleu, 0-100)."),
    ("ladder_trial_ter", "ter",
     "Corpus TER of the generated labels (sacrebleu, 0-100 and up; lower is better)."),
    ("ladder_trial_dsl_similarity_ratio", "dsl_similarity",
     "Mean structural similarity of generated and reference Query DSL: JSON leaves (path, "
     "value) in common over the leaves of either."),
    ("ladder_trial_end_to_end_samples_per_second", "end_to_end_samples_per_second",
     "Trained samples per second over the whole epoch loop (training, evaluation, "
     "generation, saves), summed over workers."),
)
# (metric name, EpochRow attribute, help) of the latest epoch of a running trial.
LIVE_FIGURES = (
    ("ladder_trial_epoch", "epoch", "Last finished epoch of a running trial."),
    ("ladder_trial_train_loss", "train_loss", "DSS training loss of the last epoch."),
    ("ladder_trial_eval_loss", "eval_loss",
     "Evaluation loss of the last epoch (the loss training.selectionLoss names)."),
    ("ladder_trial_learning_rate", "learning_rate", "Learning rate in the last epoch."),
    ("ladder_trial_epoch_samples_per_second", "samples_per_second",
     "Training samples per second in the last epoch."),
    ("ladder_trial_epoch_gpu_memory_bytes", "peak_gpu_memory_bytes",
     "Peak GPU memory in the last epoch (busiest device)."),
    ("ladder_trial_epoch_host_memory_bytes", "peak_host_memory_bytes",
     "Peak resident memory of a worker process in the last epoch."),
)


def _trial_labels(row: store.AttemptRow, sweep: store.SweepRow) -> list[str]:
    return [
        sweep.name, sweep.namespace, row.trial_id, row.lane, row.model, str(row.method),
        "" if row.rank is None else str(row.rank), "" if row.alpha is None else str(row.alpha),
        f"{row.dss_alpha:g}", str(row.seed),
    ]


class _Families:
    """The metric families of one scrape, filled sweep by sweep."""

    def __init__(self) -> None:
        self.trials = GaugeMetricFamily(
            "ladder_trials", "Trials by the state of their latest attempt.",
            labels=[*SWEEP_LABELS, STATE_LABEL],
        )
        self.finished = CounterMetricFamily(
            "ladder_trial_attempts_finished",
            "Trial attempts that ended, by outcome (retried attempts included).",
            labels=[*SWEEP_LABELS, STATE_LABEL],
        )
        self.ooms = GaugeMetricFamily(
            "ladder_trial_ooms", "Trials whose latest attempt ran out of memory, by kind.",
            labels=[*SWEEP_LABELS, KIND_LABEL],
        )
        self.potential = GaugeMetricFamily(
            "ladder_sweep_trials_potential",
            "Trials of the grid (lanes x ladder): an upper bound, lanes stop at an OOM.",
            labels=list(SWEEP_LABELS),
        )
        self.done = GaugeMetricFamily(
            "ladder_sweep_trials_done",
            "Trials with a final outcome (lanes that stopped count their skipped models).",
            labels=list(SWEEP_LABELS),
        )
        self.phase = GaugeMetricFamily(
            "ladder_sweep_phase", "1 for the sweep's current phase, 0 for the others.",
            labels=[*SWEEP_LABELS, PHASE_LABEL],
        )
        self.activity = GaugeMetricFamily(
            "ladder_sweep_last_activity_timestamp_seconds",
            "When a trial attempt of the sweep last changed (state, live epoch or result).",
            labels=list(SWEEP_LABELS),
        )
        self.ceilings = GaugeMetricFamily(
            "ladder_lane_ceiling_model_index",
            "Ladder index of the largest model that fitted in the lane (-1: none yet).",
            labels=[*LANE_LABELS, "model", STATE_LABEL],
        )
        # `state` (of the latest attempt) lets paper forms keep to succeeded trials, while
        # an OOM's peak memory or a failure's wall time stays visible.
        self.figures = {name: GaugeMetricFamily(name, doc, labels=[*TRIAL_LABELS, STATE_LABEL])
                        for name, _, doc in TRIAL_FIGURES}
        self.live = {name: GaugeMetricFamily(name, doc, labels=list(TRIAL_LABELS))
                     for name, _, doc in LIVE_FIGURES}

    def all(self) -> Iterator[Metric]:
        yield from (self.trials, self.finished, self.ooms, self.potential, self.done,
                    self.phase, self.activity, self.ceilings)
        yield from self.figures.values()
        yield from self.live.values()


class StoreCollector(Collector):
    """Yields every sweep metric from the store, at scrape time."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        try:
            with self.sessions() as session:
                for sweep_row in store.list_sweeps(session):
                    rows = store.attempts(session, sweep_row.namespace, sweep_row.name,
                                          with_epochs=True)
                    _sweep(sweep_row, rows, families)
        except Exception:
            log.exception("metrics: reading the store failed")
        yield from families.all()


def _sweep(sweep_row: store.SweepRow, rows: list[store.AttemptRow], out: _Families) -> None:
    ids = [sweep_row.name, sweep_row.namespace]
    latest = latest_rows(rows)
    states = Counter(TrialState(r.status) for r in latest)
    finished = Counter(TrialState(r.status) for r in rows if r.is_terminal)
    for state in TrialState:
        out.trials.add_metric([*ids, state.value], states.get(state, 0))
        if state.is_terminal:
            out.finished.add_metric([*ids, state.value], finished.get(state, 0))
    kinds = Counter(OOMKind(r.oom_kind) for r in latest if r.oom_kind)
    for kind in OOMKind:
        out.ooms.add_metric([*ids, kind.value], kinds.get(kind, 0))
    if rows:
        out.activity.add_metric(ids, max(r.updated_at for r in rows).timestamp())
    for row in latest:
        labels = _trial_labels(row, sweep_row)
        for name, attribute, _ in TRIAL_FIGURES:
            value = getattr(row, attribute)
            if value is not None:
                out.figures[name].add_metric([*labels, TrialState(row.status).value],
                                             float(value))
        if TrialState(row.status) is TrialState.RUNNING and row.epochs:
            for name, attribute, _ in LIVE_FIGURES:
                # The latest epoch that measured it: the baseline (epoch 0) has no training
                # figures, so while epoch 1 runs they stay absent rather than blank.
                measured = [(e.epoch, value) for e in row.epochs
                            if (value := getattr(e, attribute)) is not None]
                if measured:
                    out.live[name].add_metric(labels, float(max(measured)[1]))
    if not sweep_row.spec:
        return
    sweep = sweep_from_row(sweep_row)
    status = sweep_status(sweep, rows)
    out.potential.add_metric(ids, status.trials_total)
    out.done.add_metric(ids, status.trials_done)
    for phase in SweepPhase:
        out.phase.add_metric([*ids, phase.value], float(phase is status.phase))
    models = sweep.spec.ladder
    lanes = {lane.name: lane for lane in expand(sweep).lanes}
    for lane_status in status.lanes:
        lane = lanes[lane_status.name]
        index = models.index(lane_status.ceiling_model) if lane_status.ceiling_model else -1
        out.ceilings.add_metric(
            [*ids, lane.name, lane.method.value,
             "" if lane.rank is None else str(lane.rank),
             "" if lane.alpha is None else str(lane.alpha), f"{lane.dss_alpha:g}",
             str(lane.seed), lane_status.ceiling_model or "", lane_status.state.value],
            index,
        )


@dataclass
class LadderMetrics:
    """The metrics endpoint of one process, with its in-memory histograms."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.reconcile_seconds = Histogram(
            "ladder_reconcile_duration_seconds", "Duration of one observe-plan-act pass.",
            ["sweep", "namespace"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.launch_latency_seconds = Histogram(
            "ladder_trial_launch_latency_seconds",
            "From the moment a trial became launchable to its launch request.",
            ["sweep", "namespace"], registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
        )

    def watch_store(self, sessions: sessionmaker[Session]) -> None:
        self.registry.register(StoreCollector(sessions))

    def serve(self, port: int, address: str = "127.0.0.1") -> WSGIServer:
        """Serve /metrics from a daemon thread; `shutdown()` the returned server to stop."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return server
