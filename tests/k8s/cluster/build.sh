#!/usr/bin/env bash
# Build one of the test cluster's Go tools from its pinned module:
#
#   bash tests/k8s/cluster/build.sh kwok      # sigs.k8s.io/kwok/cmd/kwok           (kwok/go.mod)
#   bash tests/k8s/cluster/build.sh kuberay   # github.com/ray-project/kuberay/ray-operator (kuberay/go.mod)
#   bash tests/k8s/cluster/build.sh kueue     # sigs.k8s.io/kueue/cmd/kueue         (kueue/go.mod)
#
# into  ${LADDER_TOOLS_CACHE:-$HOME/.cache}/ladder-<name>/<version>/bin  and print that bin
# directory on stdout (everything else goes to stderr). Beside the binary it leaves what the
# cluster needs from the same module version, read from the Go module cache:
#   kwok:    stages.yaml  (kustomize/stage: node-initialize, node-heartbeat-with-lease,
#                          pod-ready, pod-complete, pod-delete)
#   kuberay: crds/        (config/crd/bases: RayCluster, RayJob, RayService)
#   kueue:   crds/        (config/components/crd/bases: ClusterQueue, LocalQueue, Workload, ...)
#
# No prebuilt binary is downloaded: sources come from the Go module proxy as pinned in
# <name>/go.mod and go.sum. A stamp (hash of go.mod, go.sum and the build flags) makes a
# second run return at once.
#
# Env:
#   LADDER_TOOLS_CACHE  cache root (default $HOME/.cache)
#   LADDER_CP_JOBS      parallel build jobs, go build -p (default 2)
#   LADDER_CP_REBUILD=1 ignore the stamp and build again
#   LADDER_BUILD_CACHED_ONLY=1  print the cached bin directory, or exit 5 without building
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NAME="${1:-}"
case "$NAME" in
  kwok)
    MODULE=sigs.k8s.io/kwok
    PKG=sigs.k8s.io/kwok/cmd/kwok
    BINARY=kwok
    ;;
  kuberay)
    MODULE=github.com/ray-project/kuberay/ray-operator
    PKG=github.com/ray-project/kuberay/ray-operator
    BINARY=kuberay-operator
    ;;
  kueue)
    MODULE=sigs.k8s.io/kueue
    PKG=sigs.k8s.io/kueue/cmd/kueue
    BINARY=kueue
    ;;
  *)
    echo "usage: $0 kwok|kuberay|kueue" >&2
    exit 2
    ;;
esac
if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: 'go' not found on PATH; Go >= 1.26 is needed to build $NAME" >&2
  exit 1
fi

export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
MODDIR="$HERE/$NAME"
VERSION="$(cd "$MODDIR" && GOFLAGS=-mod=readonly go list -m -f '{{.Version}}' "$MODULE")"
CACHE_ROOT="${LADDER_TOOLS_CACHE:-${HOME:-/tmp}/.cache}/ladder-$NAME"
VERSION_DIR="$CACHE_ROOT/$VERSION"
BIN_DIR="$VERSION_DIR/bin"
STAMP="$BIN_DIR/.stamp"
JOBS="${LADDER_CP_JOBS:-2}"
LDFLAGS="-s -w"
if [[ $NAME == kuberay ]]; then
  # What the operator logs at start ("Build time", "Commit ID"); its Makefile sets the same.
  LDFLAGS+=" -X main._commitId_=$VERSION"
fi

stamp_content() {
  {
    cat "$MODDIR/go.mod" "$MODDIR/go.sum"
    echo "pkg=$PKG binary=$BINARY ldflags=$LDFLAGS trimpath cgo=0 extras=2"
    go env GOOS GOARCH
  } | sha256sum | awk '{print $1}'
}
want="$(stamp_content)"
cached() {
  [[ "${LADDER_CP_REBUILD:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$BIN_DIR/$BINARY" ]]
}
if cached; then
  echo "build.sh: cached $BINARY $VERSION in $BIN_DIR" >&2
  echo "$BIN_DIR"
  exit 0
fi
if [[ "${LADDER_BUILD_CACHED_ONLY:-0}" == 1 ]]; then
  echo "build.sh: $BINARY $VERSION is not built (LADDER_BUILD_CACHED_ONLY=1)" >&2
  exit 5
fi

mkdir -p "$VERSION_DIR"
exec 9>"$VERSION_DIR/.build.lock"
flock 9
if cached; then
  echo "$BIN_DIR"
  exit 0
fi

echo "build.sh: building $BINARY from $PKG@$VERSION (go build -p $JOBS) ..." >&2
tmp="$(mktemp -d "$VERSION_DIR/.bin.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)

cd "$MODDIR"
export CGO_ENABLED=0
export GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
export GOMAXPROCS="${GOMAXPROCS:-$JOBS}"
go build -p "$JOBS" -ldflags="$LDFLAGS" -o "$tmp/$BINARY" "$PKG"

# Files of the same module version, from the module cache (go build just downloaded it).
src="$(go list -m -f '{{.Dir}}' "$MODULE")"
[[ -d "$src" ]] || { echo "build.sh: module source $MODULE not in the module cache" >&2; exit 1; }
if [[ $NAME == kwok ]]; then
  # One multi-document file of the Stage objects kwok's --config takes.
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"
    echo "# from $MODULE@$VERSION kustomize/stage/$f"
    sed '/^---$/d' "$src/kustomize/stage/$f"
  done > "$tmp/stages.yaml"
elif [[ $NAME == kueue ]]; then
  mkdir "$tmp/crds"
  cp "$src"/config/components/crd/bases/kueue.x-k8s.io_*.yaml "$tmp/crds/"
  chmod 644 "$tmp/crds"/*.yaml
else
  mkdir "$tmp/crds"
  for k in rayclusters rayjobs rayservices; do
    cp "$src/config/crd/bases/ray.io_$k.yaml" "$tmp/crds/"
  done
  chmod 644 "$tmp/crds"/*.yaml
fi

rm -rf "$BIN_DIR"
mv "$tmp" "$BIN_DIR"
trap - EXIT
chmod 755 "$BIN_DIR"
echo "$want" > "$STAMP"
echo "build.sh: built $BINARY $VERSION in $(( $(date +%s) - start ))s -> $BIN_DIR" >&2
echo "$BIN_DIR"
