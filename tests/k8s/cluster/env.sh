# Settings of the test cluster (up.sh). Source it, don't run it. Every value can be
# overridden from the environment.
LADDER_CLUSTER_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LADDER_CLUSTER_DIR="${LADDER_CLUSTER_DIR:-/tmp/ladder-cluster}"   # state: logs, pids, kubeconfig, ready
# etcd + kube-apiserver come from ../controlplane/start.sh, with their own state dir and ports
# so that the bare control plane of tests/k8s (26443) can run beside this cluster.
export LADDER_CP_DIR="$LADDER_CLUSTER_DIR/controlplane"
export LADDER_CP_ETCD_PORT="${LADDER_CLUSTER_ETCD_PORT:-24790}"
export LADDER_CP_ETCD_PEER_PORT="${LADDER_CLUSTER_ETCD_PEER_PORT:-24800}"
export LADDER_CP_APISERVER_PORT="${LADDER_CLUSTER_APISERVER_PORT:-27443}"
LADDER_CLUSTER_SCHEDULER_PORT="${LADDER_CLUSTER_SCHEDULER_PORT:-27259}"
LADDER_CLUSTER_CM_PORT="${LADDER_CLUSTER_CM_PORT:-27257}"
LADDER_CLUSTER_KWOK_PORT="${LADDER_CLUSTER_KWOK_PORT:-27247}"
LADDER_CLUSTER_KUBERAY_METRICS_PORT="${LADDER_CLUSTER_KUBERAY_METRICS_PORT:-27080}"
LADDER_CLUSTER_KUBERAY_PROBE_PORT="${LADDER_CLUSTER_KUBERAY_PROBE_PORT:-27081}"
LADDER_CLUSTER_KUEUE_PROBE_PORT="${LADDER_CLUSTER_KUEUE_PROBE_PORT:-27082}"
LADDER_CLUSTER_KUEUE_WEBHOOK_PORT="${LADDER_CLUSTER_KUEUE_WEBHOOK_PORT:-27083}"
LADDER_CLUSTER_START_TIMEOUT="${LADDER_CLUSTER_START_TIMEOUT:-120}"

# The network: one namespace made here, joined to the root namespace by a veth pair on
# 198.51.100.0/24 (TEST-NET-2, never routed). Every fake node and pod has the namespace side's
# address, so what the apiserver proxies to a pod (a Ray head's dashboard) lands in there.
# These are fixed: no other address is ever used.
LADDER_CLUSTER_NETNS="${LADDER_CLUSTER_NETNS:-ladder-cluster}"
LADDER_CLUSTER_VETH_HOST=ladder-h0       # root side
LADDER_CLUSTER_VETH_NS=ladder-n0         # namespace side
LADDER_CLUSTER_HOST_IP=198.51.100.1
LADDER_CLUSTER_NODE_IP=198.51.100.2
# Machine-wide: the namespace, the veth pair and 198.51.100.1 exist once per machine.
LADDER_CLUSTER_LOCK="${LADDER_CLUSTER_LOCK:-/run/lock/ladder-cluster.lock}"
LADDER_CLUSTER_KUBECONFIG="$LADDER_CP_DIR/admin.kubeconfig"
