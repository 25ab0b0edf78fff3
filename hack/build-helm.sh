#!/usr/bin/env bash
# Builds helm from Go modules at a pinned release and caches it outside the
# repo, as hack/build-k8s-tools.sh does for kube-apiserver: prebuilt downloads
# cannot be reached here, the Go module proxy can. An existing binary is reused.
#
#   hack/build-helm.sh        # prints the path of the helm binary
#   HELM=/path/to/helm        # use a helm you already have (printed as is)
set -euo pipefail

if [[ -n ${HELM:-} ]]; then
  [[ -x $HELM ]] || { echo "HELM=$HELM is not an executable" >&2; exit 1; }
  echo "$HELM"
  exit 0
fi

HELM_VERSION="${TIDINGS_HELM_VERSION:-3.20.2}"
CACHE_DIR="${TIDINGS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings}"
BIN_DIR="$CACHE_DIR/helm-v$HELM_VERSION/bin"

if [[ -x "$BIN_DIR/helm" ]]; then
  echo "$BIN_DIR/helm"
  exit 0
fi

command -v go >/dev/null || { echo "go is required to build helm (install Go >= 1.24)" >&2; exit 1; }

WORK_DIR="$CACHE_DIR/helm-v$HELM_VERSION/build"
mkdir -p "$WORK_DIR" "$BIN_DIR"
cd "$WORK_DIR"

# helm is the only requirement, so minimal version selection picks exactly
# the dependency versions helm's own go.mod pins.
cat > go.mod <<GOMOD
module tidings.dev/helm-tools

go 1.24.0

require helm.sh/helm/v3 v$HELM_VERSION
GOMOD
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "helm.sh/helm/v3/cmd/helm"
GO

echo "building helm v$HELM_VERSION (cold build: a few minutes)" >&2
GOFLAGS=-mod=mod go mod tidy >&2
# As helm's Makefile does: the Kubernetes version `helm template` and `helm lint`
# assume is the one of its client-go (v0.35 -> 1.35), not the 1.20 fallback.
client_go="$(go list -f '{{.Version}}' -m k8s.io/client-go)"
k8s_minor="$(cut -d. -f2 <<<"$client_go")"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
for pkg in pkg/lint/rules pkg/chartutil; do
  ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$k8s_minor"
done
# Build into a temporary name and rename: a build cut short leaves no broken binary behind.
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" \
  -o "$BIN_DIR/helm.tmp" helm.sh/helm/v3/cmd/helm >&2
mv "$BIN_DIR/helm.tmp" "$BIN_DIR/helm"
echo "$BIN_DIR/helm"
