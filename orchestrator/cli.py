"""`ladder`: validate, plan, run and inspect sweeps; write the built-in dataset.

Cluster commands (`submit`, `controller`) and `report` live in their own modules and are
registered here, so `ladder --help` lists everything a user can do.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from orchestrator.core.grid import expand
from orchestrator.core.lifecycle import LaneState, TrialState
from orchestrator.core.names import (
    ALLOW_PRIVILEGED_TRIALS_ENV,
    ALLOW_TRIAL_NETWORK_VOLUMES_ENV,
    ALLOW_TRIAL_PROJECTED_TOKENS_ENV,
    ALLOW_TRIAL_SERVICE_ACCOUNT_ENV,
    ALLOWED_TRIAL_SECRETS_ENV,
    DEBUG_ENV,
    DEFAULT_EXECUTION_ENV,
    METRICS_PORT_ENV,
)
from orchestrator.core.plan import SweepPhase, SweepStatus
from orchestrator.core.spec import (
    MAX_BUILTIN_EXAMPLES,
    Resources,
    SpecError,
    Sweep,
    SweepSpec,
    workers_sharing_gpus,
)
from orchestrator.files import load_sweep

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from orchestrator.backends.runner import RunnerEvent
    from orchestrator.store import SweepRow

app = typer.Typer(
    name="ladder",
    help="Fine-tuning sweeps that climb each lane's model ladder until it runs out of memory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dataset_app = typer.Typer(help="Write Ladder's built-in datasets; inspect any dataset.",
                          no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
# Text is text: model ids, names, paths, dataset sources and error messages come from users,
# so neither console reads markup (`[/x]`, `[link=...]`) or emoji codes (`:smile:`) in what it
# prints. Styles are attached to spans with `say` (rich Text), never written into strings.
console = Console(markup=False, emoji=False)
errors = Console(stderr=True, markup=False, emoji=False, soft_wrap=True)  # one line each

DB_HELP = "SQLAlchemy URL of the store (env LADDER_DB_URL; default sqlite:///ladder.db)."

STATE_STYLES = {
    TrialState.SUCCEEDED: "green", TrialState.OOM: "magenta", TrialState.FAILED: "red",
    TrialState.RUNNING: "cyan", TrialState.PENDING: "white", TrialState.SKIPPED: "dim",
    TrialState.CANCELLED: "yellow",
}
LANE_STYLES = {
    LaneState.COMPLETED: "green", LaneState.CAPPED: "magenta", LaneState.FAILED: "red",
    LaneState.RUNNING: "cyan", LaneState.PENDING: "white", LaneState.CANCELLED: "yellow",
}


def say(*parts: str | tuple[str, str]) -> Text:
    """One line of output: plain strings, or (text, style) pairs; nothing in it is markup."""
    return Text.assemble(*parts)


def fail(message: str) -> NoReturn:
    """The one-line error of a command: `✗ message` on stderr, exit 1, no traceback; any
    password in it is redacted (`store.redact_secrets`, the one redaction path)."""
    errors.print(say(("✗ " + _redacted(message), "red")))
    raise typer.Exit(1)


def _redacted(text: str) -> str:
    from orchestrator.store import redact_secrets

    return redact_secrets(text)


def _logging(level: int, **options: Any) -> None:
    """Log at `level`, every record redacted (a DEBUG line may quote a store URL)."""
    from orchestrator.store import install_log_redaction

    install_log_redaction()
    logging.basicConfig(level=level, **options)


def db_url(option: str | None) -> str:
    """The store URL: the option, LADDER_DB_URL, or the default, with SQLite paths absolute.

    Trials run in other processes (Ray jobs) with other working directories, so a relative
    SQLite path must be made absolute before it is handed to them.
    """
    from orchestrator.store.engine import resolve_db_url

    return resolve_db_url(option)


def _spec_error(error: SpecError, what: str = "invalid Sweep") -> NoReturn:
    """Print every problem of a SpecError, each with its field path, and exit 1."""
    # A message may quote what the user wrote (a model id that is a URL with a password).
    errors.print(say((f"✗ {_redacted(error.source)}: {what}", "red")))
    for path, message in error.problems:
        errors.print(say("  ", (path, "bold"), f": {_redacted(message)}"))
    raise typer.Exit(1) from None


def _load(file: Path) -> Sweep:
    """The Sweep in FILE, checked as the controller checks it (`spec.execution` included)."""
    from orchestrator.operator.manifests import checked_execution_config

    try:
        sweep = load_sweep(file)
        checked_execution_config(sweep)
    except SpecError as error:
        _spec_error(error if error.source == str(file) else SpecError(str(file), error.problems))
    return sweep


def _open_store(url: str):
    from orchestrator import store

    try:
        return store.open_store(url)
    except Exception as error:
        # The driver's message may quote the URL it was given, password included.
        fail(f"cannot open the store {store.redact_url(url)}: {store.error_text(error)}")


@app.command()
def validate(file: Annotated[Path, typer.Argument(help="Sweep YAML (manifest or bare spec).")]):
    """Check a Sweep; exits 1 with one line per invalid field."""
    sweep = _load(file)
    spec = sweep.spec
    console.print(say(
        ("✓", "green"), f" {file}: Sweep ", (sweep.name, "bold"), " is valid: "
        f"{spec.lane_count} lanes x {len(spec.ladder)} models = "
        f"{spec.potential_trials} potential trials"
    ))


@app.command("plan")
def plan_command(
    file: Annotated[Path, typer.Argument(help="Sweep YAML.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    trials: Annotated[bool, typer.Option("--trials", help="List every trial and its id.")]
    = False,
):
    """Print the lanes and trials a sweep would run, without running anything."""
    sweep = _load(file)
    grid = expand(sweep)
    if as_json:
        lanes = []
        for lane in grid.lanes:
            lanes.append({
                "index": lane.index, "name": lane.name, "method": lane.method.value,
                "rank": lane.rank, "alpha": lane.alpha, "dssAlpha": lane.dss_alpha,
                "seed": lane.seed,
                "trials": [
                    {"trialId": t.trial_id, "model": t.model, "workers": t.resources.workers,
                     "gpus": t.resources.gpus, "cpus": t.resources.cpus}
                    for t in grid.trials[lane.name]
                ],
            })
        typer.echo(json.dumps({"sweep": sweep.name, "lanes": lanes}, indent=2))
        return
    spec = sweep.spec
    console.print(say("Sweep ", (sweep.name, "bold"), f": {len(grid.lanes)} lanes x "
                      f"{len(spec.ladder)} models = {len(grid.all_trials())} potential trials"))
    console.print("Ladder: " + " → ".join(spec.ladder))
    if trials:
        table = Table(show_edge=False)
        for column in ("trial id", "lane", "model", "workers", "GPUs", "CPUs"):
            table.add_column(column)
        every = grid.all_trials()
        for trial in every[:PLAN_TABLE_ROWS]:
            shape = trial.resources
            table.add_row(trial.trial_id, trial.lane.name, trial.model, str(shape.workers),
                          str(shape.gpus), str(shape.cpus))
        console.print(table)
        _more(len(every), "trials")
        return
    table = Table(show_edge=False)
    for column in ("#", "lane", "method", "rank", "alpha", "dss a", "seed"):
        table.add_column(column)
    for lane in grid.lanes[:PLAN_TABLE_ROWS]:
        table.add_row(str(lane.index), lane.name, lane.method.value, str(lane.rank or "-"),
                      str(lane.alpha or "-"), f"{lane.dss_alpha:g}", str(lane.seed))
    console.print(table)
    _more(len(grid.lanes), "lanes")
    from orchestrator.model_tables import fit_rich_table, wide

    fits = fit_rich_table(spec, grid)
    if fits is not None:
        wide(console).print(fits)


# A terminal table of a grid at the maxTrials ceiling (25,000 lanes, 100,000 trials) takes
# rich minutes to lay out; past this many rows `plan` says how many more there are.
PLAN_TABLE_ROWS = 500


def _more(total: int, what: str) -> None:
    if total > PLAN_TABLE_ROWS:
        console.print(f"… and {total - PLAN_TABLE_ROWS} more {what} "
                      "(`ladder plan --json` lists every lane and trial)")


@contextmanager
def _line_after(target: Console) -> Iterator[None]:
    """End the line a Live display leaves open when it is not on a terminal (a pipe, a log),
    so what follows it, a summary or an error, starts on a line of its own."""
    try:
        yield
    finally:
        if not target.is_terminal:
            target.line()


def _event_line(event: RunnerEvent) -> Text | None:
    """A runner event as a line of `ladder run`'s live view (None: nothing to show)."""
    from orchestrator.backends.runner import RunnerEventKind

    trial = event.trial
    if event.kind is RunnerEventKind.LAUNCHED:
        return say(f"→ {trial.trial_id} {trial.lane.name} {trial.model} attempt {event.attempt}")
    if event.state is None:
        return None
    kind = f"/{event.oom_kind.value}" if event.oom_kind else ""
    return say((f"■ {trial.trial_id} {trial.lane.name} {trial.model}: {event.state.value}{kind}",
                STATE_STYLES.get(event.state, "white")))


