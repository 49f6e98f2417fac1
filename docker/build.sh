#!/usr/bin/env bash
# Build Ladder's images: the controller (docker/controller.Dockerfile) and the trial worker
# (docker/worker.Dockerfile), with docker when its daemon answers, else podman.
#
#   docker/build.sh [controller] [worker] [base] [engine]     (default: controller)
#
#   controller  build REPO/ladder-controller:TAG
#   worker      build REPO/ladder-worker:TAG (8.6 GB; 14 min cold on 2 loaded cores)
#   base        only make (or find cached) the local Debian base and print its image name
#   engine      print ENGINE=... and CONTAINERS_CONF=... (what tests run images with); build nothing
#
# Bases. The Dockerfiles take their base images as build arguments (PYTHON_IMAGE, RAY_IMAGE).
# With LADDER_IMAGE_BASE=auto (the default) the registry bases are used when they are already
# present locally or can be pulled. When no registry answers (a machine without access to
# Docker Hub), the script falls back to a local Debian base made with mmdebstrap from this
# machine's own apt sources (minbase, the host's suite, python3 + python3-venv +
# python-is-python3 + ca-certificates + passwd) and imported as localhost/ladder-debian-base.
# The worker's fallback base is docker/ray-base.Dockerfile on top of it: a stand-in for the
# rayproject/ray GPU image (same Ray version, user 1000:100, pip on PATH; no CUDA toolkit,
# which torch's wheels bring themselves). The base tarball is cached under
# $LADDER_IMAGES_CACHE/base-<key>.tar, keyed by its inputs (suite, packages, apt sources,
# mmdebstrap version); delete it or set LADDER_IMAGES_REBUILD=1 to make it again.
#
# Podman. On VMs with hybrid cgroups crun refuses to run and the default rlimits are above
# what the VM permits, so when the caller has no containers.conf of their own (CONTAINERS_CONF
# unset, no /etc/containers/containers.conf, no ~/.config/containers/containers.conf) the
# script writes one under $LADDER_IMAGES_CACHE (runtime runc, nofile 20000, nproc 4096) and
# points CONTAINERS_CONF at it for its own podman calls only.
#
# TLS. Behind a TLS-intercepting proxy the build's pip needs the host's CA bundle: with podman
# it is bind-mounted read-only for the build steps only (LADDER_BUILD_CA; never baked into a
# layer). `docker build` has no bind mounts; there the bundle is not passed.
#
# Env:
#   LADDER_IMAGE_ENGINE   docker | podman (default: docker if `docker info` answers, else podman)
#   LADDER_IMAGE_REPO     image name prefix (default ghcr.io/ladder-dev, the chart's)
#   LADDER_IMAGE_TAG      tag (default: the version in pyproject.toml, the chart's appVersion)
#   LADDER_IMAGE_BASE     auto | registry | local (default auto)
#   LADDER_IMAGES_CACHE   cache folder (default $HOME/.cache/ladder-images)
#   LADDER_IMAGES_REBUILD=1  make the local base again even when cached
#   LADDER_OCI_RUNTIME    podman build --runtime (default: containers.conf's)
#   LADDER_BUILD_CA       CA bundle to mount during podman builds
#                         (default /etc/ssl/certs/ca-certificates.crt when it exists; "" = none)
# Everything but the final image names goes to stderr; each built image's name is printed on
# stdout, one a line.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${LADDER_IMAGES_CACHE:-${HOME:-/tmp}/.cache/ladder-images}"
REPO="${LADDER_IMAGE_REPO:-ghcr.io/ladder-dev}"
TAG="${LADDER_IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1)}"
BASE_MODE="${LADDER_IMAGE_BASE:-auto}"
CA="${LADDER_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}"
# The packages of the local base: what both Dockerfiles' steps run (python -m venv, pip's
# TLS, groupadd/useradd).
BASE_PACKAGES="python3,python3-venv,python-is-python3,ca-certificates,passwd"

log() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: error: $*" >&2; exit 1; }

# The default value of a Dockerfile's ARG (the registry base it names).
dockerfile_arg() { sed -n "s/^ARG $2=\(.*\)$/\1/p" "$HERE/$1" | head -1; }

pick_engine() {
  if [[ -n "${LADDER_IMAGE_ENGINE:-}" ]]; then
    ENGINE="$LADDER_IMAGE_ENGINE"
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman >/dev/null; then
    ENGINE=podman
  else
    die "neither a docker daemon nor podman is available (apt-get install podman buildah runc)"
  fi
  case "$ENGINE" in docker|podman) ;; *) die "LADDER_IMAGE_ENGINE=$ENGINE: use docker or podman";; esac
  command -v "$ENGINE" >/dev/null || die "LADDER_IMAGE_ENGINE=$ENGINE but $ENGINE is not installed"
  if [[ "$ENGINE" == podman && -z "${CONTAINERS_CONF:-}" \
        && ! -e /etc/containers/containers.conf && ! -e "${HOME:-/nonexistent}/.config/containers/containers.conf" ]]; then
    mkdir -p "$CACHE"
    local conf="$CACHE/containers.conf"
    if [[ ! -s "$conf" ]]; then
      cat > "$conf.tmp" <<'EOF'
# Written by Ladder's docker/build.sh for its own podman calls (CONTAINERS_CONF); your own
# containers.conf, when you have one, is used instead.
[containers]
# This kind of VM permits no higher rlimits than these.
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
# crun refuses hybrid cgroups (v1 + v2); runc runs.
runtime = "runc"
EOF
      mv "$conf.tmp" "$conf"
    fi
    export CONTAINERS_CONF="$conf"
  fi
}

have_image() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

# A registry base: present locally, or pulled now. Fails quickly without a registry.
registry_base() {
  local image="$1"
  have_image "$image" && return 0
  [[ "$BASE_MODE" == local ]] && return 1
  log "pulling $image ..."
  timeout "${LADDER_PULL_TIMEOUT:-900}" "$ENGINE" pull "$image" >&2 && return 0
  log "cannot pull $image"
  return 1
}

host_suite() {
  local suite=""
  [[ -r /etc/os-release ]] && suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  if [[ -z "$suite" ]]; then
    suite="$(sed -n 's/^Suites: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)"
  fi
  echo "${suite:-bookworm}"
}

# The host's apt source files (deb822 .sources and one-line .list), non-empty ones.
host_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    [[ -s "$f" ]] && grep -qv '^\s*\(#\|$\)' "$f" && echo "$f"
  done
  return 0
}

