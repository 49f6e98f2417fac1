# syntax=docker/dockerfile:1
# STAND-IN for the rayproject/ray GPU image, used by docker/build.sh only when no registry
# can serve that image (a machine without Docker Hub). It gives worker.Dockerfile what it
# relies on in the real base: Ray at the chart's execution.rayVersion, the user ray
# (1000:100) owning its home, and a pip on PATH that installs as that user. It has no CUDA
# toolkit: torch's wheels bring their own CUDA libraries (nvidia-* wheels) and the NVIDIA
# container toolkit mounts the driver's libcuda at run time, so trials would still see GPUs;
# but the release image is built on the real Ray image (worker.Dockerfile's RAY_IMAGE).
#   docker/build.sh worker   (falls back to this automatically)

ARG DEBIAN_IMAGE=localhost/ladder-debian-base:bookworm
FROM ${DEBIAN_IMAGE}
# Keep equal to worker.Dockerfile's RAY_IMAGE and the chart's execution.rayVersion.
ARG RAY_VERSION=2.60.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/home/ray/venv/bin:$PATH
RUN useradd --uid 1000 --gid 100 --create-home --home-dir /home/ray --shell /bin/bash ray
USER 1000:100
WORKDIR /home/ray
# DL3013: Ray is pinned by the build argument.
# hadolint ignore=DL3013
RUN python -m venv /home/ray/venv \
    && pip install --no-cache-dir --upgrade pip \
    && pip install --no-cache-dir "ray[default]==${RAY_VERSION}" \
    && ray --version
