#!/usr/bin/env bash
# Builds promtool (Prometheus's rule checker and rule unit tester) and the
# Prometheus server from Go modules at a pinned release, and caches them outside
# the repo, as hack/build-helm.sh does for helm: prebuilt downloads cannot be
# reached here, the Go module proxy can. Both come from the one Go module, so
# the server costs little more than promtool (its web UI assets are not built:
# the HTTP API is what the tests use). Existing binaries are reused. The chart's
# PrometheusRule is checked with promtool (tests/integration/helm/test_chart_alerts.py);
# its dashboard's queries run on the server (test_chart_dashboard.py,
# hack/render_dashboard.py).
#
#   hack/build-promtool.sh                     # prints the path of the promtool binary
#   hack/build-promtool.sh prometheus          # the path of the Prometheus server
#   hack/build-promtool.sh promtool prometheus # builds both, prints one path a line
#   PROMTOOL=/path/to/promtool PROMETHEUS=/path/to/prometheus  # use binaries you have
set -euo pipefail

(($#)) || set -- promtool
for tool in "$@"; do
  [[ $tool == promtool || $tool == prometheus ]] || {
    echo "usage: $0 [promtool|prometheus]…" >&2
    exit 2
  }
done

# Prometheus's Go module is versioned v0.<minor*100+...>: v0.316.0 is Prometheus 3.16.0.
PROMETHEUS_MODULE_VERSION="${TIDINGS_PROMETHEUS_VERSION:-0.316.0}"
CACHE_DIR="${TIDINGS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings}"
BIN_DIR="$CACHE_DIR/promtool-v$PROMETHEUS_MODULE_VERSION/bin"

# $PROMTOOL or $PROMETHEUS if set, else the cached binary (which may not exist yet).
binary() {
  local given
  given="$(printenv "${1^^}" || true)"
  echo "${given:-$BIN_DIR/$1}"
}
for tool in "$@"; do
  given="$(printenv "${tool^^}" || true)"
  [[ -z $given || -x $given ]] || { echo "${tool^^}=$given is not an executable" >&2; exit 1; }
done

missing=()
for tool in "$@"; do
  [[ -x "$(binary "$tool")" ]] || missing+=("$tool")
done

if ((${#missing[@]})); then
  command -v go >/dev/null || { echo "go is required to build ${missing[*]} (install Go >= 1.24)" >&2; exit 1; }
  mkdir -p "$BIN_DIR"
  # One build at a time per cache (hack/test-env.sh and a test fixture may race);
  # the loser finds the binaries built.
  exec 8>>"$BIN_DIR/.lock"
  flock 8
  missing=()
  for tool in "$@"; do
    [[ -x "$(binary "$tool")" ]] || missing+=("$tool")
  done
fi

if ((${#missing[@]})); then
  WORK_DIR="$CACHE_DIR/promtool-v$PROMETHEUS_MODULE_VERSION/build"
  mkdir -p "$WORK_DIR"
  cd "$WORK_DIR"

  # Prometheus is the only requirement, so minimal version selection picks exactly
  # the dependency versions Prometheus's own go.mod pins.
  cat > go.mod <<GOMOD
module tidings.dev/promtool-tools

go 1.24.0

require github.com/prometheus/prometheus v$PROMETHEUS_MODULE_VERSION
GOMOD
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
GO

  # Measured cold (empty Go build cache, warm module cache, 2 cores at load ~8):
  # promtool 19 min wall (13 min CPU); the server after it 6 min more (2.5 min CPU).
  echo "building ${missing[*]} (prometheus module v$PROMETHEUS_MODULE_VERSION; cold build: several minutes)" >&2
  GOFLAGS=-mod=mod go mod tidy >&2
  for tool in "${missing[@]}"; do
    # Build into a temporary name and rename: a build cut short leaves no broken binary behind.
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
      -o "$BIN_DIR/$tool.tmp" "github.com/prometheus/prometheus/cmd/$tool" >&2
    mv "$BIN_DIR/$tool.tmp" "$BIN_DIR/$tool"
  done
fi

for tool in "$@"; do binary "$tool"; done
