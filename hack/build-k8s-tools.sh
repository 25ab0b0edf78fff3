#!/usr/bin/env bash
# Builds kube-apiserver and kubectl from Go modules at a pinned release, and
# caches them outside the repo. Neither is packaged in Debian or PyPI, and
# prebuilt downloads cannot be reached, so we compile them (as envtest would
# run them). Re-running is cheap: an existing binary is reused.
#
#   hack/build-k8s-tools.sh            # prints the bin dir
#   KUBE_APISERVER=/path KUBECTL=/path # use binaries you already have
set -euo pipefail

K8S_VERSION="${TIDINGS_K8S_VERSION:-1.34.4}"
CACHE_DIR="${TIDINGS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings}"
BIN_DIR="$CACHE_DIR/k8s-v$K8S_VERSION/bin"

if [[ -x "$BIN_DIR/kube-apiserver" && -x "$BIN_DIR/kubectl" ]]; then
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null || { echo "go is required to build kube-apiserver (install Go >= 1.24)" >&2; exit 1; }

WORK_DIR="$CACHE_DIR/k8s-v$K8S_VERSION/build"
mkdir -p "$WORK_DIR" "$BIN_DIR"
cd "$WORK_DIR"

# k8s.io/kubernetes replaces its staging modules with local paths; replaces in a
# dependency are ignored, so map each staging module to its matching v0.x tag.
STAGING_VERSION="v0.${K8S_VERSION#1.}"
GOMOD_FILE="$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
{
  echo "module tidings.dev/k8s-tools"
  echo
  echo "go 1.24.0"
  echo
  echo "require k8s.io/kubernetes v$K8S_VERSION"
  echo
  echo "replace ("
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"$STAGING_VERSION"'#p' "$GOMOD_FILE"
  echo ")"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO

echo "building kube-apiserver and kubectl v$K8S_VERSION (cold build: several minutes)" >&2
GOFLAGS=-mod=mod go mod tidy >&2
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w \
  -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION \
  -X k8s.io/component-base/version.gitMajor=1 \
  -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#1.}" \
  -o "$BIN_DIR/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl >&2
echo "$BIN_DIR"
