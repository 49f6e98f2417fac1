#!/usr/bin/env bash
# Start Ladder's test cluster and keep it up until this script is stopped (Ctrl-C, SIGTERM):
#
#   sudo bash tests/k8s/cluster/up.sh
#   export KUBECONFIG=/tmp/ladder-cluster/controlplane/admin.kubeconfig   (printed when ready)
#
# What runs, all built from pinned Go modules (../controlplane/build.sh, ./build.sh) and all
# on 127.0.0.1 except the fake nodes' address:
#   etcd + kube-apiserver            ../controlplane/start.sh, own state dir and ports
#   kube-scheduler                   binds pods to nodes for real
#   kube-controller-manager          ServiceAccounts, Jobs, EndpointSlices, garbage collection
#   kwok                             two fake nodes (nodes.yaml: 4 nvidia.com/gpu, 96 CPU,
#                                    1 TiB each, GFD labels) and the life of their pods
#   KubeRay operator                 -use-kubernetes-proxy, its RayCluster/RayJob/RayService CRDs
#   Kueue (opt-in: LADDER_KUEUE=1)   the ray.io/rayjob integration, its CRDs; no queues (tests
#                                    make their own ResourceFlavor, ClusterQueue, LocalQueue)
# The network: a namespace ($LADDER_CLUSTER_NETNS) joined by a veth pair, 198.51.100.1/24 on
# this side, 198.51.100.2/24 inside; kwok gives every node and pod 198.51.100.2, so what the
# apiserver proxies to a pod (a Ray dashboard, port 8265) must listen in that namespace
# (`ip netns exec ladder-cluster ...`). Nothing else is addressed.
#
# STAND-IN: no container runs. kwok marks pods Running/Ready (and Job pods Succeeded); a process
# that should run in a pod has to be started by hand in the namespace.
#
# Needs root (ip netns, veth). One cluster per machine (lock $LADDER_CLUSTER_LOCK). On exit,
# for any reason, everything started here is stopped and the namespace removed. When ready it
# writes $LADDER_CLUSTER_DIR/ready (the kubeconfig path) and prints a summary on stdout.
set -Eeuo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/env.sh"
CP_HERE="$LADDER_CLUSTER_HERE/../controlplane"

log() { echo "up.sh: $*" >&2; }
if [[ "$(id -u)" != 0 ]]; then
  log "needs root to create the network namespace and veth pair (ip netns add); run it as root"
  exit 3
fi
for tool in ip curl flock openssl; do
  command -v "$tool" >/dev/null || { log "'$tool' not found on PATH"; exit 3; }
done

mkdir -p "$(dirname "$LADDER_CLUSTER_LOCK")" "$LADDER_CLUSTER_DIR"
exec 7>"$LADDER_CLUSTER_LOCK"
if ! flock -n 7; then
  log "another test cluster runs on this machine (lock $LADDER_CLUSTER_LOCK held by pid(s)" \
      "$(fuser "$LADDER_CLUSTER_LOCK" 2>/dev/null | xargs)); stop it first"
  exit 4
fi
started=$(date +%s)

