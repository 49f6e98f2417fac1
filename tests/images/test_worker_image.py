"""The worker image (docker/worker.Dockerfile), built for real: an opt-in job, because it is
about 9 GB and takes minutes (torch and its CUDA wheels come from PyPI).

    LADDER_BUILD_WORKER_IMAGE=1 python -m pytest tests/images/test_worker_image.py

It checks the size, that the trial stack imports as the image's user without a network, and
the CUDA line the image pins: torch's release and `torch.version.cuda`, no CUDA 13 wheel
beside it, bitsandbytes' library for that CUDA (docker/check-worker-image.py, the same check
the build runs). Where no registry serves the Ray image, docker/build.sh builds on its
stand-in (docker/ray-base.Dockerfile: the same Ray, no CUDA toolkit in the base).
"""

from __future__ import annotations

import os
import re

import pytest

from tests.images.images import REPO_ROOT, build_image, engine, image_size_bytes

pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(
        os.environ.get("LADDER_BUILD_WORKER_IMAGE") != "1",
        reason="opt-in: set LADDER_BUILD_WORKER_IMAGE=1 to build the ~9 GB worker image",
    ),
]

DOCKERFILE = (REPO_ROOT / "docker" / "worker.Dockerfile").read_text()
TORCH_VERSION = re.search(r"^ARG TORCH_VERSION=(\S+)$", DOCKERFILE, re.M).group(1)  # type: ignore[union-attr]
TORCH_CUDA = re.search(r"^ARG TORCH_CUDA=(\S+)$", DOCKERFILE, re.M).group(1)  # type: ignore[union-attr]
# Measured 8.6 GB on the stand-in Ray base (CUDA 12.8 nvidia-* wheels 4.4 GB, torch 1.8 GB,
# triton 0.6 GB, Ray 0.2 GB); a CPU-only torch would be far smaller, two CUDA lines larger.
MIN_SIZE, MAX_SIZE = 4 * 1000**3, 10 * 1000**3


@pytest.mark.timeout(3600)
def test_worker_image_builds_with_its_cuda_line_and_imports() -> None:
    eng = engine()
    image = build_image("worker", timeout=3000)
    size = image_size_bytes(eng, image)
    print(f"\n{image}: {size / 1000**3:.2f} GB")
    assert MIN_SIZE < size < MAX_SIZE, f"{image} is {size / 1000**3:.2f} GB"

    check = REPO_ROOT / "docker" / "check-worker-image.py"
    proc = eng.run(
        "run", "--rm", "--network=none", f"--volume={check}:/opt/check.py:ro",
        "--entrypoint=python", image, "/opt/check.py",
        "--torch", TORCH_VERSION, "--cuda", TORCH_CUDA, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"(CUDA {TORCH_CUDA})" in proc.stdout and ": ok" in proc.stdout

    script = (
        "import os, ray, torch, worker\n"
        "print(os.getuid(), ray.__version__, torch.cuda.is_available())\n"
    )
    proc = eng.run("run", "--rm", "--network=none", "--entrypoint=python", image, "-c", script,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr
    uid, ray_version, cuda_available = proc.stdout.split()
    assert uid == "1000"
    assert f"rayproject/ray:{ray_version}-" in DOCKERFILE
    assert cuda_available == "False"  # no GPU here; the import must not need one
    proc = eng.run("run", "--rm", "--network=none", "--entrypoint=python", image,
                   "-m", "worker", "--help", timeout=600)
    assert proc.returncode == 0 and "run" in proc.stdout, proc.stderr
