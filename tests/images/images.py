"""Building and running Ladder's images in tests (shared by tests/images and tests/k8s).

Images are built by ``docker/build.sh`` (docker when its daemon answers, else podman; a local
Debian base when no registry is reachable, cached under ``$HOME/.cache/ladder-images``). A
test runs them with the engine and the containers.conf that script reports (``build.sh
engine``), so both use the same runtime settings.

Environment:
    LADDER_SKIP_IMAGES=1  skip the tests that build or run images. Without it they skip only
                          where no container engine can run (no docker daemon, podman absent
                          or unusable), and a failed build fails them.
    LADDER_IMAGE_BUILD_TIMEOUT  seconds for one build (default 1500: a cold controller build
                          makes the Debian base first, 2.5-4.5 minutes, then ~3 minutes).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "docker" / "build.sh"
BUILD_TIMEOUT_S = int(os.environ.get("LADDER_IMAGE_BUILD_TIMEOUT", "1500"))
# Tags that the tests build, so they never overwrite an image a user built at the release tag.
TEST_REPO = "localhost/ladder-test"


@dataclass(frozen=True)
class Engine:
    """The container engine docker/build.sh picked, and its environment."""

    name: str
    env: dict[str, str]

    def run(
        self, *args: str, timeout: float = 120, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.name, *args], capture_output=True, text=True, env=self.env,
            timeout=timeout, check=check,
        )  # fmt: skip


_state: dict[str, object] = {}


def engine() -> Engine:
    """The engine, or skip the test with the reason no engine can run here."""
    if os.environ.get("LADDER_SKIP_IMAGES") == "1":
        pytest.skip("LADDER_SKIP_IMAGES=1: skipping tests that build or run images")
    if "engine" in _state:
        return _state["engine"]  # type: ignore[return-value]
    if "skip" in _state:
        pytest.skip(str(_state["skip"]))
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "engine"], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        _state["skip"] = f"no usable container engine: {proc.stderr.strip().splitlines()[-1]}"
        pytest.skip(str(_state["skip"]))
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    env = dict(os.environ)
    if values.get("CONTAINERS_CONF"):
        env["CONTAINERS_CONF"] = values["CONTAINERS_CONF"]
    found = Engine(values["ENGINE"], env)
    # Usable: the engine answers (a podman that cannot set up its storage or runtime fails here).
    info = found.run("info", timeout=60)
    if info.returncode != 0:
        reason = info.stderr.strip()[-300:]
        _state["skip"] = f"{found.name} is installed but unusable here: {reason}"
        pytest.skip(str(_state["skip"]))
    _state["engine"] = found
    return found


def build_image(target: str, timeout: float = BUILD_TIMEOUT_S) -> str:
    """Build (or rebuild from the layer cache) one image with docker/build.sh; its name."""
    key = f"image:{target}"
    if key in _state:
        return _state[key]  # type: ignore[return-value]
    eng = engine()
    env = {**eng.env, "LADDER_IMAGE_ENGINE": eng.name, "LADDER_IMAGE_REPO": TEST_REPO}
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT), target], capture_output=True, text=True, env=env,
            timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"docker/build.sh {target} timed out after {timeout:.0f}s", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(
            f"docker/build.sh {target} failed (exit {proc.returncode}); set "
            f"LADDER_SKIP_IMAGES=1 to skip.\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    image = proc.stdout.strip().splitlines()[-1]
    _state[key] = image
    return image


def image_size_bytes(eng: Engine, image: str) -> int:
    proc = eng.run("image", "inspect", "--format", "{{.Size}}", image, check=True)
    return int(proc.stdout.strip())
