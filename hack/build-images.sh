#!/usr/bin/env bash
# The container images of the local cluster (hack/cluster.sh), made here
# without a registry or a Docker engine, each cached as a docker-archive under
# ~/.cache/tidings/images (what `ctr images import` loads):
#
#   debian   tidings.local/debian:bookworm   debootstrap minbase + Python 3.11 (venv, pip),
#            redis-server, PostgreSQL 15: the Dockerfile's base, the chart's Redis, the tests' Postgres
#   pause    tidings.local/pause:3.10        the sandbox image, pause.c from the kubernetes module
#   coredns  tidings.local/coredns:v1.12.1   CoreDNS built from Go modules
#   metrics-server tidings.local/metrics-server:v0.8.0   hack/build-metrics-server.sh's binary (HPA)
#   versitygw tidings.local/versitygw:v1.8.0  hack/s3.sh's Versity Gateway binary (tests/e2e's S3 store)
#   tidings  tidings.local/tidings:dev-HASH  the repository's Dockerfile (buildah bud) on the debian
#            image, HASH of the build context: a changed working tree is a new tag
#
#   hack/build-images.sh [debian|pause|coredns|metrics-server|versitygw|tidings]…   # default all; prints "IMAGE ARCHIVE" lines
#
# This workplace intercepts TLS to the package registries: the debian image
# (and only it, never the Dockerfile) trusts the host's added CA certificates
# (/usr/local/share/ca-certificates), so pip inside `buildah bud` works.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_VERSION="${TIDINGS_K8S_VERSION:-1.34.4}"
COREDNS_VERSION="${TIDINGS_COREDNS_VERSION:-1.12.1}"
PAUSE_VERSION=3.10
CACHE_DIR="${TIDINGS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings}"
IMAGES="$CACHE_DIR/images"
# buildah's own storage, not the host's /var/lib/containers.
BUILDAH=(buildah --root "$CACHE_DIR/buildah/storage" --storage-driver overlay
  --runroot "/run/tidings-buildah/$(sha256sum <<<"$CACHE_DIR" | cut -c1-12)")

DEBIAN_IMAGE=tidings.local/debian:bookworm
PAUSE_IMAGE="tidings.local/pause:$PAUSE_VERSION"
COREDNS_IMAGE="tidings.local/coredns:v$COREDNS_VERSION"
METRICS_SERVER_VERSION="${TIDINGS_METRICS_SERVER_VERSION:-0.8.0}"
METRICS_SERVER_IMAGE="tidings.local/metrics-server:v$METRICS_SERVER_VERSION"
VERSITYGW_VERSION="${TIDINGS_VERSITYGW_VERSION:-v1.8.0}"
VERSITYGW_IMAGE="tidings.local/versitygw:$VERSITYGW_VERSION"

log() { echo "build-images: $*" >&2; }

