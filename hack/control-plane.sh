#!/usr/bin/env bash
# A real Kubernetes control plane for tests and demos, the way envtest runs
# one: etcd + kube-apiserver on loopback, no kubelet, no controller-manager.
# Authentication is a static admin token (system:masters); authorization is
# real RBAC, so least-privilege tests with --as mean something.
#
#   hack/control-plane.sh up|down|env|status
#   KUBE_APISERVER=… KUBECTL=… ETCD=…    # use binaries you already have
#
# State (certs, etcd data, logs, kubeconfig) lives under
# ${TIDINGS_STATE_DIR:-.tidings}/control-plane; `down` keeps it, so objects
# survive a restart. Delete that directory for a blank cluster.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${TIDINGS_STATE_DIR:-$REPO/.tidings}"
DIR="$STATE/control-plane"
PKI="$DIR/pki"
KUBECONFIG_FILE="$DIR/kubeconfig"
ENV_FILE="$STATE/control-plane.env"

log() { echo "control-plane: $*" >&2; }

# kube-apiserver and kubectl are not packaged anywhere we can install from,
# so unless given, they come from the cached build (slow only the first time).
resolve_binaries() {
  if [[ -z ${KUBE_APISERVER:-} || -z ${KUBECTL:-} ]]; then
    local bin
    bin="$(bash "$REPO/hack/build-k8s-tools.sh")"
    KUBE_APISERVER="${KUBE_APISERVER:-$bin/kube-apiserver}"
    KUBECTL="${KUBECTL:-$bin/kubectl}"
  fi
  ETCD="${ETCD:-$(command -v etcd || true)}"
  [[ -x $ETCD ]] || { log "etcd not found: apt-get install etcd-server, or set ETCD=/path/to/etcd"; exit 1; }
}

free_port() {
  python3 - "${1:-0}" <<'PY'
import socket, sys
for port in (int(sys.argv[1]), 0):
    try:
        with socket.socket() as s:
            # As servers bind: a port left in TIME_WAIT by our last run is free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            print(s.getsockname()[1])
            break
    except OSError:
        continue
PY
}

# Alive, and really the process we started: a stale pid file (after a reboot)
# may name someone else's process, which `down` must never kill.
running() {
  local pid
  pid="$(cat "$DIR/$1.pid" 2>/dev/null)" || return 1
  grep -qaF -- "$DIR" "/proc/$pid/cmdline" 2>/dev/null
}

ready() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get --raw=/readyz >/dev/null 2>&1; }

# Own session: survives the terminal and Ctrl-C; only `down` stops it.
start() {
  local name="$1"; shift
  setsid "$@" >"$DIR/$name.log" 2>&1 </dev/null 9>&- &
  echo $! > "$DIR/$name.pid"
}

