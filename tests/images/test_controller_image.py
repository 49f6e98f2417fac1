"""Smoke tests of the controller image (docker/controller.Dockerfile), built by docker/build.sh
and run with docker or podman exactly as the chart runs it: UID 10001, a read-only root
filesystem with /tmp writable, and no network (``--network none``: nothing here needs one).

Measured on two loaded cores: the first run builds the image cold (the local Debian base
with mmdebstrap, 2.5-4.5 min, then the image, ~3 min); after a source change ~40 s (the
dependencies' layer is kept); unchanged, a layer-cache hit (~15 s). The tests then take
~20 s. Skipped, with the reason, only where no container engine can run (see
tests/images/images.py); LADDER_SKIP_IMAGES=1 skips them on purpose.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.images.images import REPO_ROOT, Engine, build_image, engine, image_size_bytes

pytestmark = pytest.mark.images

# The Dockerfile's USER and the chart's runAsUser.
UID = 10001
# Measured: 427 MB on the python:3.11 slim base, 473 MB on the local Debian base.
MAX_SIZE_BYTES = 600 * 1024**2
EXAMPLE = REPO_ROOT / "k8s" / "examples" / "paper-grid.yaml"


@pytest.fixture(scope="module")
def image() -> tuple[Engine, str]:
    return engine(), build_image("controller")


def _run(
    image: tuple[Engine, str], *args: str, entrypoint: str = "ladder", mounts: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    eng, name = image
    volumes = [f"--volume={m}" for m in mounts]
    return eng.run(
        "run", "--rm", "--network=none", "--read-only", "--tmpfs=/tmp", *volumes,
        f"--entrypoint={entrypoint}", name, *args, timeout=120,
    )  # fmt: skip


def test_cli_help(image: tuple[Engine, str]) -> None:
    proc = _run(image, "--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("controller", "validate", "submit"):
        assert command in proc.stdout
    proc = _run(image, "controller", "--help")
    assert proc.returncode == 0 and "Usage" in proc.stdout, proc.stderr


def test_validate_example_mounted_read_only(image: tuple[Engine, str], tmp_path) -> None:
    proc = _run(image, "validate", "/sweeps/paper-grid.yaml",
                mounts=(f"{EXAMPLE}:/sweeps/paper-grid.yaml:ro",))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Sweep paper-grid is valid" in proc.stdout
    # An invalid Sweep: exit 1, one line per field, no traceback.
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: ladder.dev/v1alpha1\nkind: Sweep\nmetadata: {name: bad}\n"
                   "spec: {grid: {rank: [0]}}\n")  # fmt: skip
    bad.chmod(0o644)
    proc = _run(image, "validate", "/sweeps/bad.yaml", mounts=(f"{bad}:/sweeps/bad.yaml:ro",))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "spec.ladder" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_runs_as_non_root_uid(image: tuple[Engine, str]) -> None:
    proc = _run(image, "-c", "import os; print(os.getuid(), os.getgid())", entrypoint="python")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(UID), str(UID)]


def test_read_only_root_filesystem(image: tuple[Engine, str]) -> None:
    script = (
        "import pathlib\n"
        "pathlib.Path('/tmp/ok').write_text('x')\n"
        "try:\n"
        "    pathlib.Path('/opt/ladder/x').write_text('x')\n"
        "except OSError as e:\n"
        "    print('refused', e.errno)\n"
        "else:\n"
        "    print('written')\n"
    )
    proc = _run(image, "-c", script, entrypoint="python")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "refused 30", proc.stdout  # EROFS


def test_no_torch_or_ray_in_the_controller_image(image: tuple[Engine, str]) -> None:
    script = (
        "import importlib.util as u\n"
        "print([m for m in ('torch', 'ray', 'transformers', 'bitsandbytes') if u.find_spec(m)])\n"
        "import kopf, kubernetes, orchestrator.operator.reconcile\n"
        "print('controller imports ok')\n"
    )
    proc = _run(image, "-c", script, entrypoint="python")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[]", "controller imports ok"]


def test_image_size(image: tuple[Engine, str]) -> None:
    eng, name = image
    size = image_size_bytes(eng, name)
    assert 50 * 1024**2 < size < MAX_SIZE_BYTES, f"{name} is {size / 1024**2:.0f} MiB"
