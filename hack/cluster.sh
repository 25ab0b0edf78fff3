#!/usr/bin/env bash
# A real one-node Kubernetes (v1.34) on this machine, for the in-cluster tests
# (tests/e2e) and for trying the chart: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd + kubelet, kube-proxy
# (iptables) and CoreDNS, with the images built here (hack/build-images.sh)
# and imported into containerd, so pods run with `imagePullPolicy: Never`;
# metrics-server behind the API server's aggregation layer, so a
# HorizontalPodAutoscaler (the chart's dispatcher HPA) sees CPU use.
#
#   hack/cluster.sh up        # installs what is missing, builds what is not cached, starts, waits
#   hack/cluster.sh env       # export KUBECONFIG=… HELM=… KUBECTL=… TIDINGS_LOCAL_VALUES=… (+ test images)
#   hack/cluster.sh status    # exit 0 when up, 3 when down
#   hack/cluster.sh down      # stops exactly what `up` started; removes its netns, mounts, cgroups, state
#
# Contained: the whole cluster lives in the network namespace $NETNS. One veth
# pair joins it to the host (host 10.250.250.1, node 10.250.250.2, where the
# API server listens); pods sit on a bridge inside (10.244.0.0/24), Services
# (10.96.0.0/16) are kube-proxy's iptables rules inside; the namespace's
# default route is an unread TUN device, so no packet leaves the machine, and
# the host's own iptables are never touched. Components run under
# `nsenter --net` (not `ip netns exec`, which remounts /sys and hides the
# cgroup mounts from the kubelet); pods' cgroups live under /tidings in every
# hierarchy.
#
# Binaries and images are cached in ~/.cache/tidings (cold: ~15 min of Go
# builds on 2 cores, plus debootstrap); the cluster's state lives in
# ${TIDINGS_STATE_DIR:-.tidings}/cluster and `down` deletes it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${TIDINGS_STATE_DIR:-$REPO/.tidings}"
DIR="$STATE/cluster"
PKI="$DIR/pki"
KUBECONFIG_FILE="$DIR/kubeconfig"
VALUES_FILE="$DIR/local-values.yaml"
ENV_FILE="$STATE/cluster.env"

NETNS="${TIDINGS_CLUSTER_NETNS:-tidings-k8s}"
HOST_IF=tdk-host   # the host's end of the veth pair
NODE_IF=tdk-node   # the namespace's end
HOST_IP=10.250.250.1
NODE_IP=10.250.250.2
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
API_VIP=10.96.0.1
DNS_VIP=10.96.0.10
NODE_NAME=tidings-node
CGROUP_ROOT=tidings
NSENTER=(nsenter "--net=/run/netns/$NETNS")

PVS=12  # hostPath PersistentVolumes made at `up`, one per Redis claim a test run makes

log() { echo "cluster: $*" >&2; }
fail() { log "$*"; exit 1; }

# Seconds of each step, printed as they end (README's cold and warm times).
STEP_START=0
step() {
  local now tenths
  now="$(date +%s%N)"
  tenths=$(((now - STEP_START) / 100000000))
  if [[ -n ${STEP_NAME:-} ]]; then log "$(printf '%-28s %4d.%d s' "$STEP_NAME" $((tenths / 10)) $((tenths % 10)))"; fi
  STEP_NAME="${1:-}"; STEP_START="$now"
}

