#!/usr/bin/env bash
# Write a kubeconfig that authenticates as a ServiceAccount of the local test
# control plane:
#   bash tests/k8s/controlplane/sa-kubeconfig.sh NAMESPACE SA OUTFILE [DURATION]
#
# There is no kube-controller-manager, so no token Secret is ever created for a
# ServiceAccount. The token here comes from the TokenRequest API instead
# (`kubectl create token SA -n NS`), which the apiserver serves on its own.
# The namespace and the ServiceAccount are created when missing. DURATION is a
# Go duration (default 24h). The SA starts with no permissions: bind a Role or
# ClusterRole to system:serviceaccount:NAMESPACE:SA to grant some.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/env.sh"

if [[ $# -lt 3 ]]; then
  echo "usage: $0 NAMESPACE SERVICEACCOUNT OUTFILE [DURATION]" >&2
  exit 2
fi
ns="$1" sa="$2" out="$3" duration="${4:-24h}"

[[ -f "$LADDER_CP_KUBECONFIG" ]] || { echo "sa-kubeconfig.sh: no $LADDER_CP_KUBECONFIG; run start.sh first" >&2; exit 1; }
KUBECTL="$(ladder_cp_bin)/kubectl"
k() { "$KUBECTL" --kubeconfig "$LADDER_CP_KUBECONFIG" "$@"; }

k get namespace "$ns" >/dev/null 2>&1 || k create namespace "$ns" >/dev/null
k -n "$ns" get serviceaccount "$sa" >/dev/null 2>&1 || k -n "$ns" create serviceaccount "$sa" >/dev/null
token="$(k -n "$ns" create token "$sa" --duration "$duration")"

mkdir -p "$(dirname "$out")"
umask 077
cat > "$out.tmp" <<EOT
apiVersion: v1
kind: Config
clusters:
- name: ladder-test
  cluster:
    server: $LADDER_CP_SERVER
    certificate-authority-data: $(base64 -w0 < "$LADDER_CP_PKI/ca.crt")
users:
- name: $ns-$sa
  user:
    token: $token
contexts:
- name: $ns-$sa
  context:
    cluster: ladder-test
    user: $ns-$sa
    namespace: $ns
current-context: $ns-$sa
EOT
mv "$out.tmp" "$out"
echo "$out"
