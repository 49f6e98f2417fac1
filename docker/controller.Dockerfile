# syntax=docker/dockerfile:1
# The Ladder controller image: `ladder controller` (Kopf), the store client and the metrics
# endpoint. Only the controller extra is installed: no torch, no Ray.
#   docker/build.sh controller     (docker, or podman; see that script)
#   docker build -f docker/controller.Dockerfile -t ghcr.io/ladder-dev/ladder-controller:0.1.0 .
# The chart (helm/ladder) runs it as UID 10001 with a read-only root filesystem and /tmp as
# an emptyDir.

# Fully qualified: podman refuses short names. docker/build.sh passes a local Debian base
# instead when no registry can serve this one.
ARG PYTHON_IMAGE=docker.io/library/python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The dependencies first, from pyproject.toml alone, in their own layer: a change to the
# sources or the README then rebuilds only the last step (seconds, not minutes).
COPY pyproject.toml ./
RUN python -m venv /opt/ladder \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(chr(10).join(p['dependencies'] + p['optional-dependencies']['controller']))" > /tmp/requirements.txt \
    && /opt/ladder/bin/pip install --no-cache-dir -r /tmp/requirements.txt
# What setuptools needs to build the distribution (pyproject's readme, both packages: the CLI
# imports orchestrator, and the package list includes worker; its heavy deps are not installed).
COPY README.md ./
COPY orchestrator ./orchestrator
COPY worker ./worker
RUN /opt/ladder/bin/pip install --no-cache-dir ".[controller]" \
    && /opt/ladder/bin/ladder --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="ladder-controller" \
      org.opencontainers.image.description="Ladder's Kubernetes controller: Sweeps in, KubeRay RayJobs out" \
      org.opencontainers.image.source="https://github.com/ladder-dev/ladder" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 ladder \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin ladder
COPY --from=build /opt/ladder /opt/ladder
ENV PATH=/opt/ladder/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
# 8080: Kopf's /healthz (--liveness); 9400: Prometheus metrics (LADDER_METRICS_PORT).
EXPOSE 8080 9400
ENTRYPOINT ["ladder", "controller"]
