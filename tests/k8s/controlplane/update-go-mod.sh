#!/usr/bin/env bash
# Repin the control plane to another Kubernetes release, e.g.
#   bash tests/k8s/controlplane/update-go-mod.sh v1.37.2
# Rewrites go.mod/go.sum beside this script: requires k8s.io/kubernetes@VERSION,
# replaces every staging module that kubernetes requires (listed in the
# replace block of its go.mod as ./staging/src/k8s.io/NAME, required there at
# v0.0.0) with the published k8s.io/NAME@v0.MINOR.PATCH, pins etcd's server to
# the version kubernetes itself requires, then runs go mod tidy.
# The next build.sh run builds into a new <version> cache dir.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S="${1:?usage: $0 v1.MINOR.PATCH}"
[[ "$K8S" =~ ^v1\.[0-9]+\.[0-9]+$ ]] || { echo "not a v1.MINOR.PATCH release: $K8S" >&2; exit 2; }
STAGING_VERSION="v0.${K8S#v1.}"

cd "$HERE"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
modfile="$(go mod download -json "k8s.io/kubernetes@$K8S" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
[[ -f "$modfile" ]] || { echo "could not download k8s.io/kubernetes@$K8S" >&2; exit 1; }

staging="$(awk '$2=="=>" && $3 ~ /^\.\/staging\/src\/k8s\.io\// {print $1}' "$modfile" | sort -u)"
required="$(awk '$2=="v0.0.0" {print $1}' "$modfile" | sort -u)"
etcd="$(awk '$1=="go.etcd.io/etcd/server/v3" {print $2}' "$modfile")"

for m in $(go mod edit -json | sed -n 's/^[[:space:]]*"Path": "\(k8s\.io\/[^"]*\)",$/\1/p' | sort -u); do
  go mod edit -dropreplace="$m" 2>/dev/null || true
done
go mod edit -require="k8s.io/kubernetes@$K8S" -require="go.etcd.io/etcd/server/v3@$etcd"
go mod edit -fmt
{
  echo
  echo "replace ("
  for m in $(comm -12 <(echo "$staging") <(echo "$required")); do
    printf '\t%s => %s %s\n' "$m" "$m" "$STAGING_VERSION"
  done
  echo ")"
} >> go.mod
echo "staging modules not required by kubernetes (no replace needed):" $(comm -23 <(echo "$staging") <(echo "$required")) >&2
GOMAXPROCS=2 go mod tidy
echo "go.mod now pins k8s.io/kubernetes $K8S (staging $STAGING_VERSION), etcd $etcd" >&2
