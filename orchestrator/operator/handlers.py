"""The Kopf handlers of the Ladder controller. Each one only routes to `Reconciler`.

Kopf re-enters create/update handlers on retry and may deliver several causes for one Sweep
at once, so none of them decides anything itself: they all run the same idempotent pass
(`reconcile.Reconciler`), which reads the world afresh and calls the pure `plan`.

- Sweep created, resumed (controller start) or its spec updated (suspend, parallelism, ...);
- a timer on every Sweep (`LADDER_RECONCILE_INTERVAL` seconds, default 5);
- any change of a RayJob labelled `app.kubernetes.io/managed-by=ladder` (kicks its Sweep);
- Sweep deleted: a finalizer (`ladder.dev/finalizer`) holds the Sweep until its RayJobs are
  gone; the store keeps every result.

A store that is away (PostgreSQL restarting, failing over) or an API server that answers
with a transient error makes a pass fail with `kopf.TemporaryError`: Kopf retries it after
one reconcile interval, and the timer keeps ticking, so the controller backs off and carries
on by itself once the store is back; nothing is decided while it is away.

The Reconciler comes in through Kopf's `memo` (`memo.reconciler`), set up by
`orchestrator.operator.controller.run_controller` (the `ladder controller` command).
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import kopf

from orchestrator import store
from orchestrator.core.names import (
    DOMAIN,
    FINALIZER,
    LABEL_MANAGED_BY,
    LABEL_SWEEP,
    MANAGED_BY,
    PEERING_LIFETIME_ENV,
    PEERING_PRIORITY_ENV,
    RECONCILE_INTERVAL_ENV,
)
from orchestrator.crd import GROUP, PLURAL, VERSION
from orchestrator.operator.kube import KubeError
from orchestrator.operator.manifests import (
    RAY_GROUP,
    RAY_VERSION,
    RAYJOB_PLURAL,
)
from orchestrator.operator.reconcile import Reconciler

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = DOMAIN
RECONCILE_INTERVAL = float(os.environ.get(RECONCILE_INTERVAL_ENV, "5"))
# Peering (`ladder controller --peering NAME`, several replicas): the replica of the highest
# priority acts, the others pause (Kopf pauses *all* replicas of equal priority, so each
# replica draws its own unless LADDER_PEERING_PRIORITY sets it); a replica that dies without
# saying goodbye (SIGKILL, a lost node) is taken over once its keep-alive is older than
# LADDER_PEERING_LIFETIME seconds.
DELETE_RETRY_DELAY = 2.0
SWEEPS = (GROUP, VERSION, PLURAL)
RAYJOBS = (RAY_GROUP, RAY_VERSION, RAYJOB_PLURAL)


def _reconciler(memo: Any) -> Reconciler:
    reconciler = getattr(memo, "reconciler", None)
    if reconciler is None:
        raise kopf.PermanentError("the controller was started without a reconciler in memo")
    return reconciler


def _pass(memo: Any, namespace: str, name: str) -> None:
    try:
        _reconciler(memo).reconcile(namespace, name)
    except KubeError as error:
        if error.transient:
            raise kopf.TemporaryError(str(error), delay=RECONCILE_INTERVAL) from error
        raise
    except Exception as error:
        if store.is_transient(error):
            log.warning("store unavailable during a pass over sweep %s/%s; retrying in "
                        "%.0f s: %s", namespace, name, RECONCILE_INTERVAL,
                        type(error).__name__)
            raise kopf.TemporaryError(f"store unavailable: {type(error).__name__}",
                                      delay=RECONCILE_INTERVAL) from error
        raise


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Our own Events (kube.Cluster.event) say what happened; Kopf posts only its warnings.
    settings.posting.level = logging.WARNING
    settings.peering.standalone = not getattr(memo, "peering", False)
    if getattr(memo, "peering", False):
        settings.peering.name = memo.peering_name
        settings.peering.clusterwide = getattr(memo, "clusterwide", False)
        priority = os.environ.get(PEERING_PRIORITY_ENV)
        settings.peering.priority = (int(priority) if priority
                                     else random.SystemRandom().randint(1, 1_000_000))
        settings.peering.lifetime = int(os.environ.get(PEERING_LIFETIME_ENV, "60"))
        log.info("peering %r with priority %d, lifetime %d s", memo.peering_name,
                 settings.peering.priority, settings.peering.lifetime)
    # Off only where namespaces may not be listed (controller.run_controller says so).
    settings.scanning.disabled = not getattr(memo, "scan", True)
    settings.execution.max_workers = getattr(memo, "workers", 8)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60


@kopf.on.resume(*SWEEPS)
@kopf.on.create(*SWEEPS)
@kopf.on.update(*SWEEPS, field="spec")
def sweep_changed(name: str, namespace: str, memo: Any, **_: Any) -> None:
    """A Sweep appeared, came back with the controller, or its spec changed."""
    _pass(memo, namespace, name)


@kopf.timer(*SWEEPS, interval=RECONCILE_INTERVAL, initial_delay=RECONCILE_INTERVAL)
def sweep_timer(name: str, namespace: str, memo: Any, **_: Any) -> None:
    """Level-triggered safety net: whatever was missed, the next tick sees."""
    _pass(memo, namespace, name)


@kopf.on.event(*RAYJOBS, labels={LABEL_MANAGED_BY: MANAGED_BY})
def rayjob_changed(body: Any, namespace: str, memo: Any, **_: Any) -> None:
    """A RayJob of a Sweep moved (KubeRay wrote its status, someone deleted it, ...)."""
    labels = body.get("metadata", {}).get("labels") or {}
    owners = body.get("metadata", {}).get("ownerReferences") or []
    sweep = next((o.get("name") for o in owners if o.get("kind") == "Sweep"), None)
    sweep = sweep or labels.get(LABEL_SWEEP)
    if not sweep:
        return
    try:
        _reconciler(memo).kick(namespace, sweep)
    except Exception as error:  # the timer retries; an event handler must not crash-loop
        log.warning("pass over sweep %s/%s after a RayJob change failed: %s", namespace,
                    sweep, error)


@kopf.on.delete(*SWEEPS)
def sweep_deleted(name: str, namespace: str, memo: Any, **_: Any) -> None:
    """Cancel running trials and delete every RayJob; the finalizer goes when none is left."""
    reconciler = _reconciler(memo)
    try:
        result = reconciler.reconcile(namespace, name)
    except KubeError as error:
        raise kopf.TemporaryError(str(error), delay=DELETE_RETRY_DELAY) from error
    except Exception as error:
        if store.is_transient(error):
            raise kopf.TemporaryError(f"store unavailable: {type(error).__name__}",
                                      delay=DELETE_RETRY_DELAY) from error
        raise
    if result is not None and result.remaining_rayjobs:
        raise kopf.TemporaryError(
            f"waiting for {result.remaining_rayjobs} RayJobs to be deleted",
            delay=DELETE_RETRY_DELAY,
        )
    reconciler.forget(namespace, name)


@kopf.on.probe(id="passes")
def passes(memo: Any, **_: Any) -> int:
    """Liveness detail: reconcile passes so far."""
    return _reconciler(memo).passes
