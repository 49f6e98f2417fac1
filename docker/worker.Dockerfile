# syntax=docker/dockerfile:1
# The Ladder worker image: what every trial's Ray head and worker pods run. KubeRay starts
# Ray in it (`ray start`); the RayJob's entrypoint is the worker contract,
# `python -m worker run --trial FILE` (docs/architecture.md, "The worker contract").
#   docker/build.sh worker     (docker, or podman; see that script)
#   docker build -f docker/worker.Dockerfile -t ghcr.io/ladder-dev/ladder-worker:0.1.0 .
# Keep the Ray version equal to the chart's execution.rayVersion.
#
# The CUDA line, for a stated driver floor (docs/install.md, "GPU driver and CUDA"): torch is
# pinned to a release whose PyPI wheel is built for CUDA 12.8 (its nvidia-*-cu12 wheels bring
# the CUDA libraries), and the Ray base is the same CUDA line's image. CUDA 12.x runs on
# NVIDIA drivers R525 and newer (minor-version compatibility; R570+ has 12.8 natively);
# torch >= 2.11 on PyPI is CUDA 13.x, which needs R580+. Fully qualified names: podman
# refuses short ones. docker/build.sh passes a local stand-in base (ray-base.Dockerfile)
# instead when no registry can serve this one.

ARG RAY_IMAGE=docker.io/rayproject/ray:2.60.0-py311-cu128

FROM ${RAY_IMAGE}
# The torch release and the CUDA version its wheel targets; the build fails if they differ.
ARG TORCH_VERSION=2.10.0
ARG TORCH_CUDA=12.8
LABEL org.opencontainers.image.title="ladder-worker" \
      org.opencontainers.image.description="Ladder trial image: Ray Train, PyTorch (CUDA 12.8), transformers, peft, bitsandbytes" \
      org.opencontainers.image.source="https://github.com/ladder-dev/ladder" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.ladder.torch-version="${TORCH_VERSION}" \
      dev.ladder.torch-cuda="${TORCH_CUDA}"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
# The base image's user: ray (UID 1000, group users), whose home it owns. The sources go in
# a folder created by COPY --chown, so pip can build in it as that user.
USER 1000:100
WORKDIR /home/ray
COPY --chown=1000:100 pyproject.toml README.md ladder/
COPY --chown=1000:100 orchestrator ladder/orchestrator
COPY --chown=1000:100 worker ladder/worker
COPY --chown=1000:100 docker/check-worker-image.py ladder/
# The worker extra (torch, transformers, peft, bitsandbytes, accelerate, ray[train]) with
# torch pinned; Ray itself is already there at the pinned version. The sources are removed
# once installed. The checks prove the CUDA line (torch.version.cuda, CUDA 12 wheels only,
# bitsandbytes' library for that CUDA) and that the worker contract imports.
# DL3013: this installs the project itself; its dependency bounds live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir "./ladder[worker]" "torch==${TORCH_VERSION}" \
    && python ladder/check-worker-image.py --torch "${TORCH_VERSION}" --cuda "${TORCH_CUDA}" \
    && rm -rf ladder \
    && python -m worker --help >/dev/null