def _status_view(sweep: Sweep, status: SweepStatus, progress: Progress, task: TaskID) -> Group:
    progress.update(task, completed=status.trials_done, total=status.trials_total)
    table = Table(expand=False, show_edge=False, pad_edge=False)
    for column in ("lane", "state", "ceiling", "stopped at"):
        table.add_column(column)
    for lane in status.lanes:
        style = LANE_STYLES.get(lane.state, "white")
        stopped = lane.stopped_at_model or ""
        if lane.oom_kind is not None:
            stopped += f" (oom/{lane.oom_kind.value})"
        table.add_row(lane.name, Text(lane.state.value, style=style),
                      lane.ceiling_model or "-", stopped)
    counts = Text("  ").join(
        Text(f"{state.value} {n}", style=STATE_STYLES[state])
        for state, n in status.counts.items() if n
    )
    return Group(progress, table, counts)


def _summary(sweep: Sweep, status: SweepStatus, elapsed: float) -> None:
    """A sweep's outcome: best trial, lane ceilings, counts and its wall time."""
    console.rule(f"Sweep {sweep.name}: {status.phase.value}")
    if status.best is not None:
        best, loss = status.best, sweep.spec.training.selection_loss.value
        console.print(say("Best trial: ", (best.trial_id, "bold"), f" {best.model} {best.lane} "
                          f"eval loss ({loss}) ", (f"{best.eval_loss:.5f}", "bold")))
    else:
        console.print("Best trial: none succeeded")
    ceilings = Table(title="Lane ceilings (largest model that fitted)", show_edge=False)
    for column in ("lane", "state", "ceiling", "stopped at"):
        ceilings.add_column(column)
    for lane in status.lanes:
        stop = lane.stopped_at_model or "-"
        if lane.oom_kind is not None:
            stop += f" (oom/{lane.oom_kind.value})"
        ceilings.add_row(lane.name, lane.state.value, lane.ceiling_model or "-", stop)
    console.print(ceilings)
    counts = ", ".join(f"{state.value} {n}" for state, n in status.counts.items() if n)
    console.print(f"Trials: {counts}. OOMs: {status.oom_count}. Total time: {elapsed:.1f} s")


