#!/usr/bin/env bash
# Build the helm binary that the chart tests (tests/helm, tests/k8s/test_chart_apply.py) run,
# from its Go module, into
#   ${LADDER_HELM_CACHE:-$HOME/.cache/ladder-helm}/<helm version>/helm
# and print that path on stdout (everything else goes to stderr).
#
# No prebuilt binary is downloaded: sources come from the Go module proxy as pinned in
# go.mod/go.sum beside this script (helm.sh/helm/v4, `cmd/helm`), built the way helm's own
# Makefile builds a release (CGO_ENABLED=0, -trimpath, -ldflags '-w -s -X ...version=...').
# A second run with the same go.mod/go.sum finds the stamp file and returns at once.
#
# Env:
#   LADDER_HELM_CACHE     cache root (default $HOME/.cache/ladder-helm)
#   LADDER_HELM_JOBS      parallel build jobs, go build -p (default 2)
#   LADDER_HELM_REBUILD=1 ignore the stamp and build again
#   LADDER_HELM=PATH      use this helm binary instead (printed as is, nothing is built)
set -euo pipefail

if [[ -n "${LADDER_HELM:-}" ]]; then
  [[ -x "$LADDER_HELM" ]] || { echo "build-helm.sh: LADDER_HELM=$LADDER_HELM is not executable" >&2; exit 1; }
  echo "$LADDER_HELM"
  exit 0
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v go >/dev/null 2>&1; then
  echo "build-helm.sh: 'go' not found on PATH; Go >= 1.26 is needed to build helm" >&2
  exit 1
fi

# Never let the go command fetch a different toolchain behind our back.
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
HELM_VERSION="$(cd "$HERE" && GOFLAGS=-mod=readonly go list -m -f '{{.Version}}' helm.sh/helm/v4)"

CACHE_ROOT="${LADDER_HELM_CACHE:-${HOME:-/tmp}/.cache/ladder-helm}"
VERSION_DIR="$CACHE_ROOT/$HELM_VERSION"
HELM="$VERSION_DIR/helm"
STAMP="$VERSION_DIR/.stamp"
JOBS="${LADDER_HELM_JOBS:-2}"
# What helm's Makefile stamps into a release build (commit left unset: no git checkout here).
LDFLAGS="-w -s -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
LDFLAGS+=" -X helm.sh/helm/v4/internal/version.metadata= -X helm.sh/helm/v4/internal/version.gitTreeState=clean"

# The stamp ties the binary to the exact module graph and build flags.
stamp_content() {
  {
    cat "$HERE/go.mod" "$HERE/go.sum"
    echo "ldflags=$LDFLAGS trimpath cgo=0"
    go env GOOS GOARCH
  } | sha256sum | awk '{print $1}'
}

want="$(stamp_content)"
cached() { [[ "${LADDER_HELM_REBUILD:-0}" != 1 && -x "$HELM" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; }
if cached; then
  echo "build-helm.sh: cached helm $HELM_VERSION at $HELM" >&2
  echo "$HELM"
  exit 0
fi

mkdir -p "$VERSION_DIR"
# One build at a time per cache dir (pytest-xdist workers, parallel CI jobs).
exec 9>"$VERSION_DIR/.build.lock"
flock 9
# Someone else may have finished the build while we waited for the lock.
if cached; then
  echo "$HELM"
  exit 0
fi

echo "build-helm.sh: building helm $HELM_VERSION (go build -p $JOBS) ..." >&2
tmp="$(mktemp "$VERSION_DIR/.helm.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
start=$(date +%s)

cd "$HERE"
export CGO_ENABLED=0
export GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
export GOMAXPROCS="${GOMAXPROCS:-$JOBS}"
go build -p "$JOBS" -ldflags="$LDFLAGS" -o "$tmp" helm.sh/helm/v4/cmd/helm

chmod 755 "$tmp"
mv "$tmp" "$HELM"
trap - EXIT
echo "$want" > "$STAMP"
echo "build-helm.sh: built helm $HELM_VERSION in $(( $(date +%s) - start ))s -> $HELM" >&2
echo "$HELM"
