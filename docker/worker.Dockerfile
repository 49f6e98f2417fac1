# syntax=docker/dockerfile:1
# The Ladder worker image: what every trial's Ray head and worker pods run. KubeRay starts
# Ray in it (`ray start`); the RayJob's entrypoint is the worker contract,
# `python -m worker run --trial FILE` (docs/architecture.md, "The worker contract").
#   docker build -f docker/worker.Dockerfile -t ghcr.io/ladder-dev/ladder-worker:0.1.0 .
# Keep the Ray version equal to the chart's execution.rayVersion.

ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu

FROM ${RAY_IMAGE}
LABEL org.opencontainers.image.title="ladder-worker" \
      org.opencontainers.image.description="Ladder trial image: Ray Train, PyTorch, transformers, peft, bitsandbytes" \
      org.opencontainers.image.source="https://github.com/ladder-dev/ladder" \
      org.opencontainers.image.licenses="Apache-2.0"
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
# The worker extra (torch, transformers, peft, bitsandbytes, accelerate, ray[train]); Ray
# itself is already there at the pinned version. The sources are removed once installed, and
# the last step proves the worker contract imports from the installed package.
# DL3013: this installs the project itself; its dependency bounds live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir "./ladder[worker]" \
    && rm -rf ladder \
    && python -m worker --help >/dev/null
