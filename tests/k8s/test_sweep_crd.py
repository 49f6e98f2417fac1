"""The generated Sweep CRD on a real kube-apiserver: it installs, valid Sweeps are stored with
their defaults, invalid ones are refused with messages that name the field, and the RayJobs
the controller builds are accepted by KubeRay v1.7's RayJob CRD."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from orchestrator.core.grid import attempt_spec, expand
from orchestrator.core.spec import load_sweep_text
from orchestrator.operator.manifests import (
    SecretRef,
    execution_config,
    rayjob_manifest,
    trial_output_dir,
)

if TYPE_CHECKING:
    from tests.k8s.conftest import ControlPlane

pytestmark = pytest.mark.k8s

REPO_ROOT = Path(__file__).resolve().parents[2]
VALID = """
apiVersion: ladder.dev/v1alpha1
kind: Sweep
metadata: {name: NAME}
spec:
  ladder: [ladder/t5-tiny-s, ladder/t5-tiny-m]
  methods: [full, lora]
  adapters: [{rank: 8, alphas: [16, 32]}]
  resources: {workers: 1, gpusPerWorker: 0}
"""


@pytest.fixture(scope="module")
def sweep_crd(control_plane: ControlPlane) -> list[str]:
    return control_plane.install_crds(REPO_ROOT / "k8s" / "crd")


def apply(cp: ControlPlane, namespace: str, text: str) -> tuple[int, str]:
    proc = cp.kubectl("-n", namespace, "apply", "-f", "-", input=text)
    return proc.returncode, proc.stdout + proc.stderr


def test_crd_installs(control_plane: ControlPlane, sweep_crd: list[str]) -> None:
    assert sweep_crd == ["sweeps.ladder.dev"]
    names = control_plane.kubectl_ok("api-resources", "--api-group=ladder.dev", "-o", "wide")
    assert "sw" in names and "Sweep" in names


def test_valid_sweep_is_stored_with_defaults(
    control_plane: ControlPlane, sweep_crd: list[str], k8s_namespace: str
) -> None:
    code, out = apply(control_plane, k8s_namespace, VALID.replace("NAME", "ok"))
    assert code == 0, out
    stored = json.loads(control_plane.kubectl_ok("-n", k8s_namespace, "get", "sw", "ok",
                                                 "-o", "json"))
    spec = stored["spec"]
    assert spec["parallelism"] == 1 and spec["suspend"] is False
    assert spec["escalation"]["onOOM"] == "stop-lane"
    assert spec["training"]["epochs"] == 100
    # The stored object parses with the same model the CRD was generated from.
    sweep = load_sweep_text(yaml.safe_dump({k: stored[k] for k in
                                            ("apiVersion", "kind", "metadata", "spec")}))
    assert sweep.spec.lane_count == 3
    table = control_plane.kubectl_ok("-n", k8s_namespace, "get", "sw")
    assert table.split()[:8] == ["NAME", "PHASE", "DONE", "TOTAL", "RUNNING", "OOM",
                                 "BEST-LOSS", "AGE"]


INVALID = [
    ("missing-ladder", "  ladder: [ladder/t5-tiny-s, ladder/t5-tiny-m]\n", "", "spec.ladder"),
    ("twice", "[ladder/t5-tiny-s, ladder/t5-tiny-m]", "[ladder/t5-tiny-s, ladder/t5-tiny-s]",
     "ladder: a model appears twice"),
    ("parallelism", "  resources:", "  parallelism: 0\n  resources:", "spec.parallelism"),
    ("fp16", "  resources:", "  training: {precision: fp16}\n  resources:",
     "spec.training.precision"),
    ("method", "methods: [full, lora]", "methods: [full, dora]", "spec.methods"),
    ("alphas", "alphas: [16, 32]", "alphas: [16, 16]", "alphas must not repeat"),
    ("unknown-field", "  resources:", "  paralelism: 2\n  resources:", "paralelism"),
    ("budget", "  resources:", "  escalation: {memoryBudget: lots}\n  resources:",
     "spec.escalation.memoryBudget"),
    ("overrides", "gpusPerWorker: 0}", "gpusPerWorker: 0, overrides: {other/model: {workers: 2}}}",
     "resources.overrides"),
]


@pytest.mark.parametrize(("case", "old", "new", "message"), INVALID,
                         ids=[case[0] for case in INVALID])
def test_invalid_sweeps_are_refused_naming_the_field(
    control_plane: ControlPlane, sweep_crd: list[str], k8s_namespace: str,
    case: str, old: str, new: str, message: str,
) -> None:
    text = VALID.replace("NAME", case)
    assert old in text
    code, out = apply(control_plane, k8s_namespace, text.replace(old, new, 1))
    assert code != 0, out
    assert message in out, out


def test_long_names_are_refused(
    control_plane: ControlPlane, sweep_crd: list[str], k8s_namespace: str
) -> None:
    code, out = apply(control_plane, k8s_namespace, VALID.replace("NAME", "n" * 41))
    assert code != 0 and "metadata.name: at most 40 characters" in out, out


# The grid as written in full, and with its optional fields (adapters, axes) left out.
FULL_ONLY = """
apiVersion: ladder.dev/v1alpha1
kind: Sweep
metadata: {name: NAME}
spec:
  ladder: [ladder/t5-tiny-s, ladder/t5-tiny-m]
  methods: [full]
  resources: {workers: 1, gpusPerWorker: 0}
