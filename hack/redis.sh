#!/usr/bin/env bash
# A real Redis for tests and demos: >= 7 (XAUTOCLAIM, lag in XINFO GROUPS) with
# AOF on, as production runs it, on a free loopback port. State lives under
# ${TIDINGS_STATE_DIR:-.tidings}/redis; `down` keeps the data.
#
#   hack/redis.sh up|down|env|status
#   REDIS_SERVER=/path/to/redis-server   # use another binary
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${TIDINGS_STATE_DIR:-$REPO/.tidings}"
DIR="$STATE/redis"
ENV_FILE="$STATE/redis.env"
REDIS_SERVER="${REDIS_SERVER:-redis-server}"

log() { echo "redis: $*" >&2; }

# Keeps the last port when it is still free, so exported envs stay valid.
free_port() {
  python3 - "${1:-0}" <<'PY'
import socket, sys
for port in (int(sys.argv[1]), 0):
    try:
        with socket.socket() as s:
            # As servers bind: a port left in TIME_WAIT by our last run is free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            print(s.getsockname()[1])
            break
    except OSError:
        continue
PY
}

port() { cat "$DIR/port" 2>/dev/null || echo 0; }

# A pid file alone can be stale (reboot, pid reuse): ask the server itself.
is_up() {
  [[ -f $DIR/redis.pid ]] && kill -0 "$(cat "$DIR/redis.pid")" 2>/dev/null &&
    [[ "$(redis-cli -p "$(port)" ping 2>/dev/null)" == PONG ]]
}

print_env() { echo "export REDIS_URL=redis://127.0.0.1:$(port)/0"; }

up() {
  mkdir -p "$DIR"
  if is_up; then
    log "already up on port $(port)"
  else
    local p
    p="$(free_port "$(port)")"
    echo "$p" > "$DIR/port"
    # Redis daemonizes itself and writes the pid of the server it started.
    "$REDIS_SERVER" --bind 127.0.0.1 --port "$p" --dir "$DIR" \
      --appendonly yes --appendfsync everysec --save '' \
      --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" 9>&-
    for _ in $(seq 300); do is_up && break; sleep 0.1; done
    is_up || { log "did not start; see $DIR/redis.log"; tail -20 "$DIR/redis.log" >&2; exit 1; }
    log "up on port $p"
  fi
  print_env | tee "$ENV_FILE"
}

down() {
  local pid
  pid="$(cat "$DIR/redis.pid" 2>/dev/null)" || { log "not running"; return 0; }
  # A stale pid file (after a reboot) may name someone else's process.
  if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server ]] && kill "$pid"; then
    # SIGTERM makes Redis fsync the AOF and exit; wait so `up` can reuse the port.
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$DIR/redis.pid" "$ENV_FILE"
  log "down"
}

# Others may run this in the same tree at the same time: one up/down at once.
# The server must not inherit the lock (9>&- where it starts), or it holds it forever.
serialize() { mkdir -p "$STATE"; exec 9>>"$STATE/redis.lock"; flock 9; }

case "${1:-}" in
  up) serialize; up ;;
  down) serialize; down ;;
  env) is_up || { log "not running: hack/redis.sh up"; exit 1; }; print_env ;;
  status) if is_up; then log "up on port $(port)"; else log "down"; exit 3; fi ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
