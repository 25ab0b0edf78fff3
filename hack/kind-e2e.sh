#!/usr/bin/env bash
# The in-cluster tests (tests/e2e) on a throwaway kind cluster, for machines
# with a Docker engine. The tests are the ones hack/test.sh runs on
# hack/cluster.sh: only creating the cluster and loading the image differ.
# Creates the cluster, builds the image from the Dockerfile and loads it (and
# a second tag of it, for the rolling-upgrade test), writes the values that
# point the chart at it, runs pytest tests/e2e, and deletes the cluster.
#
#   hack/kind-e2e.sh [pytest args…]
#   KEEP_CLUSTER=1 hack/kind-e2e.sh        # leave the cluster up to look around
#   KIND=… HELM=… KUBECTL=… DOCKER=…       # use these binaries
#   KIND_CLUSTER=name IMAGE=tidings:e2e    # cluster and image names
#
# kind, helm and kubectl are built from Go modules when missing (cached under
# ~/.cache/tidings); the cluster pulls kindest/node, redis and postgres images.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${KIND_CLUSTER:-tidings-e2e}"
IMAGE="${IMAGE:-tidings:e2e}"
KIND_VERSION="${TIDINGS_KIND_VERSION:-v0.30.0}"
CACHE_DIR="${TIDINGS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings}"

log() { echo "kind-e2e: $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

DOCKER="${DOCKER:-docker}"
command -v "$DOCKER" >/dev/null || fail "docker not found (this script needs a Docker engine; without one: hack/cluster.sh)"
"$DOCKER" info >/dev/null 2>&1 || fail "the Docker engine does not answer: is it running?"
if [[ -z ${KIND:-} ]]; then
  KIND="$(command -v kind || true)"
  if [[ -z $KIND ]]; then
    log "building kind $KIND_VERSION from Go modules"
    GOBIN="$CACHE_DIR/kind-$KIND_VERSION/bin" go install "sigs.k8s.io/kind@$KIND_VERSION"
    KIND="$CACHE_DIR/kind-$KIND_VERSION/bin/kind"
  fi
fi
KUBECTL="${KUBECTL:-$(command -v kubectl || echo "$(bash "$REPO/hack/build-k8s-tools.sh")/kubectl")}"
HELM="$(bash "$REPO/hack/build-helm.sh")"

STATE="$(mktemp -d)"
export KUBECONFIG="$STATE/kubeconfig"
# shellcheck disable=SC2317,SC2329  # run by the EXIT trap
cleanup() {
  local status=$?
  if [[ ${KEEP_CLUSTER:-} == 1 ]]; then
    log "cluster $CLUSTER kept: export KUBECONFIG=$KUBECONFIG; $KIND delete cluster --name $CLUSTER"
  else
    "$KIND" delete cluster --name "$CLUSTER" >&2 || true
    rm -rf "$STATE"
  fi
  exit "$status"
}
trap cleanup EXIT

log "creating kind cluster $CLUSTER"
"$KIND" create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait 180s

log "building $IMAGE and loading it into the cluster"
# The classic builder: BuildKit would fetch the `# syntax=` frontend.
DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" "$DOCKER" build --tag "$IMAGE" "$REPO"
"$DOCKER" tag "$IMAGE" "$IMAGE-upgrade"
"$KIND" load docker-image "$IMAGE" "$IMAGE-upgrade" --name "$CLUSTER"

# What hack/cluster.sh env prints, for kind.
cat > "$STATE/local-values.yaml" <<YAML
image:
  repository: ${IMAGE%:*}
  tag: ${IMAGE##*:}
  pullPolicy: Never
sources:
  imagePullPolicy: Never
YAML
export HELM KUBECTL
export TIDINGS_LOCAL_VALUES="$STATE/local-values.yaml"
export TIDINGS_E2E_UPGRADE_TAG="${IMAGE##*:}-upgrade"
export TIDINGS_E2E_POSTGRES_IMAGE="${TIDINGS_E2E_POSTGRES_IMAGE:-postgres:15-bookworm}"

# The test venv, as hack/test.sh makes it.
cd "$REPO"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
stamp=.venv/.tidings-test-deps
if [[ "$(cat "$stamp" 2>/dev/null)" != "$(sha256sum pyproject.toml)" ]]; then
  .venv/bin/python -m pip install -q -e '.[test]'
  sha256sum pyproject.toml > "$stamp"
fi
(($#)) || set -- -q
log "running tests/e2e"
.venv/bin/python -m pytest "$@" tests/e2e