# --------------------------------------------------------------- teardown
PIDS=()   # name:pid of what runs in the background here
teardown() {
  local rc=$? entry name pid
  trap - EXIT INT TERM
  set +e
  rm -f "$LADDER_CLUSTER_DIR/ready"
  log "stopping (exit $rc)"
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
    entry="${PIDS[$i]}"; name="${entry%%:*}"; pid="${entry#*:}"
    kill -TERM "$pid" 2>/dev/null && log "stopped $name (pid $pid)"
  done
  for entry in "${PIDS[@]}"; do
    pid="${entry#*:}"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  LADDER_CP_BIN="${BIN:-/nonexistent}" bash "$CP_HERE/stop.sh" --purge 2>&1 | sed 's/^/  /' >&2
  remove_network
  rm -f "$LADDER_CLUSTER_DIR"/*.pid
  log "stopped"
  exit "$rc"
}
remove_network() {
  if ip netns list | grep -qw "^$LADDER_CLUSTER_NETNS"; then
    # Processes someone started in the namespace (a Ray head standing in for a pod's).
    local left; left="$(ip netns pids "$LADDER_CLUSTER_NETNS" 2>/dev/null | xargs)"
    if [[ -n "$left" ]]; then
      log "stopping processes left in netns $LADDER_CLUSTER_NETNS: $left"
      # shellcheck disable=SC2086
      kill -TERM $left 2>/dev/null; sleep 1
    fi
    ip netns del "$LADDER_CLUSTER_NETNS"
  fi
  ip link del "$LADDER_CLUSTER_VETH_HOST" 2>/dev/null || true
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------- binaries
BIN="$(bash "$CP_HERE/build.sh")"
KWOK_BIN="$(bash "$LADDER_CLUSTER_HERE/build.sh" kwok)"
KUBERAY_BIN="$(bash "$LADDER_CLUSTER_HERE/build.sh" kuberay)"
# Kueue is opt-in: 1627 Go packages, twice KubeRay's (README.md has the times). It runs when
# LADDER_KUEUE=1 (built if needed) or when a build is already cached.
KUEUE_BIN=""
if [[ "${LADDER_KUEUE:-0}" == 1 ]]; then
  KUEUE_BIN="$(bash "$LADDER_CLUSTER_HERE/build.sh" kueue)"
else
  KUEUE_BIN="$(LADDER_BUILD_CACHED_ONLY=1 bash "$LADDER_CLUSTER_HERE/build.sh" kueue 2>/dev/null)" || KUEUE_BIN=""
fi
KUBECTL=("$BIN/kubectl" --kubeconfig "$LADDER_CLUSTER_KUBECONFIG")

# ------------------------------------------------------------- leftovers of a killed run
# We hold the machine-wide lock, so whatever is recorded here is stale.
for f in "$LADDER_CLUSTER_DIR"/*.pid; do
  [[ -f $f ]] || continue
  pid="$(cat "$f")"; name="$(basename "$f" .pid)"
  if [[ -n $pid && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "${name:0:15}" ]]; then
    log "stopping $name left by an earlier run (pid $pid)"; kill -TERM "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
done
LADDER_CP_BIN="$BIN" bash "$CP_HERE/stop.sh" --purge 2>/dev/null || true
remove_network

# ------------------------------------------------------------- network
log "network: netns $LADDER_CLUSTER_NETNS, $LADDER_CLUSTER_VETH_HOST $LADDER_CLUSTER_HOST_IP/24 <->" \
    "$LADDER_CLUSTER_VETH_NS $LADDER_CLUSTER_NODE_IP/24"
ip netns add "$LADDER_CLUSTER_NETNS"
ip link add "$LADDER_CLUSTER_VETH_HOST" type veth peer name "$LADDER_CLUSTER_VETH_NS"
ip link set "$LADDER_CLUSTER_VETH_NS" netns "$LADDER_CLUSTER_NETNS"
# IPv4 only: no IPv6 link-local addresses (or their neighbour discovery) on either end.
sysctl -qw "net.ipv6.conf.$LADDER_CLUSTER_VETH_HOST.disable_ipv6=1" 2>/dev/null || true
ip netns exec "$LADDER_CLUSTER_NETNS" sysctl -qw "net.ipv6.conf.$LADDER_CLUSTER_VETH_NS.disable_ipv6=1" 2>/dev/null || true
ip addr add "$LADDER_CLUSTER_HOST_IP/24" dev "$LADDER_CLUSTER_VETH_HOST"
ip link set "$LADDER_CLUSTER_VETH_HOST" up
ip -n "$LADDER_CLUSTER_NETNS" addr add "$LADDER_CLUSTER_NODE_IP/24" dev "$LADDER_CLUSTER_VETH_NS"
ip -n "$LADDER_CLUSTER_NETNS" link set "$LADDER_CLUSTER_VETH_NS" up
ip -n "$LADDER_CLUSTER_NETNS" link set lo up

# ------------------------------------------------------------- etcd + kube-apiserver
LADDER_CP_BIN="$BIN" bash "$CP_HERE/start.sh" >/dev/null
PKI="$LADDER_CP_DIR/pki"
KC="$LADDER_CLUSTER_KUBECONFIG"

# ------------------------------------------------------------- the rest, in the background
run() {  # run NAME COMMAND...: start in the background, log to NAME.log, remember the pid
  local name="$1"; shift
  "$@" >> "$LADDER_CLUSTER_DIR/$name.log" 2>&1 < /dev/null 7>&- &
  PIDS+=("$name:$!")
  echo "$!" > "$LADDER_CLUSTER_DIR/$name.pid"
  log "started $name (pid $!, log $LADDER_CLUSTER_DIR/$name.log)"
}
wait_until() {  # wait_until WHAT COMMAND...: poll until COMMAND succeeds
  local what="$1"; shift
  local deadline=$(( $(date +%s) + LADDER_CLUSTER_START_TIMEOUT )) entry
  until "$@" >/dev/null 2>&1; do
    for entry in "${PIDS[@]}"; do
      if ! kill -0 "${entry#*:}" 2>/dev/null; then
        log "${entry%%:*} exited while waiting for $what; last lines of its log:"
        tail -n 30 "$LADDER_CLUSTER_DIR/${entry%%:*}.log" >&2; exit 1
      fi
    done
    if (( $(date +%s) > deadline )); then
      log "$what not ready after ${LADDER_CLUSTER_START_TIMEOUT}s"; exit 1
    fi
    sleep 0.3
  done
}
healthz() { [[ "$(curl -ksS --max-time 2 "https://127.0.0.1:$1/healthz")" == ok ]]; }

run kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig "$KC" --authentication-kubeconfig "$KC" --authorization-kubeconfig "$KC" \
  --bind-address 127.0.0.1 --secure-port "$LADDER_CLUSTER_SCHEDULER_PORT" \
  --cert-dir "$LADDER_CLUSTER_DIR/scheduler-certs" --leader-elect=false --v 1
# --use-service-account-credentials=false: every controller acts as the admin; the default
# (one ServiceAccount per controller) needs tokens this minimal PKI does not sign for it.
# It logs a harmless "missing requestheader CA" error.
run kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig "$KC" --authentication-kubeconfig "$KC" --authorization-kubeconfig "$KC" \
  --bind-address 127.0.0.1 --secure-port "$LADDER_CLUSTER_CM_PORT" \
  --cert-dir "$LADDER_CLUSTER_DIR/controller-manager-certs" --leader-elect=false \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --use-service-account-credentials=false --v 1
# kwok's pod-ready stage gives each pod the next address of a pod CIDR (10.0.0.0/24 unless
# set); here every pod gets its node's address instead (NodeIPsWith, as for hostNetwork
# pods), which is the namespace side of the veth pair: the one address the apiserver may
# proxy to.
sed 's/\$podIPs := PodIPsWith [^}]*}}/$podIPs := NodeIPsWith .spec.nodeName }}/' \
  "$KWOK_BIN/stages.yaml" > "$LADDER_CLUSTER_DIR/kwok-stages.yaml"
if grep -q PodIPsWith "$LADDER_CLUSTER_DIR/kwok-stages.yaml" \
   || ! grep -q 'podIPs := NodeIPsWith' "$LADDER_CLUSTER_DIR/kwok-stages.yaml"; then
  log "could not set the pods' address in kwok's pod-ready stage ($KWOK_BIN/stages.yaml)"; exit 1
fi
run kwok "$KWOK_BIN/kwok" \
  --kubeconfig "$KC" --config "$LADDER_CLUSTER_DIR/kwok-stages.yaml" \
  --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --node-ip "$LADDER_CLUSTER_NODE_IP" --server-address "127.0.0.1:$LADDER_CLUSTER_KWOK_PORT"
wait_until "kube-scheduler /healthz" healthz "$LADDER_CLUSTER_SCHEDULER_PORT"
wait_until "kube-controller-manager /healthz" healthz "$LADDER_CLUSTER_CM_PORT"

"${KUBECTL[@]}" create -f "$LADDER_CLUSTER_HERE/nodes.yaml" >/dev/null
wait_until "the fake nodes to be Ready" \
  "${KUBECTL[@]}" wait --for=condition=Ready node --all --timeout=2s
wait_until "the default ServiceAccount" "${KUBECTL[@]}" -n default get serviceaccount default

for crd in "$KUBERAY_BIN"/crds/*.yaml; do
  "${KUBECTL[@]}" apply --server-side --field-manager ladder-cluster -f "$crd" >/dev/null
done
# `kubectl wait --for=condition` fails at once ("accessor error") on a CRD whose status has no
# conditions yet, a moment after it is created: ask again until it is Established.
wait_until "the KubeRay CRDs Established" "${KUBECTL[@]}" wait --for=condition=Established \
  --timeout=5s crd/rayclusters.ray.io crd/rayjobs.ray.io crd/rayservices.ray.io
run kuberay-operator "$KUBERAY_BIN/kuberay-operator" \
  -kubeconfig "$KC" -enable-leader-election=false -use-kubernetes-proxy \
  -metrics-addr "127.0.0.1:$LADDER_CLUSTER_KUBERAY_METRICS_PORT" \
  -health-probe-bind-address "127.0.0.1:$LADDER_CLUSTER_KUBERAY_PROBE_PORT" \
  -log-stdout-encoder console
wait_until "the KubeRay operator /readyz" \
  curl -fsS --max-time 2 "http://127.0.0.1:$LADDER_CLUSTER_KUBERAY_PROBE_PORT/readyz"

if [[ -n $KUEUE_BIN ]]; then
  # Kueue, for RayJobs labelled kueue.x-k8s.io/queue-name only (manageJobsWithoutQueueName off).
  # Its webhooks are not registered with the apiserver (that needs a Service the apiserver can
  # reach): Ladder creates such RayJobs suspended itself, which is all Kueue's RayJob webhook
  # would do here. Its webhook server still starts (readiness waits on it): a self-signed
  # certificate for 127.0.0.1. The visibility API server (an aggregated API) is off.
  KUEUE_DIR="$LADDER_CLUSTER_DIR/kueue"
  mkdir -p "$KUEUE_DIR/certs"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$KUEUE_DIR/certs/tls.key" \
    -out "$KUEUE_DIR/certs/tls.crt" 2>/dev/null
  # With internalCertManagement off, Kueue v0.17 reads its metrics server's certificate from a
  # fixed path (cmd/kueue/main.go) even when metrics are off, and exits without it.
  mkdir -p /etc/kueue/metrics/certs
  cp "$KUEUE_DIR/certs/tls.crt" "$KUEUE_DIR/certs/tls.key" /etc/kueue/metrics/certs/
  cat > "$KUEUE_DIR/config.yaml" <<EOF
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
health: {healthProbeBindAddress: "127.0.0.1:$LADDER_CLUSTER_KUEUE_PROBE_PORT"}
metrics: {bindAddress: "0"}
webhook: {host: 127.0.0.1, port: $LADDER_CLUSTER_KUEUE_WEBHOOK_PORT, certDir: "$KUEUE_DIR/certs"}
leaderElection: {leaderElect: false}
internalCertManagement: {enable: false}
integrations: {frameworks: [ray.io/rayjob]}
EOF
  "${KUBECTL[@]}" create namespace kueue-system >/dev/null
  for crd in "$KUEUE_BIN"/crds/*.yaml; do
    "${KUBECTL[@]}" apply --server-side --field-manager ladder-cluster -f "$crd" >/dev/null
  done
  wait_until "the Kueue CRDs Established" "${KUBECTL[@]}" wait --for=condition=Established \
    --timeout=5s crd/clusterqueues.kueue.x-k8s.io crd/localqueues.kueue.x-k8s.io \
    crd/resourceflavors.kueue.x-k8s.io crd/workloads.kueue.x-k8s.io
  run kueue env KUBECONFIG="$KC" "$KUEUE_BIN/kueue" --config "$KUEUE_DIR/config.yaml" \
    --feature-gates=VisibilityOnDemand=false
  wait_until "Kueue /readyz" \
    curl -fsS --max-time 2 "http://127.0.0.1:$LADDER_CLUSTER_KUEUE_PROBE_PORT/readyz"
else
  log "Kueue not started (not built; LADDER_KUEUE=1 builds and starts it)"
fi

echo "$KC" > "$LADDER_CLUSTER_DIR/ready"
log "ready in $(( $(date +%s) - started ))s"
cat <<EOF
Ladder test cluster is up (Ctrl-C or SIGTERM to pid $$ stops it and removes the namespace).
  export KUBECONFIG=$KC
  export PATH=$BIN:\$PATH
  apiserver:   https://127.0.0.1:$LADDER_CP_APISERVER_PORT
  binaries:    $BIN (etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kubectl)
  kwok:        $KWOK_BIN/kwok
  KubeRay:     $KUBERAY_BIN/kuberay-operator (-use-kubernetes-proxy)
  Kueue:       ${KUEUE_BIN:-not started (LADDER_KUEUE=1)}
  pods' address: $LADDER_CLUSTER_NODE_IP in netns $LADDER_CLUSTER_NETNS (ip netns exec $LADDER_CLUSTER_NETNS ...)
  logs:        $LADDER_CLUSTER_DIR/*.log
EOF
"${KUBECTL[@]}" get nodes -L nvidia.com/gpu.product
"${KUBECTL[@]}" get nodes -o custom-columns='NODE:.metadata.name,ADDRESS:.status.addresses[0].address,CPU:.status.allocatable.cpu,MEMORY:.status.allocatable.memory,GPU:.status.allocatable.nvidia\.com/gpu'

# Stay up until stopped, or until one of the components dies.
set +e
wait -n
rc=$?
for entry in "${PIDS[@]}"; do
  kill -0 "${entry#*:}" 2>/dev/null || log "${entry%%:*} exited (status $rc); see $LADDER_CLUSTER_DIR/${entry%%:*}.log"
done
exit 1