def _usable_directory(option: str, path: Path) -> None:
    """A directory the command will write into: made if missing, else refused in one line
    naming the option before anything starts (a file in the way, no permission)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        fail(f"{option} {path}: a file is in the way (it must be a directory)")
    except OSError as error:
        fail(f"{option} {path}: cannot create it ({error.strerror or error})")
    if not os.access(path, os.W_OK | os.X_OK):
        fail(f"{option} {path}: not writable")


def _cpu_only(spec: SweepSpec) -> SweepSpec:
    overrides = {m: o.model_copy(update={"gpus_per_worker": 0})
                 for m, o in spec.resources.overrides.items()}
    resources: Resources = spec.resources.model_copy(
        update={"gpus_per_worker": 0, "overrides": overrides}
    )
    return spec.model_copy(update={"resources": resources})


def _local_dataset(spec: SweepSpec) -> SweepSpec:
    """A dataset file (a distilled one, say) named relative to here, made absolute: trials run
    in Ray jobs with other working directories (the store's SQLite path likewise)."""
    from worker.data.dss import BUILTIN_PREFIX

    source = spec.dataset.source
    if source.startswith(BUILTIN_PREFIX):
        return spec
    dataset = spec.dataset.model_copy(
        update={"source": str(Path(source).expanduser().absolute())})
    return spec.model_copy(update={"dataset": dataset})


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="Sweep YAML.")],
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    parallelism: Annotated[int | None, typer.Option(min=1, help="Trials at once.")] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Ignore GPUs: run every trial on CPU.")]
    = False,
    runs_dir: Annotated[Path, typer.Option(help="Trial files, logs and Ray storage.")]
    = Path("runs"),
    ray_address: Annotated[str | None, typer.Option(help="Existing Ray runtime (RAY_ADDRESS).")]
    = None,
    cpus: Annotated[int | None, typer.Option(help="Logical CPUs of a Ray runtime we start.")]
    = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics here.")]
    = None,
):
    """Run a sweep on this machine (local Ray runtime, SQLite by default), resuming if needed."""
    from orchestrator.backends.local import LocalRayBackend, ray_address_problem
    from orchestrator.backends.runner import LocalSweepRunner
    from orchestrator.core.estimate import predicted_oom_fn

    sweep = _load(file)
    spec = sweep.spec
    shared = workers_sharing_gpus(spec.resources)  # one local Ray node holds every worker
    if shared:
        _spec_error(SpecError(str(file), shared))
    if parallelism is not None:
        spec = spec.model_copy(update={"parallelism": parallelism})
    if cpu:
        spec = _cpu_only(spec)
    spec = _local_dataset(spec)
    sweep = sweep.model_copy(update={"spec": spec})
    _usable_directory("--runs-dir", runs_dir)
    url = db_url(db)
    sessions = _open_store(url)
    _logging(logging.WARNING)
    metrics = None
    if metrics_port is not None:
        from orchestrator.metrics import LadderMetrics

        metrics = LadderMetrics()
        metrics.watch_store(sessions)
        metrics.serve(metrics_port)
        console.print(f"Metrics on http://127.0.0.1:{metrics_port}/metrics")
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if address and (problem := ray_address_problem(address)):
        option = "--ray-address" if ray_address else "RAY_ADDRESS"
        fail(f"{option} {address}: {problem}")
    backend = LocalRayBackend(runs_dir=runs_dir, db_url=url, address=ray_address, num_cpus=cpus)
    runner = LocalSweepRunner(sweep, backend, sessions, runs_dir,
                              predicted_oom=predicted_oom_fn(sweep.spec), metrics=metrics)
    if not backend.head_left_running() and (over := runner.finished_before()) is not None:
        console.print(say("Sweep ", (sweep.name, "bold"), " has finished in store "
                          f"{_redact(url)}: nothing to run (Ray not started)."))
        _summary(sweep, over, _elapsed(sessions, sweep.namespace, sweep.name))
        if over.phase is SweepPhase.FAILED:
            raise typer.Exit(1)
        return
    console.print(say("Sweep ", (sweep.name, "bold"), f": {spec.lane_count} lanes, "
                      f"{spec.potential_trials} potential trials; store "
                      f"{_redact(url)}; starting Ray…"))
    started = time.monotonic()
    backend.start()
    if backend.reused_runtime:
        console.print("Reusing the Ray runtime of this runs directory, which an earlier "
                      "or a concurrent `ladder run` started (this sweep's running trials are "
                      "adopted, not run again).")
    progress = Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    task = progress.add_task("trials", total=spec.potential_trials)
    try:
        # Transient: the live view gives way to the summary, which shows its lane table and
        # counts once, final (on a pipe or in a log nothing of it is printed but the events).
        with _line_after(console), Live(console=console, refresh_per_second=4,
                                        transient=True) as live:
            def update(status: SweepStatus, events: Sequence[RunnerEvent]) -> None:
                for event in events:
                    line = _event_line(event)
                    if line is not None:
                        live.console.print(line)
                live.update(_status_view(sweep, status, progress, task))

            runner.on_update = update
            status = runner.run()
    except Exception as error:  # KeyboardInterrupt is the runner's; this is anything else
        fail(f"the sweep stopped: {_reason(error)}; its running trials were recorded as "
             "cancelled: run the same command again to resume")
    finally:
        backend.stop()
    _summary(sweep, status, time.monotonic() - started)
    if runner.interrupted:
        errors.print(say(("Interrupted: the running trials were stopped and recorded as "
                          "cancelled. Run the same command again to resume.", "yellow")))
        raise typer.Exit(130)
    if status.phase is SweepPhase.FAILED:
        raise typer.Exit(1)