install_missing() {
  local missing=() cmd pkg
  for pair in containerd:containerd runc:runc ctr:containerd iptables:iptables conntrack:conntrack \
      socat:socat debootstrap:debootstrap buildah:buildah etcd:etcd-server openssl:openssl \
      gcc:gcc ip:iproute2 nsenter:util-linux; do
    cmd="${pair%%:*}"; pkg="${pair#*:}"
    command -v "$cmd" >/dev/null || [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
  done
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  [[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || missing+=(libc6-dev)
  ((${#missing[@]})) || return 0
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    fail "missing ${missing[*]} (Debian: apt-get install ${missing[*]})"
  fi
  log "installing ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

resolve_binaries() {
  BIN="$(bash "$REPO/hack/build-k8s-tools.sh" node)"
  KUBECTL="$BIN/kubectl"
  HELM="$(bash "$REPO/hack/build-helm.sh")"
}

# Alive, and really the process we started (a stale pid file may name another).
running() {
  local pid
  pid="$(cat "$DIR/$1.pid" 2>/dev/null)" || return 1
  grep -qaF -- "$DIR" "/proc/$pid/cmdline" 2>/dev/null
}

# In the namespace, in its own session (survives the terminal; only `down` stops it).
start() {
  local name="$1"; shift
  running "$name" && return 0
  setsid "${NSENTER[@]}" "$@" >"$DIR/$name.log" 2>&1 </dev/null 9>&- &
  echo $! > "$DIR/$name.pid"
}

kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

wait_for() {  # wait_for SECONDS WHAT COMMAND…
  local deadline=$((SECONDS + $1)) what="$2"; shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out waiting for $what"
    sleep 0.5
  done
}

# --- network -----------------------------------------------------------------
make_netns() {
  [[ -e /run/netns/$NETNS ]] || ip netns add "$NETNS"
  if ! ip link show "$HOST_IF" >/dev/null 2>&1; then
    ip link add "$HOST_IF" type veth peer name "$NODE_IF" netns "$NETNS"
    ip addr add "$HOST_IP/30" dev "$HOST_IF"
    ip link set "$HOST_IF" up
  fi
  "${NSENTER[@]}" sh -ec "
    ip link set lo up
    ip addr show $NODE_IF | grep -q '$NODE_IP/' || ip addr add $NODE_IP/30 dev $NODE_IF
    ip link set $NODE_IF up
    # The way out goes nowhere: an unread TUN device.
    ip link show tdk-void >/dev/null 2>&1 || ip tuntap add dev tdk-void mode tun
    ip link set tdk-void up
    ip route replace default dev tdk-void
    # Counted and dropped: what would have left (kube-proxy puts its rules first,
    # so a Service without endpoints is still rejected by them). status prints the count.
    # OUTPUT sees the route chosen before a Service address is DNATed: those may pass.
    drop_out='-o tdk-void -m conntrack ! --ctstate DNAT -j DROP'
    iptables -C OUTPUT \$drop_out 2>/dev/null || iptables -A OUTPUT \$drop_out
    iptables -C FORWARD -o tdk-void -j DROP 2>/dev/null || iptables -A FORWARD -o tdk-void -j DROP
    sysctl -qw net.ipv4.ip_forward=1
    sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  "
}

make_cgroups() {
  local hier
  for hier in /sys/fs/cgroup/*/; do
    [[ -f $hier/cgroup.procs ]] || continue
    mkdir -p "$hier$CGROUP_ROOT"
  done
  # A v1 cpuset child starts empty: give it the parent's CPUs and memory nodes.
  if [[ -f /sys/fs/cgroup/cpuset/cpuset.cpus ]]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus > "/sys/fs/cgroup/cpuset/$CGROUP_ROOT/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems > "/sys/fs/cgroup/cpuset/$CGROUP_ROOT/cpuset.mems"
  fi
}

# --- certificates and configuration -----------------------------------------
# A key and certificate NAME signed by CA (ca or front-proxy-ca), made once.
cert() {  # cert CA NAME SUBJECT EXTENSIONS
  [[ -f $2.crt ]] && return
  openssl req -newkey rsa:2048 -nodes -subj "$3" -keyout "$2.key" -out "$2.csr" 2>/dev/null
  printf '%s\n' "$4" > "$2.ext"
  openssl x509 -req -days 3650 -in "$2.csr" -CA "$1.crt" -CAkey "$1.key" \
    -set_serial "0x$(openssl rand -hex 8)" -extfile "$2.ext" -out "$2.crt" 2>/dev/null
}

ca() {  # ca NAME CN
  [[ -f $1.crt ]] || openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$2" \
    -keyout "$1.key" -out "$1.crt" 2>/dev/null
}

make_pki() {
  mkdir -p "$PKI"
  (
    cd "$PKI"
    ca ca tidings-cluster-ca
    cert ca apiserver /CN=kube-apiserver "subjectAltName=IP:$NODE_IP,IP:$API_VIP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
    # The API server's client certificate at the kubelet (logs, exec, port-forward).
    cert ca kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
    # The kubelet's serving certificate, from the cluster CA (not self-signed), so
    # metrics-server verifies it with the CA every pod has (its ServiceAccount's ca.crt).
    cert ca kubelet "/CN=$NODE_NAME" "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME
extendedKeyUsage=serverAuth"
    # The aggregation layer: the API server proxies to metrics-server with this
    # client certificate, from its own CA (requestheader), as kubeadm does.
    ca front-proxy-ca tidings-front-proxy-ca
    cert front-proxy-ca front-proxy-client /CN=front-proxy-client "extendedKeyUsage=clientAuth"
    # metrics-server's serving certificate; its APIService carries the cluster CA.
    cert ca metrics-server /CN=metrics-server "subjectAltName=DNS:metrics-server.kube-system.svc,DNS:metrics-server.kube-system.svc.cluster.local
extendedKeyUsage=serverAuth"
    [[ -f sa.key ]] || openssl genrsa -out sa.key 2048 2>/dev/null
    if [[ ! -f tokens.csv ]]; then
      # One admin token for kubectl and the cluster's own components.
      echo "$(openssl rand -hex 32),admin,admin,\"system:masters\"" > tokens.csv.tmp
      mv tokens.csv.tmp tokens.csv
    fi
    chmod 600 ./*.key tokens.csv
  )
}

write_configs() {
  local token
  token="$(cut -d, -f1 "$PKI/tokens.csv")"
  cat > "$KUBECONFIG_FILE" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: tidings
  cluster:
    server: https://$NODE_IP:6443
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
  chmod 600 "$KUBECONFIG_FILE"

  mkdir -p "$DIR/containerd" "$DIR/cni/net.d" "$DIR/cni/ipam" "$DIR/kubelet" "$DIR/pod-logs" "$DIR/pv"
  # restrict_oom_score_adj: this VM lacks CAP_SYS_RESOURCE, and runc fails to
  # raise a container's oom_score_adj without it.
  cat > "$DIR/containerd/config.toml" <<TOML
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
[grpc]
  address = "$DIR/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "tidings.local/pause:3.10"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
TOML
  cat > "$DIR/cni/net.d/10-tidings.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "tidings",
  "plugins": [
    {"type": "bridge", "bridge": "tdk-br0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$DIR/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
JSON
  echo "# no upstream resolvers: nothing leaves the cluster's network namespace" > "$DIR/resolv.conf"
  cat > "$DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroups v1 on this machine (plus a cgroup2 mount), no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
containerRuntimeEndpoint: unix://$DIR/containerd/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
address: $NODE_IP
clusterDNS: [$DNS_VIP]
clusterDomain: cluster.local
resolvConf: $DIR/resolv.conf
podLogsDir: $DIR/pod-logs
failSwapOn: false
# No registry to pull from again: never collect images, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 10s
YAML
  cat > "$DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $POD_CIDR
clientConnection: {kubeconfig: $KUBECONFIG_FILE}
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
hostnameOverride: $NODE_NAME
# Leave the machine-wide conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
}

# --- components ----------------------------------------------------------------
api_ready() { kc get --raw=/readyz; }

start_components() {
  start etcd etcd --name tidings --data-dir "$DIR/etcd" --logger zap \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster tidings=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
  start containerd containerd --config "$DIR/containerd/config.toml"
  wait_for 30 etcd "${NSENTER[@]}" bash -c 'exec 3<>/dev/tcp/127.0.0.1/2379'
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers http://127.0.0.1:2379 \
    --bind-address 0.0.0.0 --advertise-address "$NODE_IP" --secure-port 6443 \
    --cert-dir "$PKI" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
    --kubelet-client-certificate "$PKI/kubelet-client.crt" --kubelet-client-key "$PKI/kubelet-client.key" \
    --authorization-mode Node,RBAC \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.key" --service-account-signing-key-file "$PKI/sa.key" \
    --kubelet-preferred-address-types InternalIP \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --enable-aggregator-routing=true \
    --allow-privileged=true --profiling=false
  wait_for 90 "kube-apiserver (see $DIR/kube-apiserver.log)" api_ready
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$KUBECONFIG_FILE" --authentication-kubeconfig "$KUBECONFIG_FILE" \
    --authorization-kubeconfig "$KUBECONFIG_FILE" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --use-service-account-credentials=false
  start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$KUBECONFIG_FILE" --authentication-kubeconfig "$KUBECONFIG_FILE" \
    --authorization-kubeconfig "$KUBECONFIG_FILE" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false
  wait_for 30 containerd "${NSENTER[@]}" ctr --address "$DIR/containerd/containerd.sock" version
  start kubelet "$BIN/kubelet" --config "$DIR/kubelet.yaml" --kubeconfig "$KUBECONFIG_FILE" \
    --root-dir "$DIR/kubelet" --cert-dir "$DIR/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
  start kube-proxy "$BIN/kube-proxy" --config "$DIR/kube-proxy.yaml"
}

# --- images --------------------------------------------------------------------
ctr_() { ctr --address "$DIR/containerd/containerd.sock" -n k8s.io "$@"; }

import_images() {
  local image archive present
  present="$(ctr_ images ls -q)"
  while read -r image archive; do
    grep -qxF "$image" <<<"$present" || ctr_ images import "$archive" >/dev/null
    [[ $image != tidings.local/tidings:* ]] || TIDINGS_IMAGE="$image"
    [[ $image != tidings.local/metrics-server:* ]] || METRICS_SERVER_IMAGE="$image"
  done <<<"$IMAGE_LIST"
  # A second tag of the same image, for `helm upgrade` to a new tag (tests/e2e).
  ctr_ images tag --force "$TIDINGS_IMAGE" "$TIDINGS_IMAGE-upgrade" >/dev/null
}

# --- add-ons -------------------------------------------------------------------
install_addons() {
  local i pvs=""
  for ((i = 1; i <= PVS; i++)); do
    # Redis runs as uid 10001, and fsGroup does not reach a hostPath.
    mkdir -p "$DIR/pv/pv$i" && chmod 0777 "$DIR/pv/pv$i"
    pvs+="---
apiVersion: v1
kind: PersistentVolume
metadata: {name: local-pv$i, labels: {tidings.dev/cluster: local}}
spec:
  capacity: {storage: 20Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local
  hostPath: {path: $DIR/pv/pv$i, type: Directory}
"
  done
  kc apply -f - >/dev/null <<YAML
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
$pvs
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: system:coredns}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: system:coredns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:coredns}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  # Cluster names only: there is no upstream to forward to.
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 30
        reload
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      containers:
      - name: coredns
        image: tidings.local/coredns:v1.12.1
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /health, port: 8080}}
        resources: {requests: {cpu: 50m, memory: 32Mi}, limits: {memory: 128Mi}}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_VIP
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
YAML
}

# metrics-server (built from Go modules) behind the aggregation layer: its
# serving certificate and the kubelet's are the cluster CA's, so the APIService
# carries that CA and metrics-server verifies the kubelet with its
# ServiceAccount's ca.crt (no insecure TLS anywhere).
install_metrics_server() {
  kc -n kube-system create secret tls metrics-server-tls --cert "$PKI/metrics-server.crt" \
    --key "$PKI/metrics-server.key" --dry-run=client -o yaml | kc apply -f - >/dev/null
  kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: metrics-server, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:aggregated-metrics-reader
  labels:
    rbac.authorization.k8s.io/aggregate-to-view: "true"
    rbac.authorization.k8s.io/aggregate-to-edit: "true"
    rbac.authorization.k8s.io/aggregate-to-admin: "true"
rules:
- apiGroups: [metrics.k8s.io]
  resources: [pods, nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: system:metrics-server}
rules:
- apiGroups: [""]
  resources: [nodes/metrics]
  verbs: [get]
- apiGroups: [""]
  resources: [pods, nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: system:metrics-server}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:metrics-server}
subjects: [{kind: ServiceAccount, name: metrics-server, namespace: kube-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "metrics-server:system:auth-delegator"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:auth-delegator}
subjects: [{kind: ServiceAccount, name: metrics-server, namespace: kube-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: metrics-server-auth-reader, namespace: kube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: extension-apiserver-authentication-reader}
subjects: [{kind: ServiceAccount, name: metrics-server, namespace: kube-system}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: metrics-server, namespace: kube-system, labels: {k8s-app: metrics-server}}
spec:
  selector: {matchLabels: {k8s-app: metrics-server}}
  template:
    metadata: {labels: {k8s-app: metrics-server}}
    spec:
      serviceAccountName: metrics-server
      securityContext: {runAsNonRoot: true, runAsUser: 65534, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: metrics-server
        image: $METRICS_SERVER_IMAGE
        imagePullPolicy: Never
        args:
        - --secure-port=10250
        - --tls-cert-file=/certs/tls.crt
        - --tls-private-key-file=/certs/tls.key
        - --kubelet-preferred-address-types=InternalIP
        - --kubelet-use-node-status-port
        - --kubelet-certificate-authority=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt
        - --metric-resolution=15s
        ports: [{name: https, containerPort: 10250}]
        readinessProbe: {httpGet: {path: /readyz, port: https, scheme: HTTPS}, periodSeconds: 5}
        livenessProbe: {httpGet: {path: /livez, port: https, scheme: HTTPS}, periodSeconds: 10}
        resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 256Mi}}
        securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
        volumeMounts:
        - {name: certs, mountPath: /certs, readOnly: true}
        - {name: tmp, mountPath: /tmp}
      volumes:
      - {name: certs, secret: {secretName: metrics-server-tls}}
      - {name: tmp, emptyDir: {}}
---
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system, labels: {k8s-app: metrics-server}}
spec:
  selector: {k8s-app: metrics-server}
  ports: [{name: https, port: 443, targetPort: https}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  service: {name: metrics-server, namespace: kube-system}
  group: metrics.k8s.io
  version: v1beta1
  caBundle: $(base64 -w0 < "$PKI/ca.crt")
  groupPriorityMinimum: 100
  versionPriority: 100
YAML
}

# A volume whose claim was deleted (helm uninstall, a namespace removed) is
# emptied and offered again, so repeated test runs never run out of volumes.
recycle_volumes() {
  local pv path
  for pv in $(kc get pv -l tidings.dev/cluster=local -o jsonpath='{range .items[?(@.status.phase=="Released")]}{.metadata.name}{"\n"}{end}'); do
    path="$(kc get pv "$pv" -o jsonpath='{.spec.hostPath.path}')"
    [[ $path == "$DIR/pv/"* ]] || continue
    find "$path" -mindepth 1 -delete
    kc patch pv "$pv" --type json -p '[{"op": "remove", "path": "/spec/claimRef"}]' >/dev/null
  done
}

# One A query for kubernetes.default through the kube-dns Service VIP, from
# inside the namespace: proves CoreDNS, the API and kube-proxy's rules at once.
dns_answers() {
  "${NSENTER[@]}" python3 - "$DNS_VIP" <<'PY'
import socket, struct, sys
name = b"".join(bytes([len(p)]) + p for p in b"kubernetes.default.svc.cluster.local".split(b".")) + b"\0"
query = struct.pack(">HHHHHH", 0x7464, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(1)
    s.sendto(query, (sys.argv[1], 53))
    reply = s.recv(512)
sys.exit(0 if reply[:2] == b"\x74\x64" and reply[3] & 0x0F == 0 and struct.unpack(">H", reply[6:8])[0] > 0 else 1)
PY
}

node_ready() { [[ $(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]; }
sa_exists() { kc -n default get serviceaccount default; }

write_values() {
  cat > "$VALUES_FILE" <<YAML
# The chart on hack/cluster.sh: images imported into containerd, never pulled.
image:
  repository: ${TIDINGS_IMAGE%:*}
  tag: ${TIDINGS_IMAGE##*:}
  pullPolicy: Never
sources:
  imagePullPolicy: Never
redis:
  image:
    repository: tidings.local/debian
    tag: bookworm
    pullPolicy: Never
YAML
}

print_env() {
  local tag
  tag="$(sed -n 's/^  tag: //p' "$VALUES_FILE" | head -1)"
  echo "export KUBECONFIG=$KUBECONFIG_FILE"
  echo "export KUBECTL=$KUBECTL"
  echo "export HELM=$HELM"
  echo "export TIDINGS_LOCAL_VALUES=$VALUES_FILE"
  # tests/e2e: a second tag of the image (helm upgrade), an image with PostgreSQL 15,
  echo "export TIDINGS_E2E_UPGRADE_TAG=$tag-upgrade"
  echo "export TIDINGS_E2E_POSTGRES_IMAGE=tidings.local/debian:bookworm"
  # and an S3 store (Versity Gateway) for the objectStore sources.
  echo "export TIDINGS_E2E_S3_IMAGE=tidings.local/versitygw:${TIDINGS_VERSITYGW_VERSION:-v1.8.0}"
}

# Images, etcd and containerd's snapshots need room; near a full disk the kubelet
# taints the node (disk-pressure, evictionHard above) and nothing schedules, which
# otherwise shows only as CoreDNS never becoming ready.
MIN_FREE_GIB="${TIDINGS_CLUSTER_MIN_FREE_GIB:-5}"
check_disk() {
  local free_kib
  free_kib="$(df -Pk "$DIR" | awk 'NR == 2 {print $4}')"
  (( free_kib >= MIN_FREE_GIB * 1024 * 1024 )) || fail "only $((free_kib / 1024 / 1024)) GiB free \
on the filesystem of $DIR; the cluster needs $MIN_FREE_GIB GiB (images, etcd, containerd): free some \
(old benchmark data in /tmp, ~/.cache/go-build) or set TIDINGS_CLUSTER_MIN_FREE_GIB"
}

up() {
  # Half a cluster (a component died, a run was killed, the machine rebooted):
  # clear what is left of it and start afresh.
  if [[ -d $DIR ]] && ! all_running; then log "not all up: clearing the rest first"; down; fi
  mkdir -p "$DIR"
  check_disk
  step "install packages"; install_missing
  # The Debian and Tidings images (debootstrap, pip: mostly waiting on the
  # network) build while the Go builds use the cores.
  bash "$REPO/hack/build-images.sh" debian tidings >"$DIR/images.out" 2>"$DIR/images.log" &
  local images_pid=$!
  step "binaries (kubelet, helm …)"; resolve_binaries
  step "images"
  # Built once: the working tree may change under us (a new tag each time).
  IMAGE_LIST="$(bash "$REPO/hack/build-images.sh" pause coredns metrics-server versitygw)"
  wait "$images_pid" || { tail -20 "$DIR/images.log" >&2; fail "building the images failed (see $DIR/images.log)"; }
  IMAGE_LIST+=$'\n'"$(cat "$DIR/images.out")"
  step "network namespace"; make_netns; make_cgroups
  step "start components"; make_pki; write_configs; start_components
  step "import images"; import_images
  step "node Ready"; wait_for 120 "node $NODE_NAME Ready (see $DIR/kubelet.log)" node_ready
  wait_for 60 "the default ServiceAccount" sa_exists
  step "storage, CoreDNS, DNS"
  install_addons
  install_metrics_server
  recycle_volumes
  kc -n kube-system rollout status deployment/coredns --timeout=120s >&2 ||
    fail "CoreDNS did not become ready; the node's taints: \
$(kc get node "$NODE_NAME" -o jsonpath='{.spec.taints}') (see $DIR/kubelet.log)"
  wait_for 60 "DNS answers through $DNS_VIP" dns_answers
  step ""
  write_values
  log "up: node $NODE_NAME at $NODE_IP, image $TIDINGS_IMAGE"
  print_env | tee "$ENV_FILE"
}

# --- down ------------------------------------------------------------------------
stop() {
  running "$1" || { rm -f "$DIR/$1.pid"; return 0; }
  local pid
  pid="$(cat "$DIR/$1.pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$DIR/$1.pid"
}

# Every process in the cluster's cgroups: the containers and their shims.
cgroup_pids() { cat /sys/fs/cgroup/pids/"$CGROUP_ROOT"/cgroup.procs 2>/dev/null; find /sys/fs/cgroup/pids/"$CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2>/dev/null; }

down() {
  stop kubelet
  stop kube-proxy
  # The pods' processes, then their shims (started by our containerd, named by its socket).
  local pid shim
  for pid in $(cgroup_pids | sort -u); do kill -9 "$pid" 2>/dev/null || true; done
  for shim in $(pgrep -f "containerd-shim.*-address $DIR/containerd/containerd.sock" || true); do
    kill -9 "$shim" 2>/dev/null || true
  done
  stop containerd
  stop kube-scheduler
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  # Mounts under our state (container rootfs, volumes, pod netns), deepest first.
  local mnt
  while read -r mnt; do umount -l "$mnt" 2>/dev/null || true
  done < <(awk -v d="$DIR/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r)
  # Cgroups, leaves first (rmdir only removes empty ones).
  local hier
  for hier in /sys/fs/cgroup/*/; do
    [[ -d $hier$CGROUP_ROOT ]] || continue
    find "$hier$CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null || true
    rmdir "$hier$CGROUP_ROOT" 2>/dev/null || true
  done
  if [[ -e /run/netns/$NETNS ]]; then ip netns del "$NETNS"; fi
  if ip link show "$HOST_IF" >/dev/null 2>&1; then ip link del "$HOST_IF"; fi
  rm -rf "$DIR" "$ENV_FILE"
  log "down"
}

# Resident memory of the components, and of the pods (their cgroup, page cache excluded).
memory() {
  local c pid kib=0 pods=0
  for c in etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    pid="$(cat "$DIR/$c.pid")"
    kib=$((kib + $(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")))
  done
  local stat="/sys/fs/cgroup/memory/$CGROUP_ROOT/memory.stat"
  [[ -f $stat ]] && pods=$(awk '$1 == "total_rss" {print int($2 / 1024)}' "$stat")
  log "memory: components $((kib / 1024)) MiB, pods $((pods / 1024)) MiB"
  local out
  out="$("${NSENTER[@]}" iptables -L -v -n -x | awk '$3 == "DROP" && $7 == "tdk-void" {n += $1} END {print n + 0}')"
  log "packets that tried to leave the namespace (dropped): $out"
}

all_running() {
  local c
  for c in etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    running "$c" || return 1
  done
}

# One up/down at once per tree; started servers must not inherit the lock.
serialize() { mkdir -p "$STATE"; exec 9>>"$STATE/cluster.lock"; flock 9; }

[[ $(id -u) == 0 ]] || fail "needs root (network namespace, mounts, cgroups, containerd)"
case "${1:-}" in
  up) serialize; up ;;
  down) serialize; down ;;
  env|status)
    if all_running && [[ -f $VALUES_FILE ]]; then
      KUBECTL="$(bash "$REPO/hack/build-k8s-tools.sh")/kubectl"
      HELM="$(bash "$REPO/hack/build-helm.sh")"
      if [[ $1 == env ]]; then print_env; else log "up: $KUBECONFIG_FILE"; memory; fi
    elif [[ $1 == env ]]; then
      fail "not running: hack/cluster.sh up"
    else
      log "down"; exit 3
    fi ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
