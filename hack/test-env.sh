#!/usr/bin/env bash
# Everything the integration tests and the demo need, for real: Redis (and a
# TLS-only, ACL-only second one), PostgreSQL, a Kubernetes control plane, an S3
# server (Versity Gateway) and a trace backend (Jaeger v2), each on free
# loopback ports.
#
#   hack/test-env.sh up       # prints the exports; eval "$(hack/test-env.sh up)"
#   hack/test-env.sh env|status|down
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
COMPONENTS=(redis redis-tls postgres control-plane s3 jaeger)

# A fresh CI machine has none of the servers (nor a browser); Debian packages them all
# (kube-apiserver, Versity Gateway and Jaeger are built from Go modules instead,
# by hack/build-k8s-tools.sh, hack/s3.sh and hack/jaeger.sh).
install_missing() {
  local missing=()
  command -v python3 >/dev/null || missing+=(python3)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  [[ -n ${REDIS_SERVER:-} ]] || command -v redis-server >/dev/null || missing+=(redis-server)
  [[ -n ${ETCD:-} ]] || command -v etcd >/dev/null || missing+=(etcd-server)
  [[ -n ${PG_BIN:-} ]] || compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
  # The console's browser tests drive Debian's chromium with Playwright (no browser download).
  [[ -n ${CHROMIUM:-} ]] || command -v chromium >/dev/null || missing+=(chromium)
  ((${#missing[@]})) || return 0
  if ! command -v apt-get >/dev/null || [[ $(id -u) != 0 ]]; then
    echo "test-env: missing ${missing[*]}; install them (Debian: apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
  echo "test-env: installing ${missing[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# Tools the tests run, built from Go modules and cached (seconds when cached). Built
# here, alongside the servers, so that a cold build (minutes) never runs inside a
# test fixture under pytest's per-test timeout. hack/build-promtool.sh also builds
# the Prometheus server (the same Go module), which the dashboard's tests query.

# All at once: the control plane dominates, the others start while it does.
each() {
  local pids=() c failed=0
  for c in "${COMPONENTS[@]}"; do bash "$HACK/$c.sh" "$1" >/dev/null & pids+=($!); done
  if [[ $1 == up ]]; then
    bash "$HACK/build-helm.sh" >/dev/null & pids+=($!)
    bash "$HACK/build-promtool.sh" promtool prometheus >/dev/null & pids+=($!)
  fi
  for c in "${pids[@]}"; do wait "$c" || failed=1; done
  return "$failed"
}

print_env() {
  for c in "${COMPONENTS[@]}"; do bash "$HACK/$c.sh" env; done
  local prom
  prom="$(bash "$HACK/build-promtool.sh" promtool prometheus)"
  echo "export HELM=$(bash "$HACK/build-helm.sh" | tail -1) PROMTOOL=$(sed -n 1p <<<"$prom") PROMETHEUS=$(sed -n 2p <<<"$prom")"
}

case "${1:-}" in
  up) install_missing; each up; print_env ;;
  down) each down ;;
  env) print_env ;;
  status) each status || exit 3 ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
