#!/usr/bin/env bash
# Build the binaries of Ladder's local test control plane from Go modules:
#   etcd, kube-apiserver, kubectl, kube-scheduler, kube-controller-manager
# into  ${LADDER_CP_CACHE:-$HOME/.cache/ladder-controlplane}/<version>/bin-<stamp>
# and print that bin directory on stdout (everything else goes to stderr).
#
# No prebuilt binary is downloaded: sources come from the Go module proxy as
# pinned in go.mod/go.sum beside this script. A second run with the same
# go.mod/go.sum finds the stamp file and returns at once.
#
# Env:
#   LADDER_CP_CACHE   cache root (default $HOME/.cache/ladder-controlplane)
#   LADDER_CP_JOBS    parallel build jobs, go build -p (default 2)
#   LADDER_CP_REBUILD=1  ignore the stamp and build again
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../gobuild.sh
source "$HERE/../gobuild.sh"
if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: 'go' not found on PATH; Go >= 1.26 is needed to build the control plane" >&2
  exit 1
fi

# Never let the go command fetch a different toolchain behind our back.
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
modver() { (cd "$HERE" && GOFLAGS=-mod=readonly go list -m -f '{{.Version}}' "$1"); }
K8S_VERSION="$(modver k8s.io/kubernetes)"
ETCD_VERSION="$(modver go.etcd.io/etcd/server/v3)"

CACHE_ROOT="${LADDER_CP_CACHE:-${HOME:-/tmp}/.cache/ladder-controlplane}"
VERSION_DIR="$CACHE_ROOT/$K8S_VERSION"
JOBS="${LADDER_CP_JOBS:-2}"
# Without -X the binaries report gitVersion v0.0.0-master; stamp the release
# the way hack/lib/version.sh does (commit and build date are left unset).
k8s_minor="${K8S_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  LDFLAGS+=" -X $pkg.gitTreeState=clean"
done
BINARIES=(etcd kube-apiserver kubectl kube-scheduler kube-controller-manager)

# The stamp ties the binaries to the exact module graph and build flags.
want="$(go_stamp "$HERE" "ldflags=$LDFLAGS trimpath cgo=0" "binaries=${BINARIES[*]}")"
# One bin directory per stamp: checkouts with different binary sets or flags (branches, older
# clones) sharing this cache then each keep their own instead of rebuilding over each other.
BIN_DIR="$VERSION_DIR/bin-${want:0:12}"
if stamp_ok "$BIN_DIR" "$want" "${BINARIES[@]}"; then
  echo "build.sh: cached binaries for kubernetes $K8S_VERSION / etcd $ETCD_VERSION in $BIN_DIR" >&2
  echo "$BIN_DIR"
  exit 0
fi

build_start "$VERSION_DIR"
# Someone else may have finished the build while we waited for the lock.
if stamp_ok "$BIN_DIR" "$want" "${BINARIES[@]}"; then
  echo "$BIN_DIR"
  exit 0
fi
echo "build.sh: building etcd $ETCD_VERSION and kube-apiserver, kubectl, kube-scheduler, kube-controller-manager $K8S_VERSION (go build -p $JOBS) ..." >&2
start=$(date +%s)

cd "$HERE"
go_build_env "$JOBS"

gobuild() {  # gobuild BINARY PACKAGE
  local t0; t0=$(date +%s)
  go build -p "$JOBS" -ldflags="$LDFLAGS" -o "$tmp/$1" "$2"
  echo "build.sh: $1 in $(( $(date +%s) - t0 ))s" >&2
}
gobuild kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
gobuild kubectl k8s.io/kubernetes/cmd/kubectl
gobuild kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
gobuild kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
gobuild etcd go.etcd.io/etcd/server/v3

build_install "$BIN_DIR" "$want"
echo "build.sh: built in $(( $(date +%s) - start ))s -> $BIN_DIR" >&2
echo "$BIN_DIR"
