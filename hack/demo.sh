#!/usr/bin/env bash
# The main job (README): from a fresh clone, run examples/quickstart with
# `tidings dev`, post a few events with `tidings send`, and show the tiny
# subscriber receiving them. Makes the venv and installs redis-server if needed
# (apt-get, as root); stops everything it started, on success or failure.
#
#   bash hack/demo.sh [EVENTS]        # default 3 events
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EVENTS="${1:-3}"

say() { echo "demo: $*"; }

# --- the venv (Debian's python3 lacks venv until python3-venv is installed) ---
if [[ ! -x .venv/bin/python ]] && ! python3 -m venv .venv 2>/dev/null; then
  if ! command -v apt-get >/dev/null || [[ $(id -u) != 0 ]]; then
    say "python3 -m venv failed; install python3-venv (sudo apt-get install python3-venv)" >&2
    exit 1
  fi
  rm -rf .venv
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
  python3 -m venv .venv
fi
PY=(.venv/bin/python)
if ! "${PY[@]}" -c 'import tidings.cli.dev' 2>/dev/null; then
  say "installing tidings into .venv"
  "${PY[@]}" -m pip install -q -e .
fi

# --- redis-server: `tidings dev` starts a private one, it only has to exist ---
# (REDIS_URL is ignored on purpose: dev owns the routing table of its Redis.)
unset REDIS_URL
if ! command -v redis-server >/dev/null; then
  if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    say "installing redis-server (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
  else
    say "redis-server is missing: sudo apt-get install redis-server (or brew install redis)" >&2
    exit 1
  fi
fi

# --- run it: own state dir and free ports, so nothing of yours is touched ---
STATE="$(mktemp -d "${TMPDIR:-/tmp}/tidings-demo.XXXXXX")"
free_port() { "${PY[@]}" -c 'from tidings.cli.redis_server import free_port; print(free_port())'; }
INGEST_PORT="$(free_port)"
SUBSCRIBER_PORT="$(free_port)"
DEV_PID="" SUBSCRIBER_PID=""

cleanup() {
  local rc=$?
  # SIGTERM: dev drains deliveries, stops its redis-server; then the subscriber.
  if [[ -n $DEV_PID ]] && kill -0 "$DEV_PID" 2>/dev/null; then
    kill -TERM "$DEV_PID"
    for _ in $(seq 150); do kill -0 "$DEV_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DEV_PID" 2>/dev/null || true
  fi
  if [[ -n $SUBSCRIBER_PID ]]; then kill -TERM "$SUBSCRIBER_PID" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  if ((rc != 0)); then
    say "failed; the logs:" >&2
    sed 's/^/  [dev] /' "$STATE/dev.log" >&2 2>/dev/null || true
    sed 's/^/  [subscriber] /' "$STATE/subscriber.log" >&2 2>/dev/null || true
  fi
  rm -rf "$STATE"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Wait until FILE has COUNT lines matching PATTERN, or fail after SECONDS.
wait_for() {
  local file=$1 pattern=$2 count=$3 seconds=$4
  for _ in $(seq $((seconds * 10))); do
    (($(grep -c -E "$pattern" "$file" 2>/dev/null || true) >= count)) && return 0
    sleep 0.1
  done
  say "timed out after ${seconds}s waiting for '$pattern' in $file" >&2
  return 1
}

"${PY[@]}" examples/quickstart/subscriber.py --port "$SUBSCRIBER_PORT" \
  > "$STATE/subscriber.log" 2>&1 &
SUBSCRIBER_PID=$!

say "tidings dev -f examples/quickstart (ingest on 127.0.0.1:$INGEST_PORT, subscriber on :$SUBSCRIBER_PORT)"
.venv/bin/tidings dev -f examples/quickstart --listen "127.0.0.1:$INGEST_PORT" \
  --service "subscriber=http://127.0.0.1:$SUBSCRIBER_PORT" --state-dir "$STATE" \
  > "$STATE/dev.log" 2>&1 &
DEV_PID=$!
wait_for "$STATE/dev.log" "ready; Ctrl-C stops" 1 60
wait_for "$STATE/subscriber.log" "listening" 1 10
grep -v -E '^[0-9-]+ [0-9:,]+ ' "$STATE/dev.log" | sed 's/^/  [dev] /'

echo
say "sending $EVENTS events with tidings send"
for n in $(seq "$EVENTS"); do
  TIDINGS_STATE_DIR="$STATE" .venv/bin/tidings send shop/orders \
    --type com.shop.order.created --data "{\"order\": $n, \"total\": $((n * 10))}" |
    sed 's/^/  [send] /'
done

wait_for "$STATE/subscriber.log" "received com.shop.order.created" "$EVENTS" 30
echo
say "what tidings dev printed (<- stored, -> delivery attempts):"
grep -E '^(<-|->) ' "$STATE/dev.log" | sed 's/^/  [dev] /'
say "what the subscriber received:"
grep "received" "$STATE/subscriber.log" | sed 's/^/  [subscriber] /'
echo
say "$EVENTS events sent, $EVENTS delivered; stopping"