def _reason(error: BaseException) -> str:
    """An exception as one line a user may see: its type and message, passwords redacted."""
    message = " ".join(str(error).split())
    return _redacted(f"{type(error).__name__}: {message}" if message else type(error).__name__)


def _redact(url: str) -> str:
    from orchestrator.store import redact_url

    return redact_url(url)


def _sweep_rows(sessions: sessionmaker[Session], name: str | None) -> list[SweepRow]:
    from orchestrator import store

    with sessions() as session:
        rows = store.list_sweeps(session)
        if name is not None:
            rows = [r for r in rows if r.name == name]
        return rows


@app.command()
def status(
    sweep: Annotated[str | None, typer.Argument(help="Sweep name (default: all).")] = None,
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
):
    """Progress of sweeps in the store: trials by state, lanes and their ceilings."""
    from orchestrator import store
    from orchestrator.bookkeeping import sweep_status
    from orchestrator.store.records import sweep_from_row

    sessions = _open_store(db_url(db))
    rows = _sweep_rows(sessions, sweep)
    if not rows:
        errors.print(say((f"no sweep {sweep!r} in the store" if sweep
                          else "the store holds no sweep yet", "yellow")))
        raise typer.Exit(1)
    for row in rows:
        recorded = sweep_from_row(row)
        with sessions() as session:
            current = sweep_status(recorded, store.attempts(session, row.namespace, row.name))
        _summary(recorded, current, elapsed=_elapsed(sessions, row.namespace, row.name))


def _elapsed(sessions: sessionmaker[Session], namespace: str, name: str) -> float:
    """A sweep's recorded wall time: its first attempt's start to its last one's end."""
    from orchestrator import store

    with sessions() as session:
        attempts = store.attempts(session, namespace, name)
    starts = [a.started_at for a in attempts if a.started_at]
    ends = [a.finished_at for a in attempts if a.finished_at]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0


@app.command()
def results(
    sweep: Annotated[str | None, typer.Argument(help="Sweep name (default: all).")] = None,
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV with a header.")] = False,
    all_attempts: Annotated[bool, typer.Option(help="Every attempt, not just the latest.")]
    = False,
):
    """One record per trial (its latest attempt), as a table, JSON lines or CSV."""
    from orchestrator import store
    from orchestrator.store.records import RESULT_COLUMNS, latest_attempts, result_record

    sessions = _open_store(db_url(db))
    with sessions() as session:
        records = [result_record(r) for r in store.all_attempts(session, sweep=sweep)]
    if not all_attempts:
        records = latest_attempts(records)
    if as_json:
        for record in records:
            typer.echo(json.dumps(record))
        return
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(records)
        return
    console.print(results_table(records, console.width))


def loss_shown(records: Sequence[dict[str, Any]]) -> str | None:
    """Which loss every record's best_eval_loss is (training.selectionLoss); None when they
    differ (each cell then names its own). A result stored before the selection was recorded
    held the DSS-weighted loss."""
    selections = {loss_selection(r) for r in records if r["best_eval_loss"] is not None}
    return selections.pop() if len(selections) == 1 else None


def loss_selection(record: dict[str, Any]) -> str:
    return record.get("selection_loss") or "dss"


def results_table(records: Sequence[dict[str, Any]], width: int) -> Table:
    """The results as people read them, in `width` columns: short model names, the OOM kind
    with the status, memory in GiB, seconds. Every column but the lane keeps its width (the
    lane is cut with an ellipsis); too narrow for that, the gain over the baseline and the
    generation metrics, then the wall time, then the trial id are left out. `gain`: the
    baseline's eval loss (the untuned model, epoch 0) minus the best epoch's.
    Every field, unformatted, is in --json and --csv."""
    from orchestrator.core.formatting import (
        fmt_bytes,
        fmt_float,
        fmt_ratio,
        fmt_seconds,
        fmt_signed,
    )

    on_gpu = any(r["peak_gpu_memory_bytes"] is not None for r in records)
    shown = loss_shown(records)
    mixed = shown is None and any(r["best_eval_loss"] is not None for r in records)
    columns: dict[str, list[str]] = {
        "trial": [r["trial_id"] for r in records],
        "lane": [r["lane"] for r in records],
        "model": [r["model"].rsplit("/", 1)[-1] for r in records],
        "status": [r["status"] + (f"/{r['oom_kind']}" if r["oom_kind"] else "")
                   + (f" #{r['attempt']}" if r["attempt"] > 1 else "") for r in records],
        "eval loss": [
            fmt_float(r["best_eval_loss"], 4)
            + (f" {loss_selection(r)}" if mixed and r["best_eval_loss"] is not None else "")
            for r in records],
        "gain": [fmt_signed(r.get("eval_loss_gain")) for r in records],
        "exact": [fmt_ratio(r["exact_match"]) for r in records],
        "JSON ok": [fmt_ratio(r["json_valid_rate"]) for r in records],
        "BLEU": [fmt_float(r.get("bleu"), 1) for r in records],
        "DSL sim": [fmt_ratio(r.get("dsl_similarity")) for r in records],
        "samples/s": [fmt_float(r["samples_per_second"], 2) for r in records],
        "peak GPU" if on_gpu else "peak host": [
            fmt_bytes(r["peak_gpu_memory_bytes"] if on_gpu else r["peak_host_memory_bytes"])
            for r in records],
        "wall": [fmt_seconds(r["wall_seconds"]) for r in records],
    }
    widths = {h: max([len(h), *map(len, cells)]) for h, cells in columns.items()}

    def room_for_lane() -> int:  # columns are two characters apart, none at the edges
        others = [w for h, w in widths.items() if h in columns and h != "lane"]
        return width - sum(others) - 2 * len(others) - 1

    lane_min = 12
    for optional in (("gain", "exact", "JSON ok"), ("BLEU", "DSL sim"), ("wall",), ("trial",)):
        if room_for_lane() >= lane_min:
            break
        for header in optional:
            del columns[header]
    which = f"{shown} loss" if shown else "per row"
    title = (f"{len(records)} trials; eval loss: {which} (training.selectionLoss); "
             "samples/s: training loop (end to end in --json)")
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for header in columns:
        if header == "lane":
            lane = max(lane_min, min(widths["lane"], room_for_lane()))
            table.add_column(header, no_wrap=True, overflow="ellipsis", width=lane)
        else:
            left = header in ("trial", "model", "status")
            table.add_column(header, no_wrap=True, min_width=widths[header],
                             justify="left" if left else "right")
    for row in zip(*columns.values(), strict=True):
        table.add_row(*row)
    return table


