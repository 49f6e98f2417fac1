"""Metrics, dashboards and alert rules against a real Prometheus server after a real sweep.

Prometheus is Debian's server binary (`apt-get install prometheus`), started on a free
loopback port with a temporary TSDB, scraping every second:

- job `ladder`: the metrics endpoint of `ladder run --metrics-port` while a real 2-lane cut
  of examples/quickstart.yaml runs (full and LoRA, one adapter pair, 2 epochs, the ladder's
  smallest model, which fits, and its largest, which runs out of the budget; CPU), then,
  on the same port once the CLI has exited, the same store served by `LadderMetrics` in this
  process (a finished sweep keeps its metrics where the controller keeps running);
- job `ladder-live`: a snapshot of that store taken mid-sweep, at a moment when a trial was
  running with at least one epoch written, with its sweep renamed `<name>-live`. A CPU trial
  of the tiny ladder is running for a second or two, so catching one live on a 1 s scrape is
  luck; the snapshot makes the live-training figures certain, and is still the store as the
  real workers wrote it.

Then every metric a dashboard uses is checked against the store through Prometheus' HTTP
API, and every panel query of every dashboard is run the way Grafana runs it (instant or
range) with its variables substituted: an error or an empty result fails, except for the
targets that must be empty for this sweep (GPU memory on CPU, QLoRA and the dssAlpha 1.0
ablation that this cut does not run), each checked against the store.
LADDER_SKIP_PROMETHEUS=1 skips these tests where the server cannot be installed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator import store
from orchestrator.bookkeeping import sweep_status
from orchestrator.core.lifecycle import OOMKind, TrialState
from orchestrator.metrics import LIVE_FIGURES, TRIAL_FIGURES, LadderMetrics
from orchestrator.ports import free_port
from orchestrator.store.records import latest_rows, sweep_from_row

pytestmark = [pytest.mark.observability, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "helm/ladder/dashboards"
RULES = ROOT / "helm/ladder/rules/ladder-alerts.yaml"
RULE_TESTS = Path(__file__).with_name("ladder-alerts.test.yaml")
SKIP_ENV = "LADDER_SKIP_PROMETHEUS"
INSTALL_HINT = (
    "the Prometheus server (prometheus, promtool) was not found; install it with "
    f"`apt-get install prometheus` (or set {SKIP_ENV}=1 to skip the observability tests)"
)
SWEEP = "obs"
LIVE = f"{SWEEP}-live"
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval is for a 1 s scrape and a 2 s step
STEP = 2.0


def _binary(name: str) -> str:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1")
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK)
                                  else None)
    if path is None:
        pytest.fail(INSTALL_HINT)
    return path


class PrometheusError(AssertionError):
    pass


@dataclass
class Prometheus:
    """A Prometheus server of this test session, and its HTTP API."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        request = urllib.request.Request(f"{self.url}/api/v1/{path}?{query}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: "
                                  f"{body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = STEP
                    ) -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                        step=step)["result"]

    def value(self, expr: str) -> float | None:
        """The single sample of an instant query, None when it returns nothing."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, predicate: Any = bool, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout:.0f}s for {expr}; last: {result}")
            time.sleep(0.5)


def start_prometheus(root: Path, targets: dict[str, int]) -> Prometheus:
    binary = _binary("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": job, "scrape_interval": "1s", "scrape_timeout": "1s",
             "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in targets.items()
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = root / "prometheus.log"
    for _try in range(3):  # another process may take the port between probe and bind
        port = free_port()
        process = subprocess.Popen(
            [binary, f"--config.file={root / 'prometheus.yml'}",
             f"--storage.tsdb.path={root / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )
        server = Prometheus(f"http://127.0.0.1:{port}", process, log)
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return server
            except OSError:
                time.sleep(0.2)
        process.kill()
        process.wait()
    raise AssertionError(f"Prometheus did not start:\n{log.read_text()[-3000:]}")


# --- the sweep --------------------------------------------------------------------------


def sweep_file(root: Path) -> Path:
    """A 2-lane cut of the quickstart: full and LoRA r8/a16, 2 epochs, the ladder's ends.

    The smallest model fits and the largest runs out of the quickstart's memory budget, so
    each lane has a result and an OOM (its ceiling).
    """
    manifest = yaml.safe_load((ROOT / "examples/quickstart.yaml").read_text())
    manifest["metadata"]["name"] = SWEEP
    spec = manifest["spec"]
    spec["methods"] = ["full", "lora"]
    spec["adapters"] = [{"rank": 8, "alphas": [16]}]
    spec["training"]["epochs"] = 2
    spec["ladder"] = [spec["ladder"][0], spec["ladder"][-1]]
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def _live_rows(db: Path) -> int:
    """Running attempts with at least one trained epoch (epoch 0, the untuned baseline, has no
    training figures), read without disturbing the writers."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return connection.execute(
            "SELECT count(*) FROM trials t WHERE t.status = 'running' AND EXISTS "
            "(SELECT 1 FROM epochs e WHERE e.trial_pk = t.id AND e.epoch > 0)"
        ).fetchone()[0]
    except sqlite3.OperationalError:  # not migrated yet
        return 0
    finally:
        connection.close()


