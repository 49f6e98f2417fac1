"""Running the real helm binary on helm/ladder (shared by tests/helm and tests/k8s).

helm is built from its Go module by ``tests/helm/build-helm.sh`` (cached in
``$HOME/.cache/ladder-helm/<version>/helm``; the first build takes a few minutes on 2 cores,
later ones are a stamp check).

Environment:
    LADDER_SKIP_HELM=1  skip the tests that need helm. Without it a failed build fails them.
    LADDER_HELM=PATH    use this helm binary instead of building one.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
CHART = REPO_ROOT / "helm" / "ladder"
BUILD_SCRIPT = HERE / "build-helm.sh"
BUILD_TIMEOUT_S = int(os.environ.get("LADDER_HELM_BUILD_TIMEOUT", "1800"))
RELEASE = "ladder"
NAMESPACE = "ladder"
# What `helm template` assumes the cluster serves when the Prometheus operator is installed.
MONITORING_APIS = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)

_build: dict[str, Any] = {}


class HelmError(RuntimeError):
    """helm exited non-zero; the message is its stderr."""


def helm_binary() -> Path:
    """The helm binary: built (or found cached) once per process; skips or fails the test."""
    if os.environ.get("LADDER_SKIP_HELM") == "1":
        pytest.skip("LADDER_SKIP_HELM=1: skipping tests that need helm")
    if "bin" in _build:
        return _build["bin"]
    if "error" not in _build:
        try:
            proc = subprocess.run(
                ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                timeout=BUILD_TIMEOUT_S,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            _build["error"] = f"tests/helm/build-helm.sh timed out after {exc.timeout}s"
        else:
            if proc.returncode == 0:
                _build["bin"] = Path(proc.stdout.strip().splitlines()[-1])
                return _build["bin"]
            _build["error"] = (
                f"tests/helm/build-helm.sh failed (exit {proc.returncode}); set "
                f"LADDER_SKIP_HELM=1 to skip the helm tests.\n{proc.stderr[-6000:]}"
            )
    pytest.fail(_build["error"], pytrace=False)


def run_helm(
    *args: str, check: bool = True, timeout: float = 120, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run helm with its caches and config in a scratch folder (never the user's)."""
    home = Path(tempfile.gettempdir()) / "ladder-helm-home"
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    proc = subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise HelmError(proc.stderr.strip() or proc.stdout.strip())
    return proc


def _value_args(values: Mapping[str, Any] | None, sets: Sequence[str], tmp: Path) -> list[str]:
    args: list[str] = []
    if values:
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(dict(values), sort_keys=False), encoding="utf-8")
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    return args


def template_text(
    values: Mapping[str, Any] | None = None,
    *,
    sets: Sequence[str] = (),
    api_versions: Iterable[str] = (),
    namespace: str = NAMESPACE,
    release: str = RELEASE,
    include_crds: bool = False,
) -> str:
    """`helm template` of the chart (raises HelmError with helm's message on failure)."""
    with tempfile.TemporaryDirectory(prefix="ladder-helm-") as tmp:
        args = ["template", release, str(CHART), "--namespace", namespace]
        if include_crds:
            args.append("--include-crds")
        for api in api_versions:
            args += ["--api-versions", api]
        args += _value_args(values, sets, Path(tmp))
        return run_helm(*args).stdout


def render(
    values: Mapping[str, Any] | None = None,
    *,
    sets: Sequence[str] = (),
    api_versions: Iterable[str] = (),
    namespace: str = NAMESPACE,
    release: str = RELEASE,
) -> list[dict[str, Any]]:
    """The rendered objects, parsed (empty documents dropped)."""
    text = template_text(values, sets=sets, api_versions=api_versions, namespace=namespace,
                         release=release)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_error(values: Mapping[str, Any] | None = None, *, sets: Sequence[str] = ()) -> str:
    """helm's message for values it must refuse; fails the test when it renders them."""
    try:
        template_text(values, sets=sets)
    except HelmError as error:
        return str(error)
    pytest.fail(f"helm rendered values it should refuse: {values} {list(sets)}", pytrace=False)


def lint(values: Mapping[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="ladder-helm-") as tmp:
        args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
        args += _value_args(values, (), Path(tmp))
        return run_helm(*args, check=False)


def by_kind(objects: Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [dict(o) for o in objects if o.get("kind") == kind]


def one(objects: Iterable[Mapping[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
