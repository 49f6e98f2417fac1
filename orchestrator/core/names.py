"""Every name Ladder's parts share, in one place (as KubeRay's `utils/constant.go`).

Labels and annotations on RayJobs and their pods, the Sweep's finalizer, the environment
variables the controller, the local runner and the worker read, the store's default URL,
the worker's OOM exit code and the fields that identify a trial attempt. A module that
needs one of these imports it from here; nothing else spells them out. (The enums of
states and kinds live in `lifecycle.py`; the Sweep's API group and version in `spec.py`.)

See docs/architecture.md, "Names".
"""

from __future__ import annotations

from orchestrator.core.lifecycle import ExitCode

# --- Kubernetes metadata ------------------------------------------------------------------
DOMAIN = "ladder.dev"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "ladder"
LABEL_SWEEP = f"{DOMAIN}/sweep"
LABEL_LANE = f"{DOMAIN}/lane"
LABEL_TRIAL = f"{DOMAIN}/trial"
LABEL_ATTEMPT = f"{DOMAIN}/attempt"
LABEL_METHOD = f"{DOMAIN}/method"
ANNOTATION_MODEL = f"{DOMAIN}/model"
# The outcome the controller last announced as an Event for a RayJob (across restarts).
ANNOTATION_OUTCOME = f"{DOMAIN}/outcome"
# Holds a deleted Sweep until its RayJobs are gone.
FINALIZER = f"{DOMAIN}/finalizer"

# --- environment variables ----------------------------------------------------------------
# The store's SQLAlchemy URL, for the CLI, the controller and every worker.
DB_URL_ENV = "LADDER_DB_URL"
DEFAULT_DB_URL = "sqlite:///ladder.db"
# The trial (AttemptSpec JSON) of a RayJob's worker, inline in its runtime environment.
TRIAL_JSON_ENV = "LADDER_TRIAL_JSON"
# How long a worker keeps retrying the delivery of its result to the store.
RESULT_RETRY_ENV = "LADDER_RESULT_RETRY_SECONDS"
# The controller's settings (the Helm chart sets them).
RECONCILE_INTERVAL_ENV = "LADDER_RECONCILE_INTERVAL"
PEERING_PRIORITY_ENV = "LADDER_PEERING_PRIORITY"
PEERING_LIFETIME_ENV = "LADDER_PEERING_LIFETIME"
METRICS_PORT_ENV = "LADDER_METRICS_PORT"
DEFAULT_EXECUTION_ENV = "LADDER_DEFAULT_EXECUTION"
ALLOW_PRIVILEGED_TRIALS_ENV = "LADDER_ALLOW_PRIVILEGED_TRIALS"
# What a Sweep may give its trial pods (the chart's trialPods; docs/security.md).
ALLOW_TRIAL_SERVICE_ACCOUNT_ENV = "LADDER_ALLOW_TRIAL_SERVICE_ACCOUNT"
ALLOWED_TRIAL_SECRETS_ENV = "LADDER_ALLOWED_TRIAL_SECRETS"
ALLOW_TRIAL_PROJECTED_TOKENS_ENV = "LADDER_ALLOW_TRIAL_PROJECTED_TOKENS"
ALLOW_TRIAL_NETWORK_VOLUMES_ENV = "LADDER_ALLOW_TRIAL_NETWORK_VOLUMES"
# Set to "1" by the local backend: a trial of one CPU worker trains in the job's driver process
# instead of a Ray Train worker group (worker/train.py: rank_in_driver), which saves two fresh
# processes' start and imports; multi-worker and GPU trials, and every trial on a cluster,
# keep Ray Train.
RANK_IN_DRIVER_ENV = "LADDER_RANK_IN_DRIVER"
# The interpreter the local backend runs `-m worker run` with (default: the CLI's own), e.g.
# a virtualenv that has the worker's dependencies; the tests point it at the fast stand-in.
WORKER_PYTHON_ENV = "LADDER_WORKER_PYTHON"
# Set by the local backend on one-CPU-worker trials' jobs: the socket of its warm fork server
# (worker/forkserver.py), which `python -m worker run` asks to fork the trial instead of
# importing torch and the training libraries itself. "0" in `ladder run`'s own environment
# turns the server off (every trial then starts a fresh process, as on a cluster).
FORK_SERVER_ENV = "LADDER_FORK_SERVER"
# The node address of a Ray runtime that Ladder starts on one machine (`ladder run`'s private
# head, a worker run without a runtime). Ray rewrites 127.0.0.1 and "localhost" to the
# machine's routable address wherever it meets them (its resolve_ip_for_localhost: the node's
# address, the GCS address a driver is given), so the runtime's processes would talk to each
# other over that address. Any other address of 127.0.0.0/8 is loopback too, and Ray leaves it
# alone: every connection of such a runtime, its drivers' included, stays on loopback.
LOOPBACK_NODE_IP = "127.0.0.2"
# Gloo (DDP on CPU) picks its interface by the hostname's address; on one machine, loopback.
LOOPBACK_ENV: dict[str, str] = {"GLOO_SOCKET_IFNAME": "lo"}
# Set to show the traceback of an unexpected CLI error (otherwise one line).
DEBUG_ENV = "LADDER_DEBUG"

# --- the worker contract ------------------------------------------------------------------
# The exit code of a worker whose trial ran out of memory (lifecycle.ExitCode has them all).
OOM_EXIT_CODE = int(ExitCode.OOM)

# The fields that identify a trial attempt, shared by AttemptSpec, AttemptResult and AttemptRow
# (the store's natural key is the sweep's (namespace, name) plus trial id and attempt).
SWEEP_FIELDS = ("sweep", "namespace")
IDENTITY_FIELDS = (
    "trial_id", "attempt", "lane", "model", "model_index", "method", "rank", "alpha",
    "dss_alpha", "seed",
)
