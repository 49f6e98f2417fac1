"""The kubernetes-client adapter: the only module of the controller that talks to the API.

Everything comes and goes as plain dicts in the API's own (camelCase) shape, so the pure
builders in `manifests` and the reconciler never see client model classes. Reads go to the
API server directly (no informer cache): a reconcile always sees what it just wrote, which
is what keeps creates idempotent across restarts.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from orchestrator.crd import GROUP, PLURAL, VERSION
from orchestrator.operator.manifests import (
    LABEL_RAY_CLUSTER,
    RAY_GROUP,
    RAY_VERSION,
    RAYJOB_PLURAL,
    sweep_selector,
)

log = logging.getLogger(__name__)

COMPONENT = "ladder-controller"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER = "ladder"
ACTIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"


class KubeError(RuntimeError):
    """An API call failed; `status` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        return self.status == 0 or self.status == 429 or self.status >= 500


class Cluster(Protocol):
    """What the reconciler needs from Kubernetes (`Kube` here; a fake in unit tests)."""

    def get_sweep(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_rayjobs(self, namespace: str, sweep: str) -> list[dict[str, Any]]: ...
    def create_rayjob(self, manifest: Mapping[str, Any]) -> bool: ...
    def delete_rayjob(self, namespace: str, name: str) -> bool: ...
    def cluster_pods(self, namespace: str, cluster: str) -> list[dict[str, Any]]: ...
    def sweep_pods(self, namespace: str, sweep: str) -> list[dict[str, Any]]: ...
    def list_nodes(self) -> list[dict[str, Any]]: ...
    def active_pods(self) -> list[dict[str, Any]]: ...
    def cluster_events(self, namespace: str, cluster: str) -> list[dict[str, Any]]: ...
    def annotate_rayjob(
        self, namespace: str, name: str, annotations: Mapping[str, str]
    ) -> None: ...
    def patch_sweep_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...
    def event(
        self, obj: Mapping[str, Any], kind: str, reason: str, message: str
    ) -> None: ...


def load_config(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """An ApiClient: in-cluster when running in a pod, else the kubeconfig ($KUBECONFIG).

    A kubeconfig that is missing, unreadable or invalid raises KubeError naming the file and
    the problem (one line; never the file's contents, which hold credentials)."""
    import yaml
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=configuration)
        except Exception as error:
            raise KubeError(f"in-cluster configuration: {_one_line(error)}") from None
        return client.ApiClient(configuration)
    source = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    except yaml.MarkedYAMLError as error:  # its message quotes the file: name the line only
        line = f" at line {error.problem_mark.line + 1}" if error.problem_mark else ""
        raise KubeError(f"kubeconfig {source}: not valid YAML: {error.problem}{line}") from None
    except (ConfigException, OSError) as error:
        raise KubeError(f"kubeconfig {source}: {_one_line(error)}") from None
    except Exception as error:  # a YAML document of another shape: the client trips on it
        raise KubeError(f"kubeconfig {source}: not a kubeconfig (a mapping of clusters, "
                        f"users and contexts): {type(error).__name__}") from None
    return client.ApiClient(configuration)


def _one_line(error: BaseException) -> str:
    """An exception as one line: its message (whitespace folded), else its type."""
    return " ".join(str(error).split()) or type(error).__name__


def _transport_reason(error: BaseException) -> str:
    """Why a request never got an answer, as a person says it ('connection refused'), from
    urllib3's nested MaxRetryError / NewConnectionError / OSError chain."""
    seen: BaseException | None = error
    while seen is not None:
        reason = getattr(seen, "reason", None)
        if not isinstance(reason, BaseException):
            break
        seen = reason
    text = _one_line(seen or error)
    # "HTTPSConnection(host=..., port=...): Failed to establish a new connection: [Errno 111]
    # Connection refused" -> "Connection refused"
    return text.rsplit("] ", 1)[-1] if "[Errno" in text else text


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the kubeconfig's context (in a pod: its own), else `default`."""
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    if kubeconfig is None and os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip() or "default"
    from kubernetes import config

    try:
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except Exception:  # no kubeconfig at all: the API call will say so
        return "default"
    if context is not None:
        active = next((c for c in contexts if c["name"] == context), active)
    return ((active or {}).get("context") or {}).get("namespace") or "default"


def _wrap(error: Exception, what: str) -> KubeError:
    status = getattr(error, "status", None) or 0
    reason = getattr(error, "reason", None) or type(error).__name__
    body = getattr(error, "body", None)
    detail = ""
    if body:
        try:
            import json

            detail = json.loads(body).get("message", "")
        except (ValueError, AttributeError, TypeError):
            detail = str(body)[:500]
    return KubeError(f"{what}: {status or ''} {reason} {detail}".strip(), int(status))


class Kube:
    """`Cluster` over the official kubernetes client."""

    def __init__(self, api_client: Any | None = None) -> None:
        from kubernetes import client

        self.api_client = api_client if api_client is not None else load_config()
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()

    def _call(self, what: str, fn: Any, *args: Any, missing_ok: bool = False,
              conflict_ok: bool = False, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError as TransportError

        try:
            return fn(*args, **kwargs)
        except ApiException as error:
            if missing_ok and error.status == 404:
                return None
            if conflict_ok and error.status == 409:
                return None
            raise _wrap(error, what) from None
        # Connection refused or reset, TLS, timeouts (urllib3's MaxRetryError and friends are
        # no OSError): the API server is away, e.g. restarting. Transient (status 0).
        except (OSError, ValueError, TransportError) as error:
            server = self.api_client.configuration.host
            raise KubeError(f"{what}: cannot reach the API server {server}: "
                            f"{_transport_reason(error)}", 0) from None

    def check_reachable(self) -> None:
        """One cheap request (GET /version): KubeError naming the server and the reason when
        it cannot be reached or refuses these credentials."""
        from kubernetes import client

        self._call("reach the Kubernetes API", client.VersionApi(self.api_client).get_code)

    def may(self, verb: str, resource: str, group: str = "") -> bool | None:
        """Whether these credentials may `verb` `resource` cluster-wide (a
        SelfSubjectAccessReview, which every authenticated user may create); None when the
        server does not say."""
        from kubernetes import client

        review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(verb=verb, resource=resource,
                                                            group=group)))
        api = client.AuthorizationV1Api(self.api_client)
        try:
            answer = self._call(f"ask whether it may {verb} {resource}",
                                api.create_self_subject_access_review, review)
        except KubeError:
            return None
        return bool(answer.status.allowed) if answer and answer.status else None

    # --- sweeps ---------------------------------------------------------------------------
    def get_sweep(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._call(
            f"get sweep {namespace}/{name}", self.custom.get_namespaced_custom_object,
            GROUP, VERSION, namespace, PLURAL, name, missing_ok=True,
        )

    def patch_sweep_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._call(
            f"patch status of sweep {namespace}/{name}",
            self.custom.patch_namespaced_custom_object_status,
            GROUP, VERSION, namespace, PLURAL, name, {"status": dict(status)},
            _content_type=MERGE_PATCH, missing_ok=True,
        )

    def apply_sweep(self, manifest: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply of a Sweep manifest (field manager `ladder`)."""
        meta = manifest["metadata"]
        applied = self._call(
            f"apply sweep {meta.get('namespace')}/{meta['name']}",
            self.custom.patch_namespaced_custom_object,
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], dict(manifest),
            field_manager=FIELD_MANAGER, force=force, _content_type=APPLY_PATCH,
        )
        # The client decodes only 200 responses; an apply that creates answers 201.
        return applied or self.get_sweep(meta["namespace"], meta["name"]) or {}

    # --- RayJobs --------------------------------------------------------------------------
    def list_rayjobs(self, namespace: str, sweep: str) -> list[dict[str, Any]]:
        result = self._call(
            f"list RayJobs of sweep {namespace}/{sweep}",
            self.custom.list_namespaced_custom_object,
            RAY_GROUP, RAY_VERSION, namespace, RAYJOB_PLURAL,
            label_selector=sweep_selector(sweep),
        )
        return list((result or {}).get("items") or [])

    def create_rayjob(self, manifest: Mapping[str, Any]) -> bool:
        """Create it; False when it already exists (an earlier pass created it)."""
        meta = manifest["metadata"]
        created = self._call(
            f"create RayJob {meta.get('namespace')}/{meta['name']}",
            self.custom.create_namespaced_custom_object,
            RAY_GROUP, RAY_VERSION, meta["namespace"], RAYJOB_PLURAL, dict(manifest),
            field_manager=FIELD_MANAGER, conflict_ok=True,
        )
        return created is not None

    def delete_rayjob(self, namespace: str, name: str) -> bool:
        """Delete it (its RayCluster goes with it); False when it was already gone."""
        deleted = self._call(
            f"delete RayJob {namespace}/{name}",
            self.custom.delete_namespaced_custom_object,
            RAY_GROUP, RAY_VERSION, namespace, RAYJOB_PLURAL, name,
            propagation_policy="Background", missing_ok=True,
        )
        return deleted is not None

    def annotate_rayjob(
        self, namespace: str, name: str, annotations: Mapping[str, str]
    ) -> None:
        self._call(
            f"annotate RayJob {namespace}/{name}",
            self.custom.patch_namespaced_custom_object,
            RAY_GROUP, RAY_VERSION, namespace, RAYJOB_PLURAL, name,
            {"metadata": {"annotations": dict(annotations)}},
            _content_type=MERGE_PATCH, missing_ok=True,
        )

    # --- pods -----------------------------------------------------------------------------
    def cluster_pods(self, namespace: str, cluster: str) -> list[dict[str, Any]]:
        """The pods of a RayCluster (KubeRay labels them `ray.io/cluster=<name>`)."""
        result = self._call(
            f"list pods of RayCluster {namespace}/{cluster}",
            self.core.list_namespaced_pod, namespace,
            label_selector=f"{LABEL_RAY_CLUSTER}={cluster}",
        )
        return self._items(result)

    def sweep_pods(self, namespace: str, sweep: str) -> list[dict[str, Any]]:
        """The pods of every RayCluster of a sweep (KubeRay copies the template's labels):
        live attempts, and finished ones whose cluster KubeRay keeps for its TTL."""
        result = self._call(
            f"list pods of sweep {namespace}/{sweep}",
            self.core.list_namespaced_pod, namespace, label_selector=sweep_selector(sweep),
        )
        return self._items(result)

    def list_nodes(self) -> list[dict[str, Any]]:
        """Every Node (cluster-scoped: the chart's ClusterRole grants it)."""
        return self._items(self._call("list nodes", self.core.list_node))

    def active_pods(self) -> list[dict[str, Any]]:
        """Every pod of every namespace that is not terminal (what holds node resources)."""
        result = self._call(
            "list pods of all namespaces", self.core.list_pod_for_all_namespaces,
            field_selector=ACTIVE_PODS,
        )
        return self._items(result)

    def _items(self, result: Any) -> list[dict[str, Any]]:
        """A list call's items as plain dicts; none when the call found nothing (None)."""
        if result is None:
            return []
        return [self.api_client.sanitize_for_serialization(item) for item in result.items]

    def cluster_events(self, namespace: str, cluster: str) -> list[dict[str, Any]]:
        """KubeRay's Events on a RayCluster (`DeletedWorkerPod ... OOMKilled`, ...)."""
        result = self._call(
            f"list events of RayCluster {namespace}/{cluster}",
            self.core.list_namespaced_event, namespace,
            field_selector=f"involvedObject.kind=RayCluster,involvedObject.name={cluster}",
        )
        return self._items(result)

    # --- events ---------------------------------------------------------------------------
    def event(self, obj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """A core/v1 Event about `obj` (`kubectl describe` shows it); never raises."""
        meta = obj.get("metadata") or {}
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'ladder')}.",
                         "namespace": meta.get("namespace")},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": f"ladder.dev/{COMPONENT}",
            "reportingInstance": self.instance[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta.get("namespace"), body)
        except Exception as error:  # an event is never worth failing a reconcile
            log.warning("could not post event %s on %s: %s", reason, meta.get("name"), error)
