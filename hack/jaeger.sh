#!/usr/bin/env bash
# A real trace backend for tests and demos: Jaeger v2 all-in-one (an
# OpenTelemetry Collector build with Jaeger's storage and query API), memory
# storage, every port on free loopback ports. Not packaged in Debian or PyPI
# and prebuilt downloads cannot be reached, so it is built from Go modules once
# and cached outside the repo, like hack/s3.sh.
#
#   hack/jaeger.sh up|down|env|status
#   hack/jaeger.sh bin                 # build if needed; print the binary's path
#   JAEGER=/path/to/jaeger             # use a binary you already have
#
# `env` prints JAEGER_OTLP_HTTP (http://127.0.0.1:PORT, OTLP over HTTP: POST
# /v1/traces), JAEGER_OTLP_GRPC (127.0.0.1:PORT) and JAEGER_QUERY (the query
# API and UI: GET /api/v3/traces/{traceId}). State lives under
# ${TIDINGS_STATE_DIR:-.tidings}/jaeger; traces are kept in memory only.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${TIDINGS_STATE_DIR:-$REPO/.tidings}"
DIR="$STATE/jaeger"
ENV_FILE="$STATE/jaeger.env"
# Jaeger v2 ships from the module's v1.x tags: v1.76.0 is Jaeger v2.13.0.
JAEGER_VERSION="${TIDINGS_JAEGER_VERSION:-v1.76.0}"
CACHE_DIR="${TIDINGS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings}"
BIN_DIR="$CACHE_DIR/jaeger-$JAEGER_VERSION/bin"

log() { echo "jaeger: $*" >&2; }

# Jaeger's go.mod has a replace directive, so `go install pkg@version` refuses
# it: build it as a tool of a throwaway module that carries the same replace.
# Cold: 69 min wall (12 min CPU) on 2 cores at load ~20 here, ~2 min of it
# downloads; then the cached binary is reused at once.
build() {
  if [[ -n ${JAEGER:-} ]]; then
    [[ -x $JAEGER ]] || { log "JAEGER=$JAEGER is not an executable"; exit 1; }
    return
  fi
  JAEGER="$BIN_DIR/jaeger"
  [[ -x $JAEGER ]] && return
  command -v go >/dev/null || {
    log "go is required to build Jaeger $JAEGER_VERSION (install Go >= 1.24), or set JAEGER=/path"
    exit 1
  }
  mkdir -p "$BIN_DIR"
  # One build at a time per cache; the loser of the race finds the binary.
  exec 8>>"$BIN_DIR/.lock"
  flock 8
  if [[ ! -x $JAEGER ]]; then
    log "building Jaeger $JAEGER_VERSION from Go modules (cold build: several minutes)"
    local work started=$SECONDS
    work="$(mktemp -d "$BIN_DIR/.build.XXXXXX")"
    # A build cut short leaves no broken binary behind.
    if ! (
      cd "$work" &&
        go mod init tidings.local/jaeger-build >/dev/null 2>&1 &&
        go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" >&2 &&
        go mod edit -replace github.com/Shopify/sarama=github.com/Shopify/sarama@v1.33.0 &&
        GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/jaeger" \
          github.com/jaegertracing/jaeger/cmd/jaeger >&2
    ); then
      rm -rf "$work"
      log "build failed"
      exit 1
    fi
    mv "$work/jaeger" "$JAEGER"
    rm -rf "$work"
    log "built in $((SECONDS - started))s: $JAEGER"
  fi
  exec 8>&-
}

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

# ports: otlp-http otlp-grpc query-http query-grpc health
ports() { cat "$DIR/ports" 2>/dev/null || echo "0 0 0 0 0"; }
port_of() { ports | cut -d' ' -f"$1"; }

# Alive, and really the Jaeger we started (a stale pid may name another process).
running() {
  local pid
  pid="$(cat "$DIR/jaeger.pid" 2>/dev/null)" || return 1
  grep -qaF -- "$DIR/config.yaml" "/proc/$pid/cmdline" 2>/dev/null
}

answers() { curl -sf -o /dev/null -m 2 "http://127.0.0.1:$(port_of 5)/status" 2>/dev/null; }

is_up() { running && answers; }

print_env() {
  echo "export JAEGER_OTLP_HTTP=http://127.0.0.1:$(port_of 1) JAEGER_OTLP_GRPC=127.0.0.1:$(port_of 2) JAEGER_QUERY=http://127.0.0.1:$(port_of 3) JAEGER=$JAEGER"
}

write_config() {
  local otlp_http=$1 otlp_grpc=$2 query_http=$3 query_grpc=$4 health=$5
  cat > "$DIR/config.yaml" <<YAML
# Written by hack/jaeger.sh: Jaeger v2, memory storage, loopback ports only.
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:$query_http
    grpc:
      endpoint: 127.0.0.1:$query_grpc
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:$health
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$otlp_grpc
      http:
        endpoint: 127.0.0.1:$otlp_http
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
YAML
}

up() {
  build
  mkdir -p "$DIR"
  if is_up; then
    log "already up (query on port $(port_of 3))"
  else
    running && stop
    local old new=() i p
    read -r -a old <<< "$(ports)"
    for i in 0 1 2 3 4; do
      # Distinct ports: a free port is free until bound, so ask again on a clash.
      p="$(free_port "${old[$i]}")"
      while [[ " ${new[*]} " == *" $p "* ]]; do p="$(free_port 0)"; done
      new+=("$p")
    done
    echo "${new[*]}" > "$DIR/ports"
    write_config "${new[@]}"
    # Own session: survives the terminal; only `down` stops it. 9>&-: the lock stays here.
    setsid "$JAEGER" --config "$DIR/config.yaml" >"$DIR/jaeger.log" 2>&1 </dev/null 9>&- &
    echo $! > "$DIR/jaeger.pid"
    # 60 s: every component starts at once on a freshly booted CI machine.
    for _ in $(seq 600); do
      is_up && break
      # Alive at all, not `running`: until the fork has exec'd, its command line is
      # still this script's, and a busy machine (CI starting everything at once)
      # once made that look like an exit.
      kill -0 "$(cat "$DIR/jaeger.pid")" 2>/dev/null || break
      sleep 0.1
    done
    is_up || { log "did not start; see $DIR/jaeger.log"; tail -20 "$DIR/jaeger.log" >&2; exit 1; }
    log "up: OTLP http $(port_of 1), grpc $(port_of 2); query $(port_of 3)"
  fi
  print_env | tee "$ENV_FILE"
}

stop() {
  local pid
  pid="$(cat "$DIR/jaeger.pid")"
  kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$DIR/jaeger.pid"
  log "stopped (pid $pid)"
}

down() {
  if running; then stop; else rm -f "$DIR/jaeger.pid"; log "not running"; fi
  rm -f "$ENV_FILE"
}

# One up/down at a time per tree. Jaeger must not inherit the lock (9>&- where it starts).
serialize() { mkdir -p "$STATE"; exec 9>>"$STATE/jaeger.lock"; flock 9; }

case "${1:-}" in
  up) serialize; up ;;
  down) serialize; down ;;
  bin) build; echo "$JAEGER" ;;
  env)
    is_up || { log "not running: hack/jaeger.sh up"; exit 1; }
    build; print_env ;;
  status) if is_up; then log "up (query on port $(port_of 3))"; else log "down"; exit 3; fi ;;
  *) echo "usage: $0 up|down|env|status|bin" >&2; exit 2 ;;
esac
