# Shared settings for start.sh / stop.sh / sa-kubeconfig.sh. Source it, don't run it.
# Every value can be overridden from the environment.
LADDER_CP_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LADDER_CP_DIR="${LADDER_CP_DIR:-/tmp/ladder-controlplane}"          # state: pki, etcd data, logs, pids, kubeconfigs
LADDER_CP_HOST=127.0.0.1                                             # loopback only, never another address
LADDER_CP_ETCD_PORT="${LADDER_CP_ETCD_PORT:-23790}"                  # etcd client port
LADDER_CP_ETCD_PEER_PORT="${LADDER_CP_ETCD_PEER_PORT:-23800}"        # etcd peer port (single member)
LADDER_CP_APISERVER_PORT="${LADDER_CP_APISERVER_PORT:-26443}"        # kube-apiserver https port
LADDER_CP_START_TIMEOUT="${LADDER_CP_START_TIMEOUT:-120}"            # seconds to wait for /readyz

LADDER_CP_PKI="$LADDER_CP_DIR/pki"
LADDER_CP_KUBECONFIG="$LADDER_CP_DIR/admin.kubeconfig"
LADDER_CP_SERVER="https://$LADDER_CP_HOST:$LADDER_CP_APISERVER_PORT"

# Directory holding etcd, kube-apiserver and kubectl. LADDER_CP_BIN skips build.sh.
ladder_cp_bin() {
  if [[ -n "${LADDER_CP_BIN:-}" ]]; then
    echo "$LADDER_CP_BIN"
  else
    bash "$LADDER_CP_HERE/build.sh"
  fi
}

# True when the apiserver answers /readyz with "ok" to the admin client cert.
ladder_cp_ready() {
  [[ -f "$LADDER_CP_PKI/ca.crt" && -f "$LADDER_CP_PKI/admin.crt" ]] || return 1
  local body
  body="$(curl -sS --max-time 3 --cacert "$LADDER_CP_PKI/ca.crt" \
    --cert "$LADDER_CP_PKI/admin.crt" --key "$LADDER_CP_PKI/admin.key" \
    "$LADDER_CP_SERVER/readyz" 2>/dev/null)" || return 1
  [[ "$body" == ok ]]
}

# pid from a pid file, if that process is alive.
ladder_cp_pid() {
  local f="$LADDER_CP_DIR/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}
