#!/usr/bin/env bash
# Builds promtool (Prometheus's rule checker and rule unit tester) from Go modules
# at a pinned release and caches it outside the repo, as hack/build-helm.sh does
# for helm: prebuilt downloads cannot be reached here, the Go module proxy can.
# An existing binary is reused. The chart's PrometheusRule is checked with it
# (tests/integration/helm/test_chart_alerts.py).
#
#   hack/build-promtool.sh        # prints the path of the promtool binary
#   PROMTOOL=/path/to/promtool    # use a promtool you already have (printed as is)
set -euo pipefail

if [[ -n ${PROMTOOL:-} ]]; then
  [[ -x $PROMTOOL ]] || { echo "PROMTOOL=$PROMTOOL is not an executable" >&2; exit 1; }
  echo "$PROMTOOL"
  exit 0
fi

# Prometheus's Go module is versioned v0.<minor*100+...>: v0.316.0 is Prometheus 3.16.0.
PROMETHEUS_MODULE_VERSION="${TIDINGS_PROMETHEUS_VERSION:-0.316.0}"
CACHE_DIR="${TIDINGS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings}"
BIN_DIR="$CACHE_DIR/promtool-v$PROMETHEUS_MODULE_VERSION/bin"

if [[ -x "$BIN_DIR/promtool" ]]; then
  echo "$BIN_DIR/promtool"
  exit 0
fi

command -v go >/dev/null || { echo "go is required to build promtool (install Go >= 1.24)" >&2; exit 1; }

WORK_DIR="$CACHE_DIR/promtool-v$PROMETHEUS_MODULE_VERSION/build"
mkdir -p "$WORK_DIR" "$BIN_DIR"
cd "$WORK_DIR"

# promtool is the only requirement, so minimal version selection picks exactly
# the dependency versions Prometheus's own go.mod pins.
cat > go.mod <<GOMOD
module tidings.dev/promtool-tools

go 1.24.0

require github.com/prometheus/prometheus v$PROMETHEUS_MODULE_VERSION
GOMOD
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
GO

echo "building promtool (prometheus module v$PROMETHEUS_MODULE_VERSION; cold build: several minutes)" >&2
GOFLAGS=-mod=mod go mod tidy >&2
# Build into a temporary name and rename: a build cut short leaves no broken binary behind.
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
  -o "$BIN_DIR/promtool.tmp" github.com/prometheus/prometheus/cmd/promtool >&2
mv "$BIN_DIR/promtool.tmp" "$BIN_DIR/promtool"
echo "$BIN_DIR/promtool"