def _snapshot(db: Path, copy: Path) -> None:
    source, target = sqlite3.connect(db, timeout=5), sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


def _interrupt(cli: subprocess.Popen[bytes]) -> None:
    """Ctrl-C: the runner cancels its trials and stops its Ray runtime; then kill."""
    cli.send_signal(signal.SIGINT)
    try:
        cli.wait(timeout=90)
    except subprocess.TimeoutExpired:
        cli.kill()
        cli.wait()


@dataclass
class SweepRun:
    db: Path
    live_db: Path
    started: float  # wall clock, seconds
    finished: float
    output: str
    servers: list[Any] = field(default_factory=list)


@dataclass
class Observed:
    prometheus: Prometheus
    run: SweepRun


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    _binary("promtool")
    root = tmp_path_factory.mktemp("observability")
    port, live_port = free_port(), free_port()
    prometheus = start_prometheus(root, {"ladder": port, "ladder-live": live_port})
    run = SweepRun(db=root / "ladder.db", live_db=root / "live.db", started=time.time(),
                   finished=0.0, output="")
    try:
        command = [sys.executable, "-m", "orchestrator.cli", "run", str(sweep_file(root)),
                   "--db", f"sqlite:///{run.db}", "--runs-dir", str(root / "runs"),
                   "--metrics-port", str(port)]
        env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"}
        log = root / "ladder-run.log"
        with log.open("wb") as out:
            cli = subprocess.Popen(command, cwd=root, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 600
            while cli.poll() is None:
                if not run.live_db.exists() and run.db.exists() and _live_rows(run.db):
                    _snapshot(run.db, run.live_db)
                if time.monotonic() > deadline:
                    _interrupt(cli)
                    pytest.fail("the sweep took more than 10 minutes")
                time.sleep(0.1)
        run.finished = time.time()
        run.output = log.read_text(errors="replace")
        assert cli.returncode == 0, run.output[-4000:]
        assert run.live_db.exists(), "no trial was ever seen running with an epoch written"

        # The snapshot as its own sweep, so aggregations never mix it with the final one.
        with sqlite3.connect(run.live_db) as connection:
            connection.execute("UPDATE sweeps SET name = ? WHERE name = ?", (LIVE, SWEEP))
        # The CLI has exited: serve the same store where it served, and the snapshot.
        for db, at in ((run.db, port), (run.live_db, live_port)):
            metrics = LadderMetrics()
            metrics.watch_store(store.open_store(f"sqlite:///{db}"))
            run.servers.append(metrics.serve(at))
        prometheus.wait_for(f'ladder_trials{{job="ladder", sweep="{SWEEP}"}}',
                            lambda r: len(r) == len(TrialState))
        prometheus.wait_for(f'ladder_trial_epoch{{job="ladder-live", sweep="{LIVE}"}}')
        # Two more scrapes of both, so range queries end on the served state too.
        time.sleep(2.5)
        yield Observed(prometheus, run)
    finally:
        for server in run.servers:
            server.shutdown()
            server.server_close()
        prometheus.process.terminate()
        try:
            prometheus.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            prometheus.process.kill()
        store.dispose_stores()


# --- the metrics against the store ----------------------------------------------------


def _rows(db: Path, sweep: str) -> tuple[Any, list[Any]]:
    sessions = store.open_store(f"sqlite:///{db}")
    with sessions() as session:
        sweep_row = next(r for r in store.list_sweeps(session) if r.name == sweep)
        rows = store.attempts(session, "", sweep, with_epochs=True)
        for row in rows:
            _ = row.epochs, row.sweep  # load before the session closes
        return sweep_row, rows


def _by_trial(result: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for series in result:
        trial = series["metric"]["trial"]
        assert trial not in out, f"two series for trial {trial}: {result}"
        out[trial] = series
    return out


def _expected_labels(row: Any, sweep: str) -> dict[str, str]:
    labels = {"sweep": sweep, "trial": row.trial_id, "lane": row.lane, "model": row.model,
              "method": str(row.method), "dss_alpha": f"{row.dss_alpha:g}",
              "seed": str(row.seed)}
    # Prometheus drops empty labels: full fine-tuning has no rank or alpha, local runs no
    # namespace.
    if row.rank is not None:
        labels["rank"] = str(row.rank)
    if row.alpha is not None:
        labels["alpha"] = str(row.alpha)
    return labels


def test_metrics_match_the_store(observed: Observed) -> None:
    prom = observed.prometheus
    sweep_row, rows = _rows(observed.run.db, SWEEP)
    latest = latest_rows(rows)
    states = Counter(TrialState(r.status) for r in latest)
    assert states[TrialState.SUCCEEDED] >= 2, observed.run.output[-3000:]

    selector = f'job="ladder", sweep="{SWEEP}"'
    for state in TrialState:
        assert prom.value(f'ladder_trials{{{selector}, state="{state.value}"}}') == \
            states.get(state, 0), state
    finished = Counter(TrialState(r.status) for r in rows if r.is_terminal)
    for state in (s for s in TrialState if s.is_terminal):
        assert prom.value(f'ladder_trial_attempts_finished_total{{{selector}, '
                          f'state="{state.value}"}}') == finished.get(state, 0)
    kinds = Counter(OOMKind(r.oom_kind) for r in latest if r.oom_kind)
    for kind in OOMKind:
        assert prom.value(f'ladder_trial_ooms{{{selector}, kind="{kind.value}"}}') == \
            kinds.get(kind, 0)

    # Every per-trial figure, for every trial that has it, with its grid labels.
    for name, attribute, _ in TRIAL_FIGURES:
        series = _by_trial(prom.query(f"{name}{{{selector}}}"))
        expected = {r.trial_id: r for r in latest if getattr(r, attribute) is not None}
        assert set(series) == set(expected), name
        for trial_id, row in expected.items():
            metric = series[trial_id]["metric"]
            labels = {k: v for k, v in metric.items() if k not in ("__name__", "job",
                                                                   "instance")}
            assert labels == {**_expected_labels(row, SWEEP), "state": str(row.status)}
            assert math.isclose(float(series[trial_id]["value"][1]),
                                float(getattr(row, attribute)), rel_tol=1e-12), name
    assert prom.query(f"ladder_trial_best_eval_loss{{{selector}}}"), "no result at all"

    # Sweep progress, phase and lane ceilings as `ladder status` computes them.
    status = sweep_status(sweep_from_row(sweep_row), rows)
    assert prom.value(f"ladder_sweep_trials_potential{{{selector}}}") == status.trials_total
    assert prom.value(f"ladder_sweep_trials_done{{{selector}}}") == status.trials_done
    assert prom.value(f'ladder_sweep_phase{{{selector}, phase="{status.phase.value}"}}') == 1
    assert prom.value(f"sum(ladder_sweep_phase{{{selector}}})") == 1
    last = max(r.updated_at for r in rows).timestamp()
    assert math.isclose(prom.value(
        f"ladder_sweep_last_activity_timestamp_seconds{{{selector}}}") or 0, last)
    ladder = sweep_from_row(sweep_row).spec.ladder
    ceilings = {s["metric"]["lane"]: s for s in
                prom.query(f"ladder_lane_ceiling_model_index{{{selector}}}")}
    assert set(ceilings) == {lane.name for lane in status.lanes}
    for lane in status.lanes:
        series = ceilings[lane.name]
        index = ladder.index(lane.ceiling_model) if lane.ceiling_model else -1
        assert float(series["value"][1]) == index
        assert series["metric"]["state"] == lane.state.value
        assert series["metric"].get("model", "") == (lane.ceiling_model or "")

    # No live figures for a finished sweep.
    for name, _, _ in LIVE_FIGURES:
        assert prom.query(f"{name}{{{selector}}}") == [], name


def test_live_figures_match_the_mid_sweep_store(observed: Observed) -> None:
    prom = observed.prometheus
    _, rows = _rows(observed.run.live_db, LIVE)
    running = [r for r in latest_rows(rows)
               if TrialState(r.status) is TrialState.RUNNING and r.epochs]
    assert running
    selector = f'job="ladder-live", sweep="{LIVE}"'
    for name, attribute, _ in LIVE_FIGURES:
        series = _by_trial(prom.query(f"{name}{{{selector}}}"))
        expected = {r.trial_id: max(r.epochs, key=lambda e: e.epoch) for r in running
                    if getattr(max(r.epochs, key=lambda e: e.epoch), attribute) is not None}
        assert set(series) == set(expected), name
        for trial_id, epoch in expected.items():
            assert math.isclose(float(series[trial_id]["value"][1]),
                                float(getattr(epoch, attribute)), rel_tol=1e-12), name
    assert prom.value(f'ladder_trials{{{selector}, state="running"}}') == len(
        [r for r in latest_rows(rows) if TrialState(r.status) is TrialState.RUNNING])


def test_controller_histograms_were_scraped_during_the_sweep(observed: Observed) -> None:
    prom, run = observed.prometheus, observed.run
    window = f"[{int(time.time() - run.started) + 5}s]"
    selector = f'job="ladder", sweep="{SWEEP}"'
    passes = prom.query(f"max_over_time(ladder_reconcile_duration_seconds_count"
                        f"{{{selector}}}{window})")
    assert passes and float(passes[0]["value"][1]) > 1
    launches = prom.query(f"max_over_time(ladder_trial_launch_latency_seconds_count"
                          f"{{{selector}}}{window})")
    assert launches and float(launches[0]["value"][1]) >= 2  # one per lane at least
    # The CLI's own endpoint was scraped, store figures included, while the sweep ran.
    scraped = prom.query_range(f'ladder_trials{{{selector}, state="running"}}', run.started,
                               run.finished - 1)
    assert scraped, "Prometheus never scraped `ladder run --metrics-port` during the sweep"


# --- the dashboards -------------------------------------------------------------------


def _dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text())
            for path in sorted(DASHBOARDS.glob("*.json"))}