@dataset_app.command("querydsl")
def dataset_querydsl(
    n: Annotated[int, typer.Option("-n", min=1, max=MAX_BUILTIN_EXAMPLES,
                                   help="Number of examples.")] = 1000,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output .jsonl or .csv.")]
    = Path("querydsl.jsonl"),
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    preamble: Annotated[str, typer.Option(help="full or short instruction preamble.")] = "full",
):
    """Write the built-in synthetic NL -> OpenSearch Query DSL dataset (with rationales)."""
    from worker.data.querydsl import generate_querydsl, write_dataset

    try:
        count = write_dataset(out, generate_querydsl(n=n, seed=seed, preamble=preamble))
    except (ValueError, OSError) as error:
        fail(f"{out}: {_reason(error)}" if isinstance(error, OSError) else str(error))
    console.print(say(("✓", "green"), f" wrote {count} examples to {out}"))


@dataset_app.command("stats")
def dataset_stats_command(
    file: Annotated[str | None, typer.Argument(help="Dataset (.jsonl or .csv, or builtin:NAME);"
                                                    " default: the --spec's dataset.source.")]
    = None,
    spec: Annotated[Path | None, typer.Option(help="Sweep YAML: its token limits, tokenizer "
                                                   "and dataset.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="byte, or a tokenizer.json (or a "
                                                       "directory holding one) to count "
                                                       "tokens with; default: the spec's "
                                                       "training.tokenizer, else byte.")]
    = None,
    max_input_tokens: Annotated[int | None, typer.Option(min=1, help="Default: the spec's "
                                                                     "(1400).")] = None,
    max_output_tokens: Annotated[int | None, typer.Option(min=1, help="Default: the spec's "
                                                                      "(1024).")] = None,
    task: Annotated[str, typer.Option(help="querydsl (labels checked as Query DSL) or json.")]
    = "querydsl",
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")]
    = False,
) -> None:
    """Counts, token lengths against the spec's limits, duplicates and label validity."""
    from orchestrator.core.spec import Dataset, Training
    from worker.data.dss import DatasetError, load_dss
    from worker.data.stats import dataset_stats, token_counter

    training, dataset = Training(), Dataset()
    if spec is not None:
        loaded = _load(spec).spec
        training, dataset = loaded.training, loaded.dataset
    source = file or (dataset.source if spec is not None else None)
    if source is None:
        fail("give a dataset FILE or --spec SWEEP.yaml")
    if task not in ("querydsl", "json"):
        fail(f"--task {task!r}: expected querydsl or json")
    tokenizer = tokenizer or training.tokenizer or "byte"
    try:
        count = token_counter(tokenizer)
        examples = load_dss(source, labels_must_be_json=False, size=dataset.size,
                            preamble=dataset.preamble, seed=dataset.split_seed)
        stats = dataset_stats(
            examples, count, max_input_tokens=max_input_tokens or training.max_input_tokens,
            max_output_tokens=max_output_tokens or training.max_output_tokens,
            querydsl=task == "querydsl")
    except (DatasetError, ValueError) as error:
        fail(str(error))
    if as_json:
        typer.echo(json.dumps({"source": source, "tokenizer": tokenizer, **stats.as_dict()},
                              indent=2))
        return
    console.print(say((source, "bold"), f": {stats.examples} examples, "
                      f"{stats.distinct_inputs} distinct inputs (tokenizer: {tokenizer})"))
    table = Table(box=box.SIMPLE, show_edge=False)
    for column in ("tokens", "min", "p50", "p90", "p99", "max", "mean", "limit", "over"):
        table.add_column(column, justify="left" if column == "tokens" else "right")
    for name, lengths in stats.lengths.items():
        table.add_row(name, *(str(v) for v in (lengths.min, lengths.p50, lengths.p90,
                                               lengths.p99, lengths.max, lengths.mean,
                                               lengths.limit)),
                      Text(str(lengths.over), style="yellow" if lengths.over else ""))
    console.print(table)

    def line(ok: bool, text: str) -> None:
        console.print(say(("✓" if ok else "!", "green" if ok else "yellow"), f" {text}"))

    def numbers(records: list[int]) -> str:
        return ", ".join(map(str, records[:10])) + (" ..." if len(records) > 10 else "")

    line(not stats.repeated_inputs, f"{stats.repeated_inputs} repeated input(s) (dropped "
         f"before the split), {stats.identical_records} identical record(s)")
    line(not stats.conflicting_inputs,
         f"{stats.conflicting_inputs} input(s) with more than one label")
    line(not stats.labels_not_json, f"{len(stats.labels_not_json)} label(s) not JSON"
         + (f" (records {numbers(stats.labels_not_json)})" if stats.labels_not_json else ""))
    if task == "querydsl":
        line(not stats.labels_not_dsl, f"{len(stats.labels_not_dsl)} label(s) not valid "
             "Query DSL" + (f" (records {numbers(stats.labels_not_dsl)})"
                            if stats.labels_not_dsl else ""))


@app.command("distill")
def distill_command(
    inputs: Annotated[Path, typer.Argument(help="Inputs: .jsonl or .csv with an input column "
                                                "and, optionally, a gold label column.")],
    url: Annotated[str, typer.Option(help="Teacher: OpenAI-compatible chat-completions URL "
                                          "(or its /v1 base).")],
    model: Annotated[str, typer.Option(help="Teacher model name, as the endpoint knows it.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="DSS dataset to write "
                                                          "(.jsonl or .csv).")],
    template: Annotated[Path | None, typer.Option(help="Prompt template (YAML/JSON); default: "
                                                       "the paper's chain-of-thought shape.")]
    = None,
    task: Annotated[str, typer.Option(help="querydsl (labels validated as Query DSL, fields "
                                           "checked in the rationale) or json.")] = "querydsl",
    temperature: Annotated[float, typer.Option(min=0, max=2)] = 0.0,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per answer.")] = 1024,
    top_p: Annotated[float | None, typer.Option(min=0, max=1)] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed, if the server takes one.")]
    = None,
    screen_retries: Annotated[int, typer.Option(min=0, help="Ask again, warmer, up to N times "
                                                            "when an answer fails screening.")]
    = 0,
    temperature_step: Annotated[float, typer.Option(min=0, help="Added to the temperature "
                                                                "on each screening retry.")]
    = 0.3,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 8,
    max_retries: Annotated[int, typer.Option(min=0, help="HTTP retries on 429, 5xx and "
                                                         "dropped connections.")] = 6,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds per request.")] = 300.0,
    input_price: Annotated[float | None, typer.Option(min=0, help="USD per million prompt "
                                                                  "tokens (for the cost).")]
    = None,
    output_price: Annotated[float | None, typer.Option(min=0, help="USD per million "
                                                                   "completion tokens.")]
    = None,
    cache: Annotated[Path | None, typer.Option(help="Answer cache (SQLite); default: beside "
                                                    "--out. Reruns pay only for new answers.")]
    = None,
    rejected: Annotated[Path | None, typer.Option(help="Rejected inputs with reasons; default: "
                                                       "OUT.rejected.jsonl.")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API "
                                                  "key.")] = "OPENAI_API_KEY",
    api_key_file: Annotated[Path | None, typer.Option(help="File whose first line is the API "
                                                           "key (wins over the variable).")]
    = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    limit: Annotated[int | None, typer.Option(min=1, help="Ask only for the first N inputs "
                                                          "(a trial run; all are checked).")]
    = None,
) -> None:
    """Label inputs with a teacher LLM (rationale + label), screen them, write a DSS dataset."""
    try:
        from orchestrator.distill.command import (
            DistillError,
            Interrupted,
            Paths,
            load_template,
            read_api_key,
            run_command,
            summary_table,
        )
        from orchestrator.distill.run import Settings
        from orchestrator.distill.screen import Task
    except ImportError as error:
        fail(f"{error}: install the distill extra (pip install 'ladder[distill]')")
    if task not in tuple(Task):
        fail(f"--task {task!r}: expected one of {', '.join(Task)}")
    try:
        settings = Settings(
            template=load_template(template), task=Task(task), temperature=temperature,
            max_tokens=max_tokens, top_p=top_p, seed=seed, screen_retries=screen_retries,
            temperature_step=temperature_step, concurrency=concurrency,
            input_price=input_price, output_price=output_price)
        paths = Paths.beside(out, cache=cache, rejected=rejected)
        for option, path in (("--out", paths.out), ("--rejected", paths.rejected),
                             ("--cache", paths.cache)):
            if path.is_dir():
                fail(f"{option} {path}: is a directory; name the file to write")
            _usable_directory(f"the directory of {option}", path.parent)
        summary = run_command(
            inputs, url, model, paths, settings,
            api_key=read_api_key(api_key_env, api_key_file), max_retries=max_retries,
            timeout_s=timeout, progress=progress, console=errors, limit=limit)
    except DistillError as error:
        fail(str(error))
    except Interrupted as interrupted:
        errors.print(say((str(interrupted), "yellow")))
        raise typer.Exit(130) from None
    console.print(summary_table(summary))
    if not summary.accepted:
        fail(f"no answer passed screening: {paths.out} is empty; the reasons are in "
             f"{paths.rejected}")
    console.print(say(("✓", "green"), f" wrote {summary.accepted} examples to {paths.out}, "
                      f"{summary.rejected} rejected to {paths.rejected}"))



