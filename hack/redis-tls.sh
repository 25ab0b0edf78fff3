#!/usr/bin/env bash
# Redis as a careful production runs it: TLS only (no plaintext port), the
# default user off, one ACL user with a password. For the tests that prove
# every Tidings process connects that way. A private CA, the server's
# certificate (127.0.0.1, localhost) and a client certificate are made with
# openssl under ${TIDINGS_STATE_DIR:-.tidings}/redis-tls on first `up`.
# Clients are verified when they present a certificate (tls-auth-clients
# optional), so the same server serves password-only and mTLS clients.
#
#   hack/redis-tls.sh up|down|env|status
#   REDIS_SERVER=/path/to/redis-server   # use another binary
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${TIDINGS_STATE_DIR:-$REPO/.tidings}"
DIR="$STATE/redis-tls"
REDIS_SERVER="${REDIS_SERVER:-redis-server}"
USER_NAME=tidings

log() { echo "redis-tls: $*" >&2; }

free_port() {
  python3 - "${1:-0}" <<'PY'
import socket, sys
for port in (int(sys.argv[1]), 0):
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            print(s.getsockname()[1])
            break
    except OSError:
        continue
PY
}

port() { cat "$DIR/port" 2>/dev/null || echo 0; }
password() { cat "$DIR/password"; }

ping() {
  redis-cli --tls --cacert "$DIR/ca.crt" -h 127.0.0.1 -p "$(port)" \
    --user "$USER_NAME" --pass "$(password)" --no-auth-warning ping 2>/dev/null
}

is_up() {
  [[ -f $DIR/redis.pid ]] && kill -0 "$(cat "$DIR/redis.pid")" 2>/dev/null && [[ "$(ping)" == PONG ]]
}

# A CA, a server certificate for 127.0.0.1 and localhost, a client certificate;
# made once (the tests read them from the paths `env` prints).
make_pki() {
  [[ -f $DIR/client.crt ]] && return 0
  (
    cd "$DIR"
    umask 077
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 3650 \
      -subj "/CN=Tidings test Redis CA" -keyout ca.key -out ca.crt 2>/dev/null
    for who in server client; do
      openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -subj "/CN=tidings-redis-$who" -keyout "$who.key" -out "$who.csr" 2>/dev/null
    done
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
    printf 'extendedKeyUsage=clientAuth\n' > client.ext
    for who in server client; do
      openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$who.ext" -out "$who.crt" 2>/dev/null
    done
    rm -f ./*.csr ./*.ext ca.srl
    chmod 644 ca.crt server.crt client.crt
  )
  python3 -c 'import secrets; print(secrets.token_hex(24))' > "$DIR/password"
  chmod 600 "$DIR/password"
}

# TLS_REDIS_*, not REDIS_*: the REDIS_* names are the settings every Tidings
# process reads, and the tests' other processes must keep using plain Redis.
print_env() {
  echo "export TLS_REDIS_URL=rediss://127.0.0.1:$(port)/0 TLS_REDIS_USERNAME=$USER_NAME" \
    "TLS_REDIS_PASSWORD=$(password) TLS_REDIS_CA_FILE=$DIR/ca.crt" \
    "TLS_REDIS_CLIENT_CERT_FILE=$DIR/client.crt TLS_REDIS_CLIENT_KEY_FILE=$DIR/client.key"
}

up() {
  mkdir -p "$DIR"
  make_pki
  if is_up; then
    log "already up on port $(port)"
  else
    local p
    p="$(free_port "$(port)")"
    echo "$p" > "$DIR/port"
    # The ACL file keeps the password off the command line (ps shows arguments).
    printf 'user default off\nuser %s on >%s ~* &* +@all\n' "$USER_NAME" "$(password)" > "$DIR/users.acl"
    chmod 600 "$DIR/users.acl"
    "$REDIS_SERVER" --bind 127.0.0.1 --port 0 --tls-port "$p" \
      --tls-cert-file "$DIR/server.crt" --tls-key-file "$DIR/server.key" \
      --tls-ca-cert-file "$DIR/ca.crt" --tls-auth-clients optional \
      --aclfile "$DIR/users.acl" --dir "$DIR" \
      --appendonly yes --appendfsync everysec --save '' \
      --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" 9>&-
    for _ in $(seq 300); do is_up && break; sleep 0.1; done
    is_up || { log "did not start; see $DIR/redis.log"; tail -20 "$DIR/redis.log" >&2; exit 1; }
    log "up on port $p (TLS only, ACL user $USER_NAME)"
  fi
  print_env
}

down() {
  local pid
  pid="$(cat "$DIR/redis.pid" 2>/dev/null)" || { log "not running"; return 0; }
  if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server ]] && kill "$pid"; then
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$DIR/redis.pid"
  log "down"
}

serialize() { mkdir -p "$STATE"; exec 9>>"$STATE/redis-tls.lock"; flock 9; }

case "${1:-}" in
  up) serialize; up ;;
  down) serialize; down ;;
  env) is_up || { log "not running: hack/redis-tls.sh up"; exit 1; }; print_env ;;
  status) if is_up; then log "up on port $(port)"; else log "down"; exit 3; fi ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