has_image() { "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# A docker-archive, written to a temporary name first: an interrupted push
# leaves no archive that looks complete.
push_archive() {
  local image="$1" archive="$2"
  rm -f "$archive.tmp"
  "${BUILDAH[@]}" push --quiet "$image" "docker-archive:$archive.tmp:$image" >&2
  mv "$archive.tmp" "$archive"
}

# An image from a directory tree: `buildah from scratch`, the tree copied in.
image_from_tree() {
  local image="$1" tree="$2"; shift 2
  local ctr mnt
  ctr="$("${BUILDAH[@]}" from scratch)"
  mnt="$("${BUILDAH[@]}" mount "$ctr")"
  cp -a "$tree/." "$mnt/"
  "${BUILDAH[@]}" umount "$ctr" >/dev/null
  "${BUILDAH[@]}" config "$@" "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$image" >/dev/null
}

debian_mirror() {
  if [[ -n ${TIDINGS_DEBIAN_MIRROR:-} ]]; then echo "$TIDINGS_DEBIAN_MIRROR"; return; fi
  # The mirror this machine's apt already uses.
  local found
  found="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  [[ -n $found ]] || found="$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
  [[ -n $found ]] || { log "no Debian mirror found in /etc/apt: set TIDINGS_DEBIAN_MIRROR"; exit 1; }
  echo "$found"
}

build_debian() {
  local archive="$IMAGES/debian-bookworm.tar"
  if [[ -f $archive ]]; then
    has_image "$DEBIAN_IMAGE" || "${BUILDAH[@]}" pull --quiet "docker-archive:$archive" >/dev/null
    echo "$DEBIAN_IMAGE $archive"; return
  fi
  local rootfs="$IMAGES/debian-bookworm.rootfs"
  if [[ ! -f $rootfs/.complete ]]; then
    rm -rf "$rootfs"
    log "debootstrap bookworm into $rootfs (about a minute or two)"
    debootstrap --variant=minbase \
      --include=passwd,ca-certificates,python3,python3-venv,python3-pip,python-is-python3,redis-server,postgresql-15 \
      bookworm "$rootfs" "$(debian_mirror)" >"$IMAGES/debootstrap.log" 2>&1 \
      || { tail -20 "$IMAGES/debootstrap.log" >&2; exit 1; }
    # The host's added CA certificates (see the header), then no apt state.
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
      cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
      chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    touch "$rootfs/.complete"
  fi
  image_from_tree "$DEBIAN_IMAGE" "$rootfs" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd /bin/bash
  push_archive "$DEBIAN_IMAGE" "$archive"
  rm -rf "$rootfs"
  echo "$DEBIAN_IMAGE $archive"
}

build_pause() {
  local archive="$IMAGES/pause-$PAUSE_VERSION.tar"
  [[ -f $archive ]] && { echo "$PAUSE_IMAGE $archive"; return; }
  local dir src
  dir="$(mktemp -d)"
  # pause.c ships in the kubernetes module (hack/build-k8s-tools.sh downloads it).
  src="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')/build/pause/linux/pause.c"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-tidings" -o "$dir/pause" "$src"
  mkdir "$dir/tree" && mv "$dir/pause" "$dir/tree/pause"
  image_from_tree "$PAUSE_IMAGE" "$dir/tree" --entrypoint '["/pause"]'
  push_archive "$PAUSE_IMAGE" "$archive"
  rm -rf "$dir"
  echo "$PAUSE_IMAGE $archive"
}

build_coredns() {
  local archive="$IMAGES/coredns-v$COREDNS_VERSION.tar"
  [[ -f $archive ]] && { echo "$COREDNS_IMAGE $archive"; return; }
  local bin="$CACHE_DIR/coredns-v$COREDNS_VERSION/bin"
  if [[ ! -x $bin/coredns ]]; then
    log "building CoreDNS v$COREDNS_VERSION from Go modules (cold: about 3 minutes)"
    rm -rf "$bin.tmp"
    (cd "$(mktemp -d)" && GOBIN="$bin.tmp" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
      "github.com/coredns/coredns@v$COREDNS_VERSION") >&2
    mkdir -p "$bin" && mv "$bin.tmp/coredns" "$bin/coredns" && rm -rf "$bin.tmp"
  fi
  local dir
  dir="$(mktemp -d)"
  cp "$bin/coredns" "$dir/coredns"
  image_from_tree "$COREDNS_IMAGE" "$dir" --entrypoint '["/coredns"]' --port 53/udp --port 53/tcp
  push_archive "$COREDNS_IMAGE" "$archive"
  rm -rf "$dir"
  echo "$COREDNS_IMAGE $archive"
}

build_metrics_server() {
  local archive="$IMAGES/metrics-server-v$METRICS_SERVER_VERSION.tar"
  [[ -f $archive ]] && { echo "$METRICS_SERVER_IMAGE $archive"; return; }
  local bin dir
  bin="$(TIDINGS_METRICS_SERVER_VERSION="$METRICS_SERVER_VERSION" bash "$REPO/hack/build-metrics-server.sh")"
  dir="$(mktemp -d)"
  cp "$bin" "$dir/metrics-server"
  mkdir "$dir/tmp" && chmod 1777 "$dir/tmp"
  image_from_tree "$METRICS_SERVER_IMAGE" "$dir" --entrypoint '["/metrics-server"]' --user 65534:65534
  push_archive "$METRICS_SERVER_IMAGE" "$archive"
  rm -rf "$dir"
  echo "$METRICS_SERVER_IMAGE $archive"
}

build_versitygw() {
  local archive="$IMAGES/versitygw-$VERSITYGW_VERSION.tar"
  [[ -f $archive ]] && { echo "$VERSITYGW_IMAGE $archive"; return; }
  local bin dir
  bin="$(TIDINGS_VERSITYGW_VERSION="$VERSITYGW_VERSION" bash "$REPO/hack/s3.sh" bin)"
  dir="$(mktemp -d)"
  cp "$bin" "$dir/versitygw"
  mkdir "$dir/tmp" && chmod 1777 "$dir/tmp"
  image_from_tree "$VERSITYGW_IMAGE" "$dir" --entrypoint '["/versitygw"]' --user 10001:10001
  push_archive "$VERSITYGW_IMAGE" "$archive"
  rm -rf "$dir"
  echo "$VERSITYGW_IMAGE $archive"
}

# What `buildah bud` copies (.dockerignore keeps the same): the tag follows it.
context_hash() {
  (cd "$REPO" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' -cf - \
    Dockerfile .dockerignore requirements.lock build-requirements.lock pyproject.toml README.md \
    api dispatcher operator cli | sha256sum | cut -c1-12)
}

build_tidings() {
  local tag image archive
  tag="dev-$(context_hash)"
  image="tidings.local/tidings:$tag"
  archive="$IMAGES/tidings-$tag.tar"
  [[ -f $archive ]] && { echo "$image $archive"; return; }
  build_debian >/dev/null
  log "buildah bud of the Dockerfile as $image"
  # Layers cached: the locked dependencies install again only when a lock file changes.
  "${BUILDAH[@]}" bud --quiet --layers --network host --pull-never \
    --build-arg "PYTHON_IMAGE=$DEBIAN_IMAGE" --tag "$image" "$REPO" >&2
  push_archive "$image" "$archive"
  # Keep the newest two builds.
  find "$IMAGES" -maxdepth 1 -name 'tidings-dev-*.tar' -printf '%T@ %p\n' | sort -rn | tail -n +3 \
    | cut -d' ' -f2- | xargs -r rm -f
  # and in buildah's storage only the images whose archives are kept (each holds its own venv layer).
  local old
  for old in $("${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}}' | grep '^tidings.local/tidings:dev-'); do
    [[ -f "$IMAGES/tidings-${old##*:}.tar" ]] || "${BUILDAH[@]}" rmi "$old" >/dev/null 2>&1 || true
  done
  echo "$image $archive"
}

mkdir -p "$IMAGES"
(($#)) || set -- debian pause coredns metrics-server versitygw tidings
for what in "$@"; do
  case "$what" in
    debian|pause|coredns|metrics-server|versitygw|tidings) "build_${what//-/_}" ;;
    *) echo "usage: $0 [debian|pause|coredns|metrics-server|versitygw|tidings]…" >&2; exit 2 ;;
  esac
done
