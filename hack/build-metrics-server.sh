#!/usr/bin/env bash
# Builds metrics-server (the resource metrics API an HorizontalPodAutoscaler
# reads) from Go modules at a pinned release and caches it outside the repo,
# as hack/build-helm.sh does for helm: prebuilt images cannot be pulled here,
# the Go module proxy can be reached. An existing binary is reused.
#
#   hack/build-metrics-server.sh     # prints the path of the binary
#
# v0.8.x is the line metrics-server documents for Kubernetes 1.31+ (the
# cluster's is 1.34); its go.mod has no replace directives, so `go install`
# of the module builds exactly its pinned dependencies.
set -euo pipefail

MS_VERSION="${TIDINGS_METRICS_SERVER_VERSION:-0.8.0}"
CACHE_DIR="${TIDINGS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings}"
BIN_DIR="$CACHE_DIR/metrics-server-v$MS_VERSION/bin"

if [[ -x "$BIN_DIR/metrics-server" ]]; then
  echo "$BIN_DIR/metrics-server"
  exit 0
fi
command -v go >/dev/null || { echo "go is required to build metrics-server (install Go >= 1.24)" >&2; exit 1; }
mkdir -p "$BIN_DIR"
# One build at a time per cache; the loser of the race finds the binary.
exec 8>>"$BIN_DIR/.lock"
flock 8
if [[ ! -x "$BIN_DIR/metrics-server" ]]; then
  echo "building metrics-server v$MS_VERSION from Go modules (cold build: a few minutes)" >&2
  out="$(mktemp -d "$BIN_DIR/.build.XXXXXX")"
  trap 'rm -rf "$out"' EXIT
  # The version its Makefile stamps (client-go's version package), so /version tells.
  (cd "$out" && GOBIN="$out" CGO_ENABLED=0 go install -trimpath \
    -ldflags "-s -w -X k8s.io/client-go/pkg/version.gitVersion=v$MS_VERSION" \
    "sigs.k8s.io/metrics-server/cmd/metrics-server@v$MS_VERSION") >&2
  # A build cut short leaves no broken binary behind.
  mv "$out/metrics-server" "$BIN_DIR/metrics-server"
fi
echo "$BIN_DIR/metrics-server"
