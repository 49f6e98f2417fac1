#!/usr/bin/env bash
# Stop the local test control plane started by start.sh.
#   bash tests/k8s/controlplane/stop.sh          # stop; keep etcd data, certs, logs
#   bash tests/k8s/controlplane/stop.sh --purge  # stop and delete the state dir too
# Only the processes recorded in $LADDER_CP_DIR/*.pid are signalled, and only
# when that pid still runs the expected binary.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/env.sh"

purge=0
[[ "${1:-}" == --purge ]] && purge=1

stop_one() {
  local name="$1" pid comm i
  if pid="$(ladder_cp_pid "$name")"; then
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    if [[ "$comm" != "$name"* && "$name" != "$comm"* ]]; then
      echo "stop.sh: pid $pid in $name.pid runs '$comm', not $name; leaving it alone" >&2
    else
      echo "stop.sh: stopping $name (pid $pid)" >&2
      kill -TERM "$pid" 2>/dev/null || true
      for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then
        echo "stop.sh: $name did not exit after 10s; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
      fi
    fi
  fi
  rm -f "$LADDER_CP_DIR/$name.pid"
}

if [[ -d "$LADDER_CP_DIR" ]]; then
  stop_one kube-apiserver
  stop_one etcd
  if [[ $purge == 1 ]]; then
    echo "stop.sh: removing $LADDER_CP_DIR" >&2
    rm -rf "$LADDER_CP_DIR"
  fi
fi
