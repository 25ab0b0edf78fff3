#!/usr/bin/env bash
# A fast HTTP subscriber for benchmarks (hack/bench_scale.py --receiver go): a
# dozen lines of Go's net/http that read each POST and answer 200, and count.
# An aiohttp subscriber spent 180-188 µs of CPU per request in bench_scale's runs
# (this one 52-99 µs, both under load): more than half a dispatcher's, taken
# from the same 2 cores, so a scale-out run would mostly measure it.
# Standard library only (no modules fetched); built once and cached outside the
# repo, like hack/build-promtool.sh. Prints the binary's path.
#
#   hack/build-receiver.sh            # -> ~/.cache/tidings/receiver-v1/bin/receiver
#   receiver -listen 127.0.0.1:PORT   # POST anything: 200; GET /stats: {"count": N}
set -euo pipefail

VERSION=v1 # bump when the source below changes
CACHE_DIR="${TIDINGS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings}"
BIN_DIR="$CACHE_DIR/receiver-$VERSION/bin"
BIN="$BIN_DIR/receiver"

log() { echo "build-receiver: $*" >&2; }

if [[ ! -x $BIN ]]; then
  command -v go >/dev/null || { log "go is required (Go >= 1.21), or run the benchmark with --receiver python"; exit 1; }
  mkdir -p "$BIN_DIR"
  exec 8>>"$BIN_DIR/.lock"
  flock 8
  if [[ ! -x $BIN ]]; then
    src="$(mktemp -d)"
    trap 'rm -rf "$src"' EXIT
    cat >"$src/main.go" <<'GO'
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"sync/atomic"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	flag.Parse()
	var count atomic.Int64
	http.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"count\": %d}", count.Load())
	})
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		count.Add(1)
		w.WriteHeader(http.StatusOK)
	})
	log.Fatal(http.ListenAndServe(*listen, nil))
}
GO
    (cd "$src" && GOTOOLCHAIN=local GO111MODULE=off CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$src/receiver" main.go) >&2 ||
      { log "build failed"; exit 1; }
    mv "$src/receiver" "$BIN"
  fi
  exec 8>&-
fi
echo "$BIN"
