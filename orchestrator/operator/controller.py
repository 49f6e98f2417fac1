"""Starting the controller (`ladder controller`) and applying Sweeps (`ladder submit`)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.names import DEFAULT_EXECUTION_ENV
from orchestrator.core.spec import (
    SpecError,
    load_documents_text,
    parse_sweep,
    sweep_manifest,
)
from orchestrator.files import read_sweep_file
from orchestrator.operator.manifests import TrialPodPolicy, checked_execution_config

log = logging.getLogger(__name__)

DEFAULT_DB_SECRET = "ladder-db/url"
DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"


class StartupError(RuntimeError):
    """The controller cannot start: no store, no kubeconfig, or no API server. One line,
    naming the problem (and never a password)."""


@dataclass
class ControllerOptions:
    """What `ladder controller` takes."""

    db_url: str
    namespaces: Sequence[str] = ()
    db_secret: str | None = DEFAULT_DB_SECRET
    liveness: str | None = DEFAULT_LIVENESS
    kubeconfig: str | None = None
    peering: str | None = None
    workers: int = 8
    # The chart's `execution` values (LADDER_DEFAULT_EXECUTION), under each Sweep's own.
    execution_defaults: Mapping[str, Any] = field(default_factory=dict)
    # LADDER_ALLOW_PRIVILEGED_TRIALS: let Sweeps give trial pods host access (hostPath).
    allow_privileged_trials: bool = False
    # What Sweeps may give their pods besides (docs/security.md, the chart's trialPods).
    pod_policy: TrialPodPolicy = field(default_factory=TrialPodPolicy)
    # LADDER_METRICS_PORT: serve /metrics here (all interfaces: Prometheus scrapes the pod).
    metrics_port: int | None = None
    metrics_address: str = "0.0.0.0"


def parse_execution_defaults(text: str | None, *, source: str = DEFAULT_EXECUTION_ENV
                             ) -> dict[str, Any]:
    """The JSON object of execution defaults; SpecError naming `source` when it is not one."""
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecError(source, [("execution", f"not valid JSON: {error}")]) from None
    except RecursionError:
        raise SpecError(source, [("execution", "JSON nested too deeply")]) from None
    if not isinstance(value, dict):
        raise SpecError(source, [("execution", f"must be a JSON object, not "
                                               f"{type(value).__name__}")])
    return value


def run_controller(
    options: ControllerOptions,
    *,
    stop_flag: threading.Event | None = None,
    ready_flag: threading.Event | None = None,
) -> None:
    """Run the Kopf operator until stopped (SIGINT/SIGTERM, or `stop_flag`)."""
    import kopf

    import orchestrator.operator.handlers  # noqa: F401 (registers the handlers)
    from orchestrator import store
    from orchestrator.metrics import LadderMetrics
    from orchestrator.operator.kube import Kube, KubeError, load_config
    from orchestrator.operator.manifests import SecretRef
    from orchestrator.operator.reconcile import Reconciler

    store.install_log_redaction()  # Kopf's DEBUG lines and the events it posts included
    try:
        sessions = store.open_store(options.db_url)
    except Exception as error:  # the driver's message may quote the URL, password included
        raise StartupError(f"cannot open the store {store.redact_url(options.db_url)}: "
                           f"{store.error_text(error)}") from None
    try:
        api = load_config(options.kubeconfig)
        kube = Kube(api)
        kube.check_reachable()
    except KubeError as error:
        raise StartupError(str(error)) from None
    secret = SecretRef.parse(options.db_secret) if options.db_secret else None
    metrics = None
    if options.metrics_port is not None:
        metrics = LadderMetrics()
        metrics.watch_store(sessions)
        server = metrics.serve(options.metrics_port, address=options.metrics_address)
        log.info("metrics on http://%s:%d/metrics", options.metrics_address,
                 server.server_port)
    reconciler = Reconciler(
        kube, sessions, db_secret=secret, metrics=metrics,
        execution_defaults=options.execution_defaults,
        allow_privileged_trials=options.allow_privileged_trials,
        pod_policy=options.pod_policy,
    )
    # Kopf serving named namespaces lists and watches namespaces; refused, it retries for
    # about a minute at every start (and every failover) before it serves the names as given.
    # Asked first, a refusal costs nothing: Kopf is told not to scan (settings.scanning).
    scan = not options.namespaces or kube.may("list", "namespaces") is not False
    if not scan:
        log.warning("may not list namespaces: serving %s as named; a namespace or CRD created "
                    "later is noticed on the next start (chart: rbac.listNamespaces)",
                    ", ".join(options.namespaces))
    memo = kopf.Memo(
        reconciler=reconciler,
        scan=scan,
        peering=options.peering is not None,
        peering_name=options.peering,
        clusterwide=not options.namespaces,
        workers=options.workers,
    )
    log.info(
        "Ladder controller: %s, store %s",
        f"namespaces {', '.join(options.namespaces)}" if options.namespaces else "all namespaces",
        store.redact_url(options.db_url),
    )

    if options.kubeconfig is not None:
        # Kopf logs in through the kubernetes client's defaults, which read $KUBECONFIG.
        os.environ["KUBECONFIG"] = options.kubeconfig
    kopf.run(
        clusterwide=not options.namespaces,
        namespaces=list(options.namespaces),
        standalone=options.peering is None,
        peering_name=options.peering,
        liveness_endpoint=options.liveness,
        memo=memo,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def manifests_of(text: str, *, source: str, namespace: str | None,
                 default_name: str | None = None) -> list[dict[str, Any]]:
    """The Sweep manifests in a YAML text (one or more documents), validated, ready to apply.

    What the user wrote is applied as written (server-side apply then owns only those
    fields, and the API server fills in the defaults); a bare spec becomes a manifest.
    Raises SpecError naming the bad field.
    """
    out: list[dict[str, Any]] = []
    for document in load_documents_text(text, source=source):
        sweep = parse_sweep(document, source=source, default_name=default_name)
        try:
            checked_execution_config(sweep)
        except SpecError as error:
            raise SpecError(source, error.problems) from None
        if isinstance(document, Mapping) and "kind" in document:
            manifest = dict(document)
            manifest["metadata"] = dict(manifest.get("metadata") or {})
        else:
            manifest = sweep_manifest(sweep)
        ns = namespace or manifest["metadata"].get("namespace")
        written = manifest["metadata"].get("namespace")
        if namespace and written not in (None, namespace):
            message = f"is {written!r} but --namespace is {namespace!r}"
            raise SpecError(source, [("metadata.namespace", message)])
        manifest["metadata"]["namespace"] = ns
        out.append(manifest)
    return out


def submit(
    path: Path,
    *,
    namespace: str | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
) -> list[dict[str, Any]]:
    """Server-side apply the Sweep(s) in `path`; returns the objects as stored."""
    from orchestrator.operator.kube import Kube, default_namespace, load_config

    text = read_sweep_file(path)
    stem = path.stem.lower()
    manifests = manifests_of(text, source=str(path), namespace=namespace, default_name=stem)
    fallback = default_namespace(kubeconfig, context)
    kube = Kube(load_config(kubeconfig, context))
    applied = []
    for manifest in manifests:
        manifest["metadata"]["namespace"] = manifest["metadata"].get("namespace") or fallback
        applied.append(kube.apply_sweep(manifest))
    return applied