# Generated once: a CA and a serving cert for 127.0.0.1, the service-account
# signing key (TokenRequest works), and the static token of the admin user.
make_pki() {
  [[ -f $PKI/tokens.csv ]] && return
  mkdir -p "$PKI"
  (
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=tidings-test-ca \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
      -keyout apiserver.key -out apiserver.csr 2>/dev/null
    printf '%s\n' \
      'subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc' \
      'extendedKeyUsage=serverAuth' > apiserver.ext
    openssl x509 -req -days 3650 -in apiserver.csr -CA ca.crt -CAkey ca.key \
      -set_serial "0x$(openssl rand -hex 8)" -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    echo "$(openssl rand -hex 32),admin,admin,\"system:masters\"" > tokens.csv.tmp
    chmod 600 ./*.key tokens.csv.tmp
    mv tokens.csv.tmp tokens.csv
  )
}

write_kubeconfig() {
  local token
  token="$(cut -d, -f1 "$PKI/tokens.csv")"
  cat > "$KUBECONFIG_FILE.tmp" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: tidings
  cluster:
    server: https://127.0.0.1:$1
    certificate-authority-data: $(base64 -w0 < "$PKI/ca.crt")
users:
- name: admin
  user:
    token: $token
contexts:
- name: tidings
  context: {cluster: tidings, user: admin, namespace: default}
current-context: tidings
YAML
  chmod 600 "$KUBECONFIG_FILE.tmp"
  mv "$KUBECONFIG_FILE.tmp" "$KUBECONFIG_FILE"
}

print_env() {
  echo "export KUBECONFIG=$KUBECONFIG_FILE"
  echo "export KUBECTL=$KUBECTL"
}

up() {
  resolve_binaries
  mkdir -p "$DIR"
  if running etcd && running kube-apiserver && ready; then
    log "already up: $KUBECONFIG_FILE"
    print_env | tee "$ENV_FILE"
    return
  fi
  make_pki
  # Last ports when still free, so an exported KUBECONFIG stays valid.
  local etcd_port peer_port api_port
  read -r etcd_port peer_port api_port < <(cat "$DIR/ports" 2>/dev/null || echo 0 0 0)
  if ! running etcd; then
    etcd_port="$(free_port "$etcd_port")"
    peer_port="$(free_port "$peer_port")"
    start etcd "$ETCD" --name tidings --data-dir "$DIR/etcd" --logger zap \
      --listen-client-urls "http://127.0.0.1:$etcd_port" \
      --advertise-client-urls "http://127.0.0.1:$etcd_port" \
      --listen-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-cluster "tidings=http://127.0.0.1:$peer_port"
    # The apiserver's etcd client backs off on a refused connection: wait for the port.
    for _ in $(seq 100); do (: <"/dev/tcp/127.0.0.1/$etcd_port") 2>/dev/null && break; sleep 0.05; done
  fi
  if ! running kube-apiserver; then
    api_port="$(free_port "$api_port")"
    # No controller-manager here: the ServiceAccount admission plugin would
    # reject every Pod for lack of the "default" ServiceAccount it creates.
    # No endpoints for the "kubernetes" Service: a loopback address is invalid there.
    # Compaction every 30s (default 5m) and ConfigMap watches served by etcd: an old
    # resourceVersion expires (410 Gone) within a minute, as on a busy cluster.
    start kube-apiserver "$KUBE_APISERVER" \
      --etcd-servers "http://127.0.0.1:$etcd_port" \
      --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
      --cert-dir "$PKI" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
      --token-auth-file "$PKI/tokens.csv" \
      --authorization-mode RBAC \
      --service-cluster-ip-range 10.0.0.0/24 \
      --service-account-issuer https://kubernetes.default.svc.cluster.local \
      --service-account-key-file "$PKI/sa.key" --service-account-signing-key-file "$PKI/sa.key" \
      --disable-admission-plugins ServiceAccount \
      --allow-privileged=true --profiling=false \
      --endpoint-reconciler-type none \
      --etcd-compaction-interval 30s --watch-cache-sizes configmaps#0
  fi
  echo "$etcd_port $peer_port $api_port" > "$DIR/ports"
  write_kubeconfig "$api_port"
  for _ in $(seq 600); do
    ready && break
    for c in etcd kube-apiserver; do
      running "$c" || { log "$c exited; see $DIR/$c.log"; tail -20 "$DIR/$c.log" >&2; exit 1; }
    done
    sleep 0.1
  done
  ready || { log "kube-apiserver not ready after 60s; see $DIR/kube-apiserver.log"; exit 1; }
  log "up: kube-apiserver https://127.0.0.1:$api_port, etcd 127.0.0.1:$etcd_port"
  log "kubeconfig: $KUBECONFIG_FILE"
  print_env | tee "$ENV_FILE"
}

stop() {
  running "$1" || { rm -f "$DIR/$1.pid"; return 0; }
  local pid
  pid="$(cat "$DIR/$1.pid")"
  kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  # 10 s is plenty for a clean exit; do not leave it holding its port.
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$DIR/$1.pid"
  log "stopped $1 (pid $pid)"
}

# The apiserver first, so it never runs against a missing etcd.
down() { stop kube-apiserver; stop etcd; rm -f "$ENV_FILE"; }

# Others may run this in the same tree at the same time: one up/down at once.
# The servers must not inherit the lock (9>&- in start), or they hold it forever.
serialize() { mkdir -p "$STATE"; exec 9>>"$STATE/control-plane.lock"; flock 9; }

case "${1:-}" in
  up) serialize; up ;;
  down) serialize; down ;;
  env|status)
    # Binaries are resolved only once the processes are found: no build just to say "down".
    if running etcd && running kube-apiserver && resolve_binaries && ready; then
      if [[ $1 == env ]]; then print_env; else log "up: $KUBECONFIG_FILE"; fi
    elif [[ $1 == env ]]; then
      log "not running: hack/control-plane.sh up"; exit 1
    else
      log "down"; exit 3
    fi ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
