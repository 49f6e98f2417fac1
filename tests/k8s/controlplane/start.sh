#!/usr/bin/env bash
# Start Ladder's local test control plane: etcd + kube-apiserver on 127.0.0.1.
#
#   bash tests/k8s/controlplane/start.sh
#   export KUBECONFIG=/tmp/ladder-controlplane/admin.kubeconfig
#
# Builds the binaries first if needed (build.sh, cached). Idempotent: when the
# apiserver is already up and /readyz is ok it does nothing. Prints the admin
# kubeconfig path on stdout. Settings (ports, state dir) are in env.sh.
#
# There is no kube-controller-manager, scheduler or kubelet: objects are stored
# and validated, admission and RBAC apply, but nothing reconciles them (no
# ServiceAccount token controller, no namespace deletion, no pods running).
set -Eeuo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/env.sh"

log() { echo "start.sh: $*" >&2; }
trap 'log "failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

mkdir -p "$LADDER_CP_DIR"
chmod 700 "$LADDER_CP_DIR"
# Serialise concurrent starts (several pytest processes, a developer's shell).
exec 8>"$LADDER_CP_DIR/.start.lock"
flock 8

if ladder_cp_ready; then
  log "already running and ready at $LADDER_CP_SERVER"
  echo "$LADDER_CP_KUBECONFIG"
  exit 0
fi

BIN="$(ladder_cp_bin)"
for b in etcd kube-apiserver kubectl; do
  [[ -x "$BIN/$b" ]] || { log "missing $BIN/$b"; exit 1; }
done

# Something half-up (e.g. etcd alive, apiserver crashed): stop what we own.
if ladder_cp_pid etcd >/dev/null || ladder_cp_pid kube-apiserver >/dev/null; then
  log "found a control plane that is not ready; restarting it"
  bash "$LADDER_CP_HERE/stop.sh"
fi

port_in_use() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }
for p in "$LADDER_CP_ETCD_PORT" "$LADDER_CP_ETCD_PEER_PORT" "$LADDER_CP_APISERVER_PORT"; do
  if port_in_use "$p"; then
    log "port $p on this machine is already taken by another process; choose other ports with"
    log "LADDER_CP_ETCD_PORT / LADDER_CP_ETCD_PEER_PORT / LADDER_CP_APISERVER_PORT"
    exit 1
  fi
done

