#!/usr/bin/env bash
# Regenerates the image's lock files from pyproject.toml with pip-tools:
# requirements.lock (the runtime dependencies, every version pinned with the
# hashes of its files) and build-requirements.lock (what builds the tidings
# wheel). The Dockerfile installs exactly these with --require-hashes.
# Run it after changing [project] dependencies; a test fails until you do.
#
#   hack/lock.sh                 # keep the pins that still satisfy pyproject.toml
#   hack/lock.sh --upgrade       # newest versions allowed
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CACHE_DIR="${TIDINGS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings}"
VENV="$CACHE_DIR/pip-tools"
PIP_TOOLS_VERSION=7.5.2
if [[ ! -x $VENV/bin/pip-compile ]] || [[ $("$VENV/bin/pip-compile" --version) != *" $PIP_TOOLS_VERSION" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "pip-tools==$PIP_TOOLS_VERSION"
fi
# The image is CPython 3.11 on x86_64 Linux: resolve for that, from the index only.
unset PIP_FIND_LINKS
compile=("$VENV/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras
  --no-emit-index-url --no-emit-find-links "$@")
"${compile[@]}" --output-file requirements.lock pyproject.toml hack/lock-extra.in
echo 'setuptools>=68' | "${compile[@]}" --output-file build-requirements.lock -
