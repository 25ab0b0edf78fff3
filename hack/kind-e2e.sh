#!/usr/bin/env bash
# End to end on a real cluster, for machines with a Docker engine: creates a
# kind cluster, builds the image and loads it, installs the chart, applies
# examples/quickstart with an in-cluster subscriber, sends an event, waits for
# its delivery, and deletes the cluster.
#
#   hack/kind-e2e.sh
#   KEEP_CLUSTER=1 hack/kind-e2e.sh        # leave the cluster up to look around
#   KIND=… HELM=… KUBECTL=… DOCKER=…       # use these binaries
#   KIND_CLUSTER=name IMAGE=tidings:e2e    # cluster and image names
#
# kind and helm are built from Go modules when missing (cached under
# ~/.cache/tidings); the cluster itself pulls kindest/node and redis images.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${KIND_CLUSTER:-tidings-e2e}"
IMAGE="${IMAGE:-tidings:e2e}"
KIND_VERSION="${TIDINGS_KIND_VERSION:-v0.30.0}"
CACHE_DIR="${TIDINGS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings}"
NS=tidings
EVENT_ID="e2e-$(date +%s)-$$"

log() { echo "kind-e2e: $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

DOCKER="${DOCKER:-docker}"
KUBECTL="${KUBECTL:-kubectl}"
command -v "$DOCKER" >/dev/null || fail "docker not found (this script needs a Docker engine)"
"$DOCKER" info >/dev/null 2>&1 || fail "the Docker engine does not answer: is it running?"
command -v "$KUBECTL" >/dev/null || fail "kubectl not found: set KUBECTL=/path/to/kubectl"
command -v curl >/dev/null || fail "curl not found"
if [[ -z ${KIND:-} ]]; then
  KIND="$(command -v kind || true)"
  if [[ -z $KIND ]]; then
    log "building kind $KIND_VERSION from Go modules"
    GOBIN="$CACHE_DIR/kind-$KIND_VERSION/bin" go install "sigs.k8s.io/kind@$KIND_VERSION"
    KIND="$CACHE_DIR/kind-$KIND_VERSION/bin/kind"
  fi
fi
HELM="$(bash "$REPO/hack/build-helm.sh")"

KUBECONFIG_FILE="$(mktemp)"
export KUBECONFIG="$KUBECONFIG_FILE"
PORT_FORWARD=""
# shellcheck disable=SC2317,SC2329  # run by the EXIT trap
cleanup() {
  local status=$?
  if ((status != 0)); then
    log "diagnostics:"
    "$KUBECTL" get pods,eventsources,triggers -A -o wide >&2 || true
    "$KUBECTL" -n "$NS" logs deployment/tidings-operator --tail=50 >&2 || true
    "$KUBECTL" -n "$NS" logs deployment/tidings-dispatcher --tail=50 >&2 || true
  fi
  if [[ -n $PORT_FORWARD ]]; then kill "$PORT_FORWARD" 2>/dev/null || true; fi
  if [[ ${KEEP_CLUSTER:-} == 1 ]]; then
    log "cluster $CLUSTER kept: export KUBECONFIG=$KUBECONFIG_FILE; $KIND delete cluster --name $CLUSTER"
  else
    "$KIND" delete cluster --name "$CLUSTER" >&2 || true
    rm -f "$KUBECONFIG_FILE"
  fi
  exit "$status"
}
trap cleanup EXIT

log "creating kind cluster $CLUSTER"
"$KIND" create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE" --wait 180s

log "building $IMAGE and loading it into the cluster"
"$DOCKER" build --tag "$IMAGE" "$REPO"
"$KIND" load docker-image "$IMAGE" --name "$CLUSTER"

log "installing the chart"
# No metrics-server in kind: a fixed dispatcher count instead of the HPA.
"$HELM" install tidings "$REPO/helm/tidings" --namespace "$NS" --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
  --set dispatcher.autoscaling.enabled=false --set dispatcher.replicas=1 \
  --set redis.persistence.size=1Gi \
  --wait --timeout 5m

log "applying examples/quickstart with an in-cluster subscriber"
"$KUBECTL" create namespace shop
"$KUBECTL" -n shop create configmap subscriber --from-file="$REPO/examples/quickstart/subscriber.py"
"$KUBECTL" -n shop apply -f - <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: subscriber}
spec:
  selector: {matchLabels: {app: subscriber}}
  template:
    metadata: {labels: {app: subscriber}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 10001, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: subscriber
          image: $IMAGE
          imagePullPolicy: Never
          command: [python, /app/subscriber.py, --host, 0.0.0.0, --port, "9000"]
          ports: [{containerPort: 9000}]
          readinessProbe: {tcpSocket: {port: 9000}}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
          volumeMounts: [{name: app, mountPath: /app}]
      volumes: [{name: app, configMap: {name: subscriber}}]
---
apiVersion: v1
kind: Service
metadata: {name: subscriber}
spec:
  selector: {app: subscriber}
  ports: [{port: 9000, targetPort: 9000}]
YAML
"$KUBECTL" apply -f "$REPO/examples/quickstart/"
"$KUBECTL" -n shop rollout status deployment/subscriber --timeout=120s
"$KUBECTL" -n shop wait eventsource/orders --for=condition=Ready --timeout=120s
"$KUBECTL" -n shop wait trigger/print-orders --for=condition=Ready --timeout=120s

log "sending event $EVENT_ID through ingest"
"$KUBECTL" -n "$NS" port-forward service/tidings-ingest 18080:80 >/dev/null 2>&1 &
PORT_FORWARD=$!
token="$("$KUBECTL" -n shop get secret orders-ingest -o jsonpath='{.data.token}' | base64 -d)"
sent=""
for _ in $(seq 30); do
  status="$(curl -s -o /dev/null -w '%{http_code}' -X POST \
    http://127.0.0.1:18080/sources/shop/orders \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -H 'ce-specversion: 1.0' -H "ce-id: $EVENT_ID" -H 'ce-source: /kind-e2e' \
    -H 'ce-type: com.shop.order.created' -d '{"order": 1}' || true)"
  if [[ $status == 202 ]]; then sent=1; break; fi
  sleep 2
done
[[ -n $sent ]] || fail "ingest did not answer 202 (last status: ${status:-none})"

log "waiting for the delivery to the subscriber"
for _ in $(seq 60); do
  if "$KUBECTL" -n shop logs deployment/subscriber | grep -q "id=$EVENT_ID"; then
    "$KUBECTL" -n shop logs deployment/subscriber | grep "id=$EVENT_ID" >&2
    "$KUBECTL" -n shop get triggers >&2
    log "PASSED: event $EVENT_ID delivered"
    exit 0
  fi
  sleep 2
done
fail "event $EVENT_ID was not delivered within 120s"