"""


@pytest.mark.parametrize("template", [pytest.param(VALID, id="every-grid-field"),
                                      pytest.param(FULL_ONLY, id="optional-fields-left-out")])
def test_grid_is_immutable(
    control_plane: ControlPlane, sweep_crd: list[str], k8s_namespace: str, template: str
) -> None:
    name = "fixed" if template is VALID else "fixed-partial"
    text = template.replace("NAME", name)
    assert apply(control_plane, k8s_namespace, text)[0] == 0
    code, out = apply(control_plane, k8s_namespace,
                      text.replace("ladder/t5-tiny-m]", "ladder/t5-tiny-l]"))
    assert code != 0 and "immutable" in out, out
    # Adding a grid field that was left out changes the grid too.
    code, out = apply(control_plane, k8s_namespace,
                      text.replace("  resources:", "  axes: {seed: [0, 1]}\n  resources:"))
    assert code != 0 and "immutable" in out, out
    # Fields outside the grid may change, and the status can be written.
    code, out = apply(control_plane, k8s_namespace,
                      text.replace("  resources:", "  parallelism: 3\n  resources:"))
    assert code == 0, out
    patched = control_plane.kubectl(
        "-n", k8s_namespace, "patch", "sweep", name, "--subresource=status", "--type=merge",
        "-p", '{"status": {"phase": "Running"}}')
    assert patched.returncode == 0, patched.stderr


@pytest.mark.parametrize("execution", [
    {},
    {"clusterSelector": {"ray.io/cluster": "standing"}},
    {"head": {"cpu": 2, "memory": "8Gi"}, "worker": {"memory": "60Gi"},
     "volumes": [{"name": "cache", "emptyDir": {}}],
     "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
])
def test_rayjob_manifests_are_accepted_by_kuberay_crd(
    control_plane: ControlPlane, sweep_crd: list[str], kuberay_crds: list[str],
    k8s_namespace: str, execution: dict,
) -> None:
    sweep = load_sweep_text(VALID.replace("NAME", "rj"))
    spec = sweep.spec.model_copy(update={
        "execution": execution,
        "resources": sweep.spec.resources.model_copy(update={"gpus_per_worker": 1}),
    })
    sweep = sweep.model_copy(update={"namespace": k8s_namespace, "spec": spec})
    trial = expand(sweep).all_trials()[0]
    config = execution_config(sweep)
    payload = attempt_spec(sweep, trial, attempt=1,
                         output_dir=trial_output_dir(config, sweep.name, trial.trial_id, 1))
    manifest = rayjob_manifest(sweep, trial, payload, owner_uid="0000-1111",
                               db_url_secret=SecretRef(name="ladder-db"))
    # Strict field validation: an unknown field would be an error, not silently pruned.
    proc = control_plane.kubectl("create", "--dry-run=server", "--validate=strict", "-o",
                                 "json", "-f", "-", input=json.dumps(manifest))
    assert proc.returncode == 0, proc.stderr
    stored = json.loads(proc.stdout)
    assert stored["spec"]["entrypoint"] == manifest["spec"]["entrypoint"]
    if "rayClusterSpec" in manifest["spec"]:
        worker = stored["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
        limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"


def run_ladder(cp: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig)}
    return subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", *args],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120,
    )


def test_ladder_submit_applies_server_side(
    control_plane: ControlPlane, sweep_crd: list[str], k8s_namespace: str, tmp_path: Path
) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(VALID.replace("NAME", "submitted"))
    for _ in range(2):  # applying the same file again changes nothing
        proc = run_ladder(control_plane, "submit", str(path), "-n", k8s_namespace)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "sweep.ladder.dev/submitted applied" in proc.stdout
    stored = json.loads(control_plane.kubectl_ok("-n", k8s_namespace, "get", "sw", "submitted",
                                                 "-o", "json", "--show-managed-fields"))
    assert stored["metadata"]["generation"] == 1
    managers = {m["manager"]: m["operation"] for m in stored["metadata"]["managedFields"]}
    assert managers == {"ladder": "Apply"}
    # A change is applied as a new generation.
    path.write_text(VALID.replace("NAME", "submitted").replace(
        "  resources:", "  parallelism: 2\n  resources:"))
    assert run_ladder(control_plane, "submit", str(path), "-n", k8s_namespace).returncode == 0
    stored = json.loads(control_plane.kubectl_ok("-n", k8s_namespace, "get", "sw", "submitted",
                                                 "-o", "json"))
    assert stored["metadata"]["generation"] == 2 and stored["spec"]["parallelism"] == 2


def test_ladder_submit_refuses_invalid_files_before_the_cluster(
    control_plane: ControlPlane, sweep_crd: list[str], k8s_namespace: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(VALID.replace("NAME", "bad").replace("  resources:",
                                                         "  parallelism: 0\n  resources:"))
    proc = run_ladder(control_plane, "submit", str(path), "-n", k8s_namespace)
    assert proc.returncode == 1
    assert "spec.parallelism" in proc.stderr
    missing = control_plane.kubectl("-n", k8s_namespace, "get", "sw", "bad")
    assert missing.returncode != 0