@app.command("models")
def models_command(
    file: Annotated[Path | None, typer.Argument(help="Sweep YAML whose training settings "
                                                "(lengths, batch, precision, checkpointing, "
                                                "first LoRA rank) the estimates use.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List every known architecture: family, parameters and the estimated peak memory per
    device of each method."""
    from orchestrator.model_tables import catalog_json, catalog_settings, catalog_table, wide

    settings = catalog_settings(_load(file).spec if file is not None else None)
    if as_json:
        typer.echo(json.dumps(catalog_json(settings), indent=2))
        return
    training = settings["training"]
    console.print(f"Estimates at maxInputTokens={training.max_input_tokens}, maxOutputTokens="
                  f"{training.max_output_tokens}, {training.pass_batch(settings['workers'])} "
                  f"example(s) per device, {training.precision.value}, LoRA rank "
                  f"{settings['rank']}")
    wide(console).print(catalog_table(settings))


@app.command()
def crd() -> None:
    """Print the Sweep CustomResourceDefinition generated from the spec model (YAML)."""
    import yaml

    from orchestrator.crd import crd_manifest

    typer.echo(yaml.safe_dump(crd_manifest(), sort_keys=False, width=100), nl=False)


@app.command()
def controller(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Watch this namespace (repeat); default: all."),
    ] = None,
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    db_secret: Annotated[
        str,
        typer.Option(help="Secret (name or name/key) giving trial pods LADDER_DB_URL; "
                          "'' for none."),
    ] = "ladder-db/url",
    liveness: Annotated[
        str, typer.Option(help="Liveness endpoint URL; '' to serve none.")
    ] = "http://0.0.0.0:8080/healthz",
    kubeconfig: Annotated[str | None, typer.Option(help="Kubeconfig (default: in-cluster "
                                                        "or $KUBECONFIG).")] = None,
    peering: Annotated[str | None, typer.Option(help="Kopf peering name, for several "
                                                     "replicas (needs Kopf's peering CRD).")]
    = None,
    metrics_port: Annotated[
        int | None, typer.Option(envvar=METRICS_PORT_ENV, min=0, max=65535,
                                 help="Serve Prometheus /metrics on this port (all "
                                      "interfaces).")
    ] = None,
    default_execution: Annotated[
        str | None, typer.Option(envvar=DEFAULT_EXECUTION_ENV,
                                 help="JSON object of spec.execution defaults; each Sweep's "
                                      "own keys win.")
    ] = None,
    allow_privileged_trials: Annotated[
        bool, typer.Option(envvar=ALLOW_PRIVILEGED_TRIALS_ENV,
                           help="Accept Sweeps whose trial pods mount host paths.")
    ] = False,
    allow_trial_service_account: Annotated[
        bool, typer.Option(envvar=ALLOW_TRIAL_SERVICE_ACCOUNT_ENV,
                           help="Let Sweeps choose their pods' serviceAccountName.")
    ] = False,
    allowed_trial_secrets: Annotated[
        str, typer.Option(envvar=ALLOWED_TRIAL_SECRETS_ENV,
                          help="Comma-separated Secrets, besides the store's, that Sweeps may "
                               "mount or reference; '*' for any.")
    ] = "",
    allow_trial_projected_tokens: Annotated[
        bool, typer.Option(envvar=ALLOW_TRIAL_PROJECTED_TOKENS_ENV,
                           help="Let Sweeps mount projected service-account tokens.")
    ] = False,
    allow_trial_network_volumes: Annotated[
        bool, typer.Option(envvar=ALLOW_TRIAL_NETWORK_VOLUMES_ENV,
                           help="Let Sweeps mount network and node volumes (nfs, iscsi, "
                                "cephfs, csi, ...).")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the Kubernetes controller: Sweeps in, KubeRay RayJobs out."""
    from orchestrator.operator.controller import (
        ControllerOptions,
        StartupError,
        parse_execution_defaults,
        run_controller,
    )
    from orchestrator.operator.manifests import TrialPodPolicy

    _logging(logging.DEBUG if verbose else logging.INFO,
             format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        defaults = parse_execution_defaults(default_execution)
    except SpecError as error:
        _spec_error(error, "invalid execution defaults")
    try:
        run_controller(ControllerOptions(
            db_url=db_url(db), namespaces=tuple(namespace or ()), db_secret=db_secret or None,
            liveness=liveness or None, kubeconfig=kubeconfig, peering=peering,
            execution_defaults=defaults, allow_privileged_trials=allow_privileged_trials,
            metrics_port=metrics_port,
            pod_policy=TrialPodPolicy(
                host_paths=allow_privileged_trials,
                service_account=allow_trial_service_account,
                secrets=frozenset(n.strip() for n in allowed_trial_secrets.split(",")
                                  if n.strip()),
                projected_tokens=allow_trial_projected_tokens,
                network_volumes=allow_trial_network_volumes,
            ),
        ))
    except StartupError as error:
        fail(f"the controller cannot start: {error}")


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="Sweep YAML (one or more manifests).")],
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace "
                                                  "(default: the manifest's, else the "
                                                  "kubeconfig's).")] = None,
    kubeconfig: Annotated[str | None, typer.Option(help="Kubeconfig (default: $KUBECONFIG).")]
    = None,
    context: Annotated[str | None, typer.Option(help="Kubeconfig context.")] = None,
) -> None:
    """Validate a Sweep and apply it to the cluster (server-side apply)."""
    from orchestrator.operator.controller import submit as apply_sweeps
    from orchestrator.operator.kube import KubeError

    try:
        applied = apply_sweeps(file, namespace=namespace, kubeconfig=kubeconfig,
                               context=context)
    except SpecError as error:
        _spec_error(error)
    except (KubeError, OSError) as error:
        fail(str(error))
    for obj in applied:
        meta = obj.get("metadata", {})
        console.print(say(("✓", "green"), f" sweep.ladder.dev/{meta.get('name')} applied in "
                          f"namespace {meta.get('namespace')} "
                          f"(generation {meta.get('generation')})"))


