#!/usr/bin/env bash
# A real PostgreSQL for tests and demos, set up for the logical-decoding source
# (wal_level=logical, room for many slots), on a free loopback port with trust
# auth. State lives under ${TIDINGS_STATE_DIR:-.tidings}/postgres; `down` keeps it.
#
#   hack/postgres.sh up|down|env|status
#   PG_BIN=/usr/lib/postgresql/15/bin    # use another installation
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${TIDINGS_STATE_DIR:-$REPO/.tidings}"
DIR="$STATE/postgres"
ENV_FILE="$STATE/postgres.env"

log() { echo "postgres: $*" >&2; }

# Debian installs server binaries off PATH; prefer 15, else the newest there.
if [[ -z ${PG_BIN:-} ]]; then
  PG_BIN=/usr/lib/postgresql/15/bin
  [[ -x $PG_BIN/postgres ]] || PG_BIN="$(find /usr/lib/postgresql/*/bin -maxdepth 0 2>/dev/null | sort -V | tail -1)"
fi

# postgres refuses to run as root; as root, run it as the `postgres` OS user
# (created by the Debian package) and hand it the state directory.
as_pg() {
  if [[ $(id -u) == 0 ]]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

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

# The data dir must be reachable by the postgres user. A repo under /root is
# not, so then the data goes to a private dir in /var/tmp and we record where.
data_dir() {
  if [[ -f $DIR/datadir ]]; then cat "$DIR/datadir"; return; fi
  local data="$DIR/data"
  if [[ $(id -u) == 0 ]] && ! runuser -u postgres -- test -x "$DIR"; then
    data="$(mktemp -d /var/tmp/tidings-postgres.XXXXXX)/data"
    chown postgres: "$(dirname "$data")"
  fi
  echo "$data" > "$DIR/datadir"
  echo "$data"
}

is_up() {
  [[ -f $DIR/datadir ]] && as_pg "$PG_BIN/pg_ctl" -D "$(cat "$DIR/datadir")" status >/dev/null 2>&1 &&
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$(port)"
}

print_env() { echo "export TIDINGS_PG_DSN=postgresql://postgres@127.0.0.1:$(port)/postgres"; }

up() {
  [[ -x $PG_BIN/postgres ]] || { log "no PostgreSQL under ${PG_BIN:-/usr/lib/postgresql}: apt-get install postgresql"; exit 1; }
  mkdir -p "$DIR"
  [[ $(id -u) == 0 ]] && chown postgres: "$DIR"
  if is_up; then
    log "already up on port $(port)"
  else
    local data p
    data="$(data_dir)"
    if [[ ! -f $data/PG_VERSION ]]; then
      # Trust on loopback only (initdb's default hba lines); no password to manage.
      as_pg "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 \
        --locale=C.UTF-8 --no-sync >"$DIR/initdb.log" 2>&1 ||
        { log "initdb failed; see $DIR/initdb.log"; tail -20 "$DIR/initdb.log" >&2; exit 1; }
      echo "include_if_exists = 'tidings.conf'" | as_pg tee -a "$data/postgresql.conf" >/dev/null
    fi
    p="$(free_port "$(port)")"
    echo "$p" > "$DIR/port"
    # Rewritten on every start, so the port follows what is free. No unix
    # socket: its path length limit breaks in deep checkouts, and TCP is enough.
    # fsync=off: a test database that survives process crashes, not power loss.
    as_pg tee "$data/tidings.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $p
unix_socket_directories = ''
wal_level = logical
max_replication_slots = 32
max_wal_senders = 32
fsync = off
CONF
    # pg_ctl -w returns once the server accepts connections; postmaster.pid holds its pid.
    local pg_log
    pg_log="$(dirname "$data")/postgres.log"
    as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$pg_log" -w -t 60 start >/dev/null 9>&- ||
      { log "did not start; see $pg_log"; tail -20 "$pg_log" >&2; exit 1; }
    log "up on port $p (data: $data)"
  fi
  print_env | tee "$ENV_FILE"
}

down() {
  if [[ -f $DIR/datadir ]] && as_pg "$PG_BIN/pg_ctl" -D "$(cat "$DIR/datadir")" status >/dev/null 2>&1; then
    # Fast shutdown: ends sessions and stops exactly the postmaster of this data dir.
    as_pg "$PG_BIN/pg_ctl" -D "$(cat "$DIR/datadir")" -m fast -w stop >/dev/null
    log "down"
  else
    log "not running"
  fi
  rm -f "$ENV_FILE"
}

# Others may run this in the same tree at the same time: one up/down at once.
# The server must not inherit the lock (9>&- where it starts), or it holds it forever.
serialize() { mkdir -p "$STATE"; exec 9>>"$STATE/postgres.lock"; flock 9; }

case "${1:-}" in
  up) serialize; up ;;
  down) serialize; down ;;
  env) is_up || { log "not running: hack/postgres.sh up"; exit 1; }; print_env ;;
  status) if is_up; then log "up on port $(port)"; else log "down"; exit 3; fi ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
