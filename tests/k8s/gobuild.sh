# Sourced by tests/k8s/controlplane/build.sh and tests/k8s/cluster/build.sh: what both do to
# build pinned Go modules into a cache once, with a stamp, a lock and an atomic install.
#
#   go_stamp MODDIR LINE...       sha256 of MODDIR's go.mod and go.sum, the LINEs (build flags,
#                                 what is built) and `go env GOOS GOARCH`
#   stamp_ok BIN_DIR WANT BINARY...  BIN_DIR holds a build stamped WANT with every BINARY
#                                 (always false with LADDER_CP_REBUILD=1)
#   build_start VERSION_DIR       take VERSION_DIR's build lock (one build at a time per cache:
#                                 pytest-xdist workers, parallel CI jobs) and make $tmp, a fresh
#                                 directory removed on exit unless build_install moved it
#   go_build_env JOBS             the reproducible build settings (no cgo, -trimpath, no VCS
#                                 stamping, the module graph read-only, GOMAXPROCS=JOBS)
#   build_install BIN_DIR WANT    replace BIN_DIR with $tmp and write its stamp
# Callers set -euo pipefail themselves.

go_stamp() {
  local moddir=$1
  shift
  {
    cat "$moddir/go.mod" "$moddir/go.sum"
    printf '%s\n' "$@"
    go env GOOS GOARCH
  } | sha256sum | awk '{print $1}'
}

stamp_ok() {
  local bin_dir=$1 want=$2 binary
  shift 2
  [[ "${LADDER_CP_REBUILD:-0}" != 1 && -f "$bin_dir/.stamp" && "$(cat "$bin_dir/.stamp")" == "$want" ]] || return 1
  for binary in "$@"; do
    [[ -x "$bin_dir/$binary" ]] || return 1
  done
}

build_start() {
  local version_dir=$1
  mkdir -p "$version_dir"
  exec 9>"$version_dir/.build.lock"
  flock 9
  tmp="$(mktemp -d "$version_dir/.bin.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
}

go_build_env() {
  export CGO_ENABLED=0
  export GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
  export GOMAXPROCS="${GOMAXPROCS:-$1}"
}

build_install() {
  local bin_dir=$1 want=$2
  rm -rf "$bin_dir"
  mv "$tmp" "$bin_dir"
  trap - EXIT
  chmod 755 "$bin_dir"
  echo "$want" > "$bin_dir/.stamp"
}