@app.command()
def report(
    sweep: Annotated[str | None, typer.Argument(help="Sweep name (default: the store's only "
                                                     "sweep).")] = None,
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    out: Annotated[Path, typer.Option(help="Directory for report.md, report.html and PNGs.")]
    = Path("report"),
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="The sweep's "
                                                  "namespace, where names repeat.")] = None,
    top: Annotated[int, typer.Option(min=1, help="Trials in Table 3.")] = 8,
) -> None:
    """Paper-style tables and figures of a sweep (Markdown and HTML), from the store alone."""
    try:
        from orchestrator.report import ReportError, write_report
    except ImportError as error:
        fail(f"{error}: install the report extra (pip install 'ladder[report]')")
    _usable_directory("--out", out)
    sessions = _open_store(db_url(db))
    try:
        written = write_report(sessions, out, sweep=sweep, namespace=namespace, top=top)
    except ReportError as error:
        fail(str(error))
    console.print(say(("✓", "green"), f" wrote {written.markdown}, {written.html} and "
                      f"{len(written.images)} figures"))


RUNS_HELP = ("Where trials wrote their outputs: `ladder run`'s --runs-dir, or where the "
             "sweep's execution.outputDir is mounted.")


@app.command("export")
def export_command(
    trial: Annotated[str | None, typer.Argument(help="Trial id (see `ladder results`).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Directory to write (new or "
                                             "empty).")] = None,
    best: Annotated[str | None, typer.Option("--best", metavar="SWEEP", help="Export the "
                                             "sweep's best trial.")] = None,
    dtype: Annotated[str, typer.Option(help="fp32 (exact) or bf16 (half the size).")] = "fp32",
    runs_dir: Annotated[Path, typer.Option(help=RUNS_HELP)] = Path("runs"),
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
) -> None:
    """A trial's saved weights as a standalone Hugging Face model (adapters merged)."""
    from orchestrator import trained

    if (trial is None) == (best is None):
        fail("name a trial, or a sweep with --best SWEEP (one of the two)")
    if out is None:
        fail("--out DIR is required: where the model directory goes")
    if out.exists() and not out.is_dir():
        fail(f"--out {out}: a file is in the way (it must be a new or empty directory)")
    _usable_directory("the directory of --out", out.parent)
    sessions = _open_store(db_url(db))
    try:
        located = (trained.best_trial(sessions, best, runs_dir) if best
                   else trained.find_trial(sessions, trial or "", runs_dir))
        trained.export(located, out, dtype)
    except trained.TrainedError as error:
        fail(str(error))
    r = located.record
    from orchestrator.core.formatting import fmt_float

    console.print(say(("✓", "green"), f" exported trial {r['trial_id']} ({r['lane']}, "
                      f"{r['model']}, eval loss {fmt_float(r['best_eval_loss'], 4)}) to {out}"))


