#!/usr/bin/env bash
# A real S3 server for tests and demos: Versity Gateway (Apache-2.0) with its
# POSIX backend, on a free loopback port. It is not packaged in Debian or
# PyPI and prebuilt downloads cannot be reached, so it is built from Go
# modules once and cached outside the repo, like hack/build-k8s-tools.sh.
#
#   hack/s3.sh up|down|env|status
#   hack/s3.sh bin                       # build if needed; print the binary's path
#   S3_WEBHOOK_URL=http://…  hack/s3.sh up   # push S3 event notifications there
#   VERSITYGW=/path/to/versitygw         # use a binary you already have
#
# `env` prints S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (the root
# account, generated once), AWS_DEFAULT_REGION and VERSITYGW (tests start
# gateways of their own with it, e.g. one pushing notifications to them).
# State (buckets as directories, IAM, credentials, log) lives under
# ${TIDINGS_STATE_DIR:-.tidings}/s3; `down` keeps it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${TIDINGS_STATE_DIR:-$REPO/.tidings}"
DIR="$STATE/s3"
ENV_FILE="$STATE/s3.env"
VGW_VERSION="${TIDINGS_VERSITYGW_VERSION:-v1.8.0}"
CACHE_DIR="${TIDINGS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings}"
BIN_DIR="$CACHE_DIR/versitygw-$VGW_VERSION/bin"

log() { echo "s3: $*" >&2; }

# Cold: ~4.5 min on 2 cores with an empty Go module cache (mostly downloads);
# afterwards the cached binary is reused at once.
build() {
  if [[ -n ${VERSITYGW:-} ]]; then
    [[ -x $VERSITYGW ]] || { log "VERSITYGW=$VERSITYGW is not an executable"; exit 1; }
    return
  fi
  VERSITYGW="$BIN_DIR/versitygw"
  [[ -x $VERSITYGW ]] && return
  command -v go >/dev/null || {
    log "go is required to build Versity Gateway $VGW_VERSION (install Go >= 1.24), or set VERSITYGW=/path"
    exit 1
  }
  mkdir -p "$BIN_DIR"
  # One build at a time per cache; the loser of the race finds the binary.
  exec 8>>"$BIN_DIR/.lock"
  flock 8
  if [[ ! -x $VERSITYGW ]]; then
    log "building Versity Gateway $VGW_VERSION from Go modules (cold build: several minutes)"
    local out
    out="$(mktemp -d "$BIN_DIR/.build.XXXXXX")"
    # A build cut short leaves no broken binary behind.
    if ! GOBIN="$out" CGO_ENABLED=0 GOFLAGS=-mod=mod \
      go install -trimpath -ldflags "-s -w" "github.com/versity/versitygw/cmd/versitygw@$VGW_VERSION" >&2; then
      rm -rf "$out"
      log "build failed"
      exit 1
    fi
    mv "$out/versitygw" "$VERSITYGW"
    rm -rf "$out"
  fi
  exec 8>&-
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

# Alive, and really the gateway we started: a stale pid file (after a reboot)
# may name someone else's process, which `down` must never kill.
running() {
  local pid
  pid="$(cat "$DIR/versitygw.pid" 2>/dev/null)" || return 1
  grep -qaF -- "$DIR/data" "/proc/$pid/cmdline" 2>/dev/null
}

# Any HTTP answer from the S3 port (an anonymous request gets 403) means it serves.
answers() { curl -s -o /dev/null -m 2 "http://127.0.0.1:$(port)/" 2>/dev/null; }

is_up() { running && answers; }

# The root account, generated once and kept with the data.
credentials() {
  if [[ ! -f $DIR/credentials ]]; then
    mkdir -p "$DIR"
    umask 077
    printf '%s %s\n' "tidings$(openssl rand -hex 4)" "$(openssl rand -hex 20)" > "$DIR/credentials.tmp"
    mv "$DIR/credentials.tmp" "$DIR/credentials"
  fi
  read -r ACCESS_KEY SECRET_KEY < "$DIR/credentials"
}

print_env() {
  credentials
  echo "export S3_ENDPOINT=http://127.0.0.1:$(port) AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY AWS_DEFAULT_REGION=us-east-1 VERSITYGW=$VERSITYGW"
}

up() {
  build
  credentials
  mkdir -p "$DIR/data" "$DIR/iam"
  local webhook="${S3_WEBHOOK_URL:-}"
  if is_up && [[ "$(cat "$DIR/webhook" 2>/dev/null)" == "$webhook" ]]; then
    log "already up on port $(port)"
  else
    running && stop
    local p
    p="$(free_port "$(port)")"
    echo "$p" > "$DIR/port"
    printf '%s' "$webhook" > "$DIR/webhook"
    local args=(--port "127.0.0.1:$p" --iam-dir "$DIR/iam" --quiet)
    # The gateway posts a test event at start and refuses to start when the URL refuses.
    [[ -n $webhook ]] && args+=(--event-webhook-url "$webhook")
    # Credentials through the environment: off the process list. Own session:
    # survives the terminal and Ctrl-C; only `down` stops it. 9>&-: the lock stays here.
    ROOT_ACCESS_KEY_ID="$ACCESS_KEY" ROOT_SECRET_ACCESS_KEY="$SECRET_KEY" \
      setsid "$VERSITYGW" "${args[@]}" posix "$DIR/data" \
      >"$DIR/versitygw.log" 2>&1 </dev/null 9>&- &
    echo $! > "$DIR/versitygw.pid"
    # Up to 60 s: every component starts at once on a fresh CI machine.
    for _ in $(seq 600); do
      is_up && break
      # Alive at all, not `running`: until the fork has exec'd, its command line is
      # still this script's, and a busy machine (CI starting everything at once)
      # once made that look like an exit.
      kill -0 "$(cat "$DIR/versitygw.pid")" 2>/dev/null || break
      sleep 0.1
    done
    if ! is_up; then
      if running; then
        log "running (pid $(cat "$DIR/versitygw.pid")) but not answering on 127.0.0.1:$(port); see $DIR/versitygw.log"
      else
        log "exited at start; see $DIR/versitygw.log"
      fi
      tail -20 "$DIR/versitygw.log" >&2
      exit 1
    fi
    log "up on port $p${webhook:+, notifications to $webhook}"
  fi
  print_env | tee "$ENV_FILE"
}

stop() {
  local pid
  pid="$(cat "$DIR/versitygw.pid")"
  kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$DIR/versitygw.pid"
  log "stopped (pid $pid)"
}

down() {
  if running; then stop; else rm -f "$DIR/versitygw.pid"; log "not running"; fi
  rm -f "$ENV_FILE"
}

# Others may run this in the same tree at the same time: one up/down at once.
# The gateway must not inherit the lock (9>&- where it starts), or it holds it forever.
serialize() { mkdir -p "$STATE"; exec 9>>"$STATE/s3.lock"; flock 9; }

case "${1:-}" in
  up) serialize; up ;;
  down) serialize; down ;;
  bin) build; echo "$VERSITYGW" ;;
  env)
    is_up || { log "not running: hack/s3.sh up"; exit 1; }
    build; print_env ;;
  status) if is_up; then log "up on port $(port)"; else log "down"; exit 3; fi ;;
  *) echo "usage: $0 up|down|env|status|bin" >&2; exit 2 ;;
esac