# Make (or find) the local Debian base and import it; sets LOCAL_BASE.
local_base() {
  command -v mmdebstrap >/dev/null || die "no registry base and no mmdebstrap to make a local one (apt-get install mmdebstrap)"
  local suite sources key tar
  suite="$(host_suite)"
  mapfile -t sources < <(host_sources)
  [[ ${#sources[@]} -gt 0 ]] || die "no apt sources on this machine to make a local base from"
  key="$( { echo "suite=$suite packages=$BASE_PACKAGES variant=minbase"; cat "${sources[@]}";
            mmdebstrap --version; uname -m; } | sha256sum | cut -c1-16)"
  LOCAL_BASE="localhost/ladder-debian-base:$suite-$key"
  tar="$CACHE/base-$suite-$key.tar"
  mkdir -p "$CACHE"
  if [[ "${LADDER_IMAGES_REBUILD:-0}" == 1 || ! -s "$tar" ]]; then
    exec 8>"$CACHE/.base.lock"
    flock 8
    if [[ "${LADDER_IMAGES_REBUILD:-0}" == 1 || ! -s "$tar" ]]; then
      log "making the local base: mmdebstrap $suite minbase + $BASE_PACKAGES from ${sources[*]} ..."
      local t0=$SECONDS
      mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" --format=tar \
        "$suite" "$tar.tmp" "${sources[@]}" >&2
      mv "$tar.tmp" "$tar"
      log "local base made in $((SECONDS - t0))s ($(du -m "$tar" | cut -f1) MB): $tar"
      "$ENGINE" rmi "$LOCAL_BASE" >/dev/null 2>&1 || true
    fi
    exec 8>&-
  fi
  if ! have_image "$LOCAL_BASE"; then
    log "importing $tar as $LOCAL_BASE"
    "$ENGINE" import --change 'CMD ["/bin/bash"]' "$tar" "$LOCAL_BASE" >/dev/null
  fi
}

# build DOCKERFILE IMAGE [--build-arg ...]
build() {
  local dockerfile="$1" image="$2"
  shift 2
  local args=(build -f "$HERE/$dockerfile" -t "$image" "$@")
  if [[ "$ENGINE" == podman ]]; then
    # The OCI runtime comes from containers.conf (ours says runc); LADDER_OCI_RUNTIME overrides.
    # The CA bundle for the build's pip is mounted for RUN steps only.
    if [[ -n "${LADDER_OCI_RUNTIME:-}" ]]; then
      args+=(--runtime "$LADDER_OCI_RUNTIME")
    fi
    if [[ -n "$CA" && -r "$CA" ]]; then
      args+=(-v "$CA:/etc/ssl/certs/ca-certificates.crt:ro")
    fi
  fi
  log "$ENGINE ${args[*]} $ROOT"
  local t0=$SECONDS
  "$ENGINE" "${args[@]}" "$ROOT" >&2
  log "built $image in $((SECONDS - t0))s"
  echo "$image"
}

build_controller() {
  local base
  base="$(dockerfile_arg controller.Dockerfile PYTHON_IMAGE)"
  if [[ "$BASE_MODE" == local ]] || ! registry_base "$base"; then
    [[ "$BASE_MODE" == registry ]] && die "LADDER_IMAGE_BASE=registry but $base cannot be pulled"
    local_base
    base="$LOCAL_BASE"
  fi
  build controller.Dockerfile "$REPO/ladder-controller:$TAG" --build-arg "PYTHON_IMAGE=$base"
}

build_worker() {
  local base
  base="$(dockerfile_arg worker.Dockerfile RAY_IMAGE)"
  if [[ "$BASE_MODE" == local ]] || ! registry_base "$base"; then
    [[ "$BASE_MODE" == registry ]] && die "LADDER_IMAGE_BASE=registry but $base cannot be pulled"
    local_base
    local ray_version
    ray_version="$(dockerfile_arg ray-base.Dockerfile RAY_VERSION)"
    base="localhost/ladder-ray-base:$ray_version-${LOCAL_BASE##*:}"
    if ! have_image "$base"; then
      build ray-base.Dockerfile "$base" --build-arg "DEBIAN_IMAGE=$LOCAL_BASE" >/dev/null
    fi
  fi
  build worker.Dockerfile "$REPO/ladder-worker:$TAG" --build-arg "RAY_IMAGE=$base"
}

main() {
  local targets=("$@") target
  [[ ${#targets[@]} -gt 0 ]] || targets=(controller)
  case "$BASE_MODE" in auto|registry|local) ;; *) die "LADDER_IMAGE_BASE=$BASE_MODE: use auto, registry or local";; esac
  pick_engine
  for target in "${targets[@]}"; do
    case "$target" in
      engine) echo "ENGINE=$ENGINE"; echo "CONTAINERS_CONF=${CONTAINERS_CONF:-}" ;;
      base) local_base; echo "$LOCAL_BASE" ;;
      controller) build_controller ;;
      worker) build_worker ;;
      *) die "unknown target '$target' (controller, worker, base, engine)" ;;
    esac
  done
}

# One line, read whole before it runs: editing this file during a long build is harmless.
main "$@"; exit $?