@app.command("predict")
def predict_command(
    target: Annotated[str, typer.Argument(help="Trial id, or a model directory (exported, "
                                          "or a trial's model/).")],
    question: Annotated[str | None, typer.Argument(help="The question.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Questions, .jsonl: a "
                                              "string, or {\"input\": ...}, a line.")] = None,
    explain: Annotated[bool, typer.Option(help="Also generate the rationale.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: a GPU when "
                                               "there is one).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
    runs_dir: Annotated[Path, typer.Option(help=RUNS_HELP)] = Path("runs"),
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
) -> None:
    """Greedy answers (`predict: `) of a trained model; --explain adds the rationale."""
    import tempfile

    from orchestrator import trained

    if (question is None) == (file is None):
        fail("give one question, or --file questions.jsonl (one of the two)")
    try:
        questions = [question] if question is not None else trained.read_questions(file)
        path = Path(target)
        if not path.is_dir():
            path = trained.find_trial(_open_store(db_url(db)), target, runs_dir).model_dir
        with tempfile.TemporaryDirectory() as scratch:
            answers = trained.predict(path, questions, explain=explain, device=device,
                                      batch_size=batch_size,
                                      questions_file=Path(scratch) / "questions.jsonl")
    except trained.TrainedError as error:
        fail(str(error))
    for answer in answers:
        if as_json:
            typer.echo(json.dumps(answer))
            continue
        question = answer["question"].rstrip()  # a DSS input: its last line is the question
        console.print(say((question if "\n" not in question
                           else "…" + question.rsplit("\n", 1)[1], "bold")))
        if answer["valid_json"] is not None:  # a Query DSL model: is the answer usable?
            problems = answer.get("dsl_problems") or []
            mark = (("✗ not JSON", "red") if not answer["valid_json"]
                    else ("✓ valid JSON", "green") if not problems
                    else (f"✓ valid JSON, not a Query DSL body: {problems[0]}", "yellow"))
            console.print(say("  ", mark))
        console.print(say("  → ", answer["answer"]))
        if answer["rationale"] is not None:
            console.print(say("  because: ", answer["rationale"]))


def main() -> None:
    """The `ladder` entry point. Every error a command expects is one line of its own; this
    turns the unexpected rest into one line too (LADDER_DEBUG=1 shows the traceback)."""
    try:
        app()
    except Exception as error:
        if os.environ.get(DEBUG_ENV):
            raise
        errors.print(say((f"✗ {_reason(error)} (set {DEBUG_ENV}=1 for the traceback)", "red")))
        sys.exit(1)


if __name__ == "__main__":
    main()