def _targets(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in board["panels"]:
        for child in [panel, *panel.get("panels", [])]:
            for target in child.get("targets", []):
                yield child, target


LIVE_METRICS = tuple(name for name, _, _ in LIVE_FIGURES)


def substitute(expr: str, sweep: str, namespace: str = ".*") -> str:
    """What Grafana sends for the expression, with these variable values."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__interval", "2s")
    expr = expr.replace("$__range", "15m")
    expr = re.sub(r"\$\{?sweep\}?", sweep, expr)
    expr = re.sub(r"\$\{?namespace\}?", namespace, expr)
    assert "$" not in expr, f"an unknown variable is left in {expr}"
    return expr


def allowed_empty(expr: str, rows: list[Any]) -> str | None:
    """Why this sweep's store leaves a target empty, checked against the store; else None."""
    latest = [r for r in latest_rows(rows) if TrialState(r.status) is TrialState.SUCCEEDED]
    if "gpu_memory" in expr and not any(r.peak_gpu_memory_bytes for r in rows) and not any(
            e.peak_gpu_memory_bytes for r in rows for e in r.epochs):
        return "GPU memory of a CPU-only sweep"
    if 'method="qlora"' in expr and not any(str(r.method) == "qlora" for r in latest):
        return "the sweep ran no QLoRA trial"
    if 'dss_alpha="1"' in expr and not any(r.dss_alpha == 1.0 for r in latest):
        return "the sweep ran no dssAlpha 1.0 (label-only) lane"
    return None


def test_every_panel_query_returns_data(observed: Observed) -> None:
    prom, run = observed.prometheus, observed.run
    _, final_rows = _rows(run.db, SWEEP)
    _, live_rows = _rows(run.live_db, LIVE)
    now = time.time()
    problems, checked, allowed = [], 0, []
    for name, board in _dashboards().items():
        for panel, target in _targets(board):
            raw = target["expr"]
            live = any(metric in raw for metric in LIVE_METRICS)
            sweep, rows = (LIVE, live_rows) if live else (SWEEP, final_rows)
            expr = substitute(raw, sweep)
            where = f"{name} / {panel['title']} / {target['refId']}"
            try:
                if target.get("instant"):
                    result = prom.query(expr, at=now)
                else:
                    result = prom.query_range(expr, run.started, now)
            except PrometheusError as error:
                problems.append(f"{where}: query error {error}")
                continue
            checked += 1
            if not result:
                reason = allowed_empty(raw, rows)
                if reason is None:
                    problems.append(f"{where}: empty result for {expr}")
                else:
                    allowed.append(f"{where} ({reason})")
    assert not problems, "\n".join(problems)
    assert checked >= 40
    # The allowed empties are exactly those this cut of the quickstart implies.
    assert len(allowed) <= 6, allowed


def test_template_variables_resolve(observed: Observed) -> None:
    prom = observed.prometheus
    for board in _dashboards().values():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        for name in ("namespace", "sweep"):
            definition = variables[name]["definition"]
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", definition)
            assert match, definition
            selector, label = match.groups()
            values = prom.api(f"label/{label}/values",
                              **{"match[]": substitute(selector, ".*")})
            if name == "sweep":
                assert SWEEP in values and LIVE in values
            # Workstation sweeps have no namespace: the list is empty and All (.*) matches.
            assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"


def test_alert_rules_load_and_evaluate(observed: Observed) -> None:
    prom = observed.prometheus
    deadline = time.monotonic() + 30
    while True:
        groups = prom.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if rules and all(rule.get("lastEvaluation", "").startswith("20") and
                         rule["health"] != "unknown" for rule in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)
    names = {rule["name"] for rule in rules}
    assert {"LadderSweepStalled", "LadderTrialsFailing", "LadderControllerDown"} <= names
    assert all(rule["health"] == "ok" for rule in rules), rules
    # Both targets are up and the sweep is finished: nothing fires.
    firing = {rule["name"] for rule in rules if rule["state"] == "firing"}
    assert not firing & {"LadderControllerDown", "LadderSweepStalled"}


# --- static checks (no sweep needed) ---------------------------------------------------


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = _binary("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True,
                          text=True, timeout=120)
    assert unit.returncode == 0, unit.stdout + unit.stderr


KNOWN_PANEL_TYPES = {"row", "stat", "timeseries", "table", "barchart", "bargauge", "gauge",
                     "piechart", "heatmap", "text", "state-timeline"}
KNOWN_TRANSFORMATIONS = {"merge", "organize", "sortBy", "groupingToMatrix", "joinByLabels",
                         "joinByField", "filterFieldsByName", "reduce", "seriesToRows"}


def _datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            yield node["datasource"]
        for value in node.values():
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasource_refs(value)


def test_dashboard_json_structure() -> None:
    """A minimal schema check (no maintained JSON Schema of dashboards is published)."""
    boards = _dashboards()
    assert set(boards) == {"ladder-overview.json", "ladder-training.json",
                           "ladder-results.json"}
    uids = [board["uid"] for board in boards.values()]
    assert len(set(uids)) == len(uids)
    for name, board in boards.items():
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", board["uid"]), name
        assert board["title"] and board["schemaVersion"] >= 39 and "ladder" in board["tags"]
        assert board.get("id") is None, f"{name}: an instance-specific id"
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for var in ("namespace", "sweep"):
            assert variables[var]["type"] == "query"
            assert variables[var]["definition"].startswith("label_values(")
        # No hard-coded data source: every reference goes through $datasource.
        for ref in _datasource_refs(board):
            assert ref.get("uid") in ("${datasource}", "-- Grafana --"), (name, ref)
        ids, cells = set(), set()
        for panel in board["panels"]:
            assert panel["type"] in KNOWN_PANEL_TYPES, (name, panel.get("title"))
            assert panel.get("title"), name
            assert panel["id"] not in ids, (name, panel["id"])
            ids.add(panel["id"])
            grid = panel["gridPos"]
            assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["title"]
            assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24
            covered = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"])
                       for dy in range(grid["h"])}
            assert not covered & cells, f"{name}: {panel['title']} overlaps another panel"
            cells |= covered
            if panel["type"] == "row":
                continue
            targets = panel.get("targets")
            assert targets, f"{name}: {panel['title']} has no targets"
            refs = [t["refId"] for t in targets]
            assert len(set(refs)) == len(refs)
            for target in targets:
                assert target["expr"].strip(), (name, panel["title"])
                assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for transformation in panel.get("transformations", []):
                assert transformation["id"] in KNOWN_TRANSFORMATIONS, transformation
