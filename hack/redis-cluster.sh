#!/usr/bin/env bash
# A real 3-master Redis Cluster on loopback, for the dispatcher's cluster test
# and for trying Tidings against a cluster: three `redis-server --cluster-enabled yes`
# on free ports, joined with `redis-cli --cluster create`. No replicas.
# State lives under ${TIDINGS_STATE_DIR:-.tidings}/redis-cluster; `down` removes it
# (cluster config files would otherwise pin the old ports).
#
#   hack/redis-cluster.sh up        # prints: export REDIS_CLUSTER_URL=redis://127.0.0.1:PORT/0
#   hack/redis-cluster.sh down|env|status
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${TIDINGS_STATE_DIR:-$REPO/.tidings}"
DIR="$STATE/redis-cluster"
REDIS_SERVER="${REDIS_SERVER:-redis-server}"
NODES=3

log() { echo "redis-cluster: $*" >&2; }

free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
# Cluster nodes also listen on port + 10000: keep clear of the top of the range.
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

ports() { cat "$DIR/ports" 2>/dev/null; }

is_up() {
  local p
  [[ -f $DIR/ports ]] || return 1
  p="$(ports | cut -d' ' -f1)"
  [[ "$(redis-cli -p "$p" cluster info 2>/dev/null | tr -d '\r' | grep cluster_state)" == cluster_state:ok ]]
}

print_env() { echo "export REDIS_CLUSTER_URL=redis://127.0.0.1:$(ports | cut -d' ' -f1)/0"; }

up() {
  if is_up; then
    log "already up on ports $(ports)"
    print_env
    return
  fi
  rm -rf "$DIR" && mkdir -p "$DIR"
  local list p port ok
  # The cluster bus port is port + 10000; it must be free too.
  for _ in $(seq 20); do
    list="$(free_ports "$NODES")"
    ok=1
    for p in $list; do ((p + 10000 < 65536)) || ok=0; done
    ((ok)) && break
  done
  echo "$list" > "$DIR/ports"
  for port in $list; do
    mkdir -p "$DIR/$port"
    "$REDIS_SERVER" --bind 127.0.0.1 --port "$port" --dir "$DIR/$port" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
      --appendonly yes --appendfsync everysec --save '' \
      --daemonize yes --pidfile "$DIR/$port/redis.pid" --logfile "$DIR/$port/redis.log" 9>&-
  done
  for port in $list; do
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  done
  local addresses=()
  for port in $list; do addresses+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${addresses[@]}" --cluster-replicas 0 --cluster-yes >"$DIR/create.log" 2>&1 ||
    { log "cluster create failed:"; cat "$DIR/create.log" >&2; exit 1; }
  for _ in $(seq 100); do is_up && break; sleep 0.1; done
  is_up || { log "cluster did not reach state ok"; exit 1; }
  log "up on ports $list"
  print_env
}

down() {
  local port pid
  for port in $(ports); do
    pid="$(cat "$DIR/$port/redis.pid" 2>/dev/null)" || continue
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server ]]; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
  rm -rf "$DIR"
  log "down"
}

serialize() { mkdir -p "$STATE"; exec 9>>"$STATE/redis-cluster.lock"; flock 9; }

case "${1:-}" in
  up) serialize; up ;;
  down) serialize; down ;;
  env) is_up || { log "not running: hack/redis-cluster.sh up"; exit 1; }; print_env ;;
  status) if is_up; then log "up on ports $(ports)"; else log "down"; exit 3; fi ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
