#!/usr/bin/env bash
# Builds Kubernetes binaries from Go modules at a pinned release, and caches
# them outside the repo. None is packaged in Debian or PyPI, and prebuilt
# downloads cannot be reached, so we compile them. Re-running is cheap: an
# existing binary is reused, and only the missing ones are built (in one
# `go build`, so the packages they share compile once).
#
#   hack/build-k8s-tools.sh            # kube-apiserver and kubectl; prints the bin dir
#   hack/build-k8s-tools.sh node       # also what a node runs: kubelet, kube-proxy,
#                                      # kube-controller-manager, kube-scheduler (hack/cluster.sh)
#   hack/build-k8s-tools.sh CMD…       # these commands of k8s.io/kubernetes/cmd
#   KUBE_APISERVER=/path KUBECTL=/path # use binaries you already have (hack/control-plane.sh)
set -euo pipefail

K8S_VERSION="${TIDINGS_K8S_VERSION:-1.34.4}"
CACHE_DIR="${TIDINGS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings}"
BIN_DIR="$CACHE_DIR/k8s-v$K8S_VERSION/bin"

wanted=(kube-apiserver kubectl)
for arg in "$@"; do
  case "$arg" in
    node) wanted+=(kubelet kube-proxy kube-controller-manager kube-scheduler) ;;
    *) wanted+=("$arg") ;;
  esac
done
missing=()
for cmd in "${wanted[@]}"; do
  [[ -x "$BIN_DIR/$cmd" ]] || [[ " ${missing[*]} " == *" $cmd "* ]] || missing+=("$cmd")
done
if ((${#missing[@]} == 0)); then
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null || { echo "go is required to build ${missing[*]} (install Go >= 1.24)" >&2; exit 1; }

WORK_DIR="$CACHE_DIR/k8s-v$K8S_VERSION/build"
mkdir -p "$WORK_DIR" "$BIN_DIR"
cd "$WORK_DIR"
# One build at a time in this directory (go.mod is rewritten below).
exec 8>>"$WORK_DIR/.lock"
flock 8

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
# Every command this script knows, so go.sum covers whichever is built.
{
  printf '//go:build tools\n\npackage tools\n\nimport (\n'
  for cmd in kube-apiserver kubectl kubelet kube-proxy kube-controller-manager kube-scheduler "$@"; do
    [[ $cmd == node ]] || printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd"
  done | sort -u
  printf ')\n'
} > tools.go

echo "building ${missing[*]} v$K8S_VERSION (cold build: several minutes)" >&2
GOFLAGS=-mod=mod go mod tidy >&2
pkgs=()
for cmd in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd"); done
# Build into a temporary directory and move: a build cut short leaves no broken binary behind.
OUT="$(mktemp -d "$BIN_DIR/.build.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w \
  -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION \
  -X k8s.io/component-base/version.gitMajor=1 \
  -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#1.}" \
  -o "$OUT/" "${pkgs[@]}" >&2
mv "$OUT"/* "$BIN_DIR/"
echo "$BIN_DIR"