# ---------------------------------------------------------------- PKI (once)
pki() {
  local d="$LADDER_CP_PKI"
  mkdir -p "$d"
  chmod 700 "$d"
  [[ -f "$d/.done" ]] && return 0
  log "generating CA, serving cert, admin client cert and service-account key in $d"
  local ossl=(openssl)  # openssl's chatter goes to pki/openssl.log
  "${ossl[@]}" req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
    -keyout "$d/ca.key" -out "$d/ca.crt" -subj "/CN=ladder-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>>"$d/openssl.log"

  # kube-apiserver serving certificate (loopback + the in-cluster names).
  cat > "$d/apiserver.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1
EOF
  "${ossl[@]}" req -newkey rsa:2048 -nodes -keyout "$d/apiserver.key" -out "$d/apiserver.csr" \
    -subj "/CN=kube-apiserver" 2>>"$d/openssl.log"
  "${ossl[@]}" x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$d/apiserver.ext" -out "$d/apiserver.crt" 2>>"$d/openssl.log"

  # Admin: client certificate in group system:masters (bypasses RBAC, like kubeadm's admin).
  cat > "$d/admin.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EOF
  "${ossl[@]}" req -newkey rsa:2048 -nodes -keyout "$d/admin.key" -out "$d/admin.csr" \
    -subj "/O=system:masters/CN=ladder-admin" 2>>"$d/openssl.log"
  "${ossl[@]}" x509 -req -in "$d/admin.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$d/admin.ext" -out "$d/admin.crt" 2>>"$d/openssl.log"

  # Service-account token signing key pair.
  "${ossl[@]}" genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/sa.key" 2>>"$d/openssl.log"
  "${ossl[@]}" pkey -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>>"$d/openssl.log"

  chmod 600 "$d"/*.key
  touch "$d/.done"
}
pki

b64() { base64 -w0 < "$1"; }
umask 077
cat > "$LADDER_CP_KUBECONFIG.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ladder-test
  cluster:
    server: $LADDER_CP_SERVER
    certificate-authority-data: $(b64 "$LADDER_CP_PKI/ca.crt")
users:
- name: ladder-admin
  user:
    client-certificate-data: $(b64 "$LADDER_CP_PKI/admin.crt")
    client-key-data: $(b64 "$LADDER_CP_PKI/admin.key")
contexts:
- name: ladder-test
  context:
    cluster: ladder-test
    user: ladder-admin
    namespace: default
current-context: ladder-test
EOF
mv "$LADDER_CP_KUBECONFIG.tmp" "$LADDER_CP_KUBECONFIG"
umask 022

# ---------------------------------------------------------------- etcd
# Started with setsid so that it outlives this script and the caller's
# process group (a pytest run killed with ^C does not take it down midway),
# and without fd 8, or the daemons would hold the start lock forever.
log "starting etcd on $LADDER_CP_HOST:$LADDER_CP_ETCD_PORT (log: $LADDER_CP_DIR/etcd.log)"
etcd_url="http://$LADDER_CP_HOST:$LADDER_CP_ETCD_PORT"
peer_url="http://$LADDER_CP_HOST:$LADDER_CP_ETCD_PEER_PORT"
setsid "$BIN/etcd" \
  --name ladder \
  --data-dir "$LADDER_CP_DIR/etcd-data" \
  --listen-client-urls "$etcd_url" \
  --advertise-client-urls "$etcd_url" \
  --listen-peer-urls "$peer_url" \
  --initial-advertise-peer-urls "$peer_url" \
  --initial-cluster "ladder=$peer_url" \
  --initial-cluster-state new \
  --unsafe-no-fsync \
  --quota-backend-bytes $((2 * 1024 * 1024 * 1024)) \
  --log-level warn \
  >> "$LADDER_CP_DIR/etcd.log" 2>&1 < /dev/null 8>&- &
echo $! > "$LADDER_CP_DIR/etcd.pid"

deadline=$(( $(date +%s) + LADDER_CP_START_TIMEOUT ))
until curl -fsS --max-time 2 "$etcd_url/health" 2>/dev/null | grep -q '"health":"true"'; do
  if ! ladder_cp_pid etcd >/dev/null; then
    log "etcd exited; last lines of $LADDER_CP_DIR/etcd.log:"; tail -n 30 "$LADDER_CP_DIR/etcd.log" >&2; exit 1
  fi
  if (( $(date +%s) > deadline )); then
    log "etcd not healthy after ${LADDER_CP_START_TIMEOUT}s"; tail -n 30 "$LADDER_CP_DIR/etcd.log" >&2; exit 1
  fi
  sleep 0.3
done

# ---------------------------------------------------------------- kube-apiserver
log "starting kube-apiserver on $LADDER_CP_SERVER (log: $LADDER_CP_DIR/kube-apiserver.log)"
# shellcheck disable=SC2086  # LADDER_CP_APISERVER_EXTRA_ARGS is a word list on purpose
setsid "$BIN/kube-apiserver" \
  --etcd-servers "$etcd_url" \
  --bind-address "$LADDER_CP_HOST" \
  --advertise-address "$LADDER_CP_HOST" \
  --secure-port "$LADDER_CP_APISERVER_PORT" \
  --cert-dir "$LADDER_CP_DIR/apiserver-certs" \
  --tls-cert-file "$LADDER_CP_PKI/apiserver.crt" \
  --tls-private-key-file "$LADDER_CP_PKI/apiserver.key" \
  --client-ca-file "$LADDER_CP_PKI/ca.crt" \
  --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$LADDER_CP_PKI/sa.pub" \
  --service-account-signing-key-file "$LADDER_CP_PKI/sa.key" \
  --service-cluster-ip-range 10.0.0.0/24 \
  --endpoint-reconciler-type none \
  --profiling=false \
  --v 1 \
  ${LADDER_CP_APISERVER_EXTRA_ARGS:-} \
  >> "$LADDER_CP_DIR/kube-apiserver.log" 2>&1 < /dev/null 8>&- &
echo $! > "$LADDER_CP_DIR/kube-apiserver.pid"

until ladder_cp_ready; do
  if ! ladder_cp_pid kube-apiserver >/dev/null; then
    log "kube-apiserver exited; last lines of $LADDER_CP_DIR/kube-apiserver.log:"
    tail -n 40 "$LADDER_CP_DIR/kube-apiserver.log" >&2; exit 1
  fi
  if (( $(date +%s) > deadline )); then
    log "kube-apiserver not ready after ${LADDER_CP_START_TIMEOUT}s; last lines of its log:"
    tail -n 40 "$LADDER_CP_DIR/kube-apiserver.log" >&2; exit 1
  fi
  sleep 0.5
done
log "ready: $LADDER_CP_SERVER  (KUBECONFIG=$LADDER_CP_KUBECONFIG)"
echo "$LADDER_CP_KUBECONFIG"
