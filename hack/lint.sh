#!/usr/bin/env bash
# ruff and mypy --strict over the whole code base.
# mypy cannot see setuptools' package-dir mapping (operator/ -> tidings.operator),
# so it checks a tree of symlinks laid out the way Python imports the code.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
TREE=.tidings/typecheck
rm -rf "$TREE" && mkdir -p "$TREE/tidings"
for entry in tidings/*; do ln -s "$PWD/$entry" "$TREE/tidings/"; done
ln -s "$PWD/operator" "$TREE/tidings/operator"
ln -s "$PWD/dispatcher" "$TREE/tidings/dispatcher"
.venv/bin/mypy --config-file pyproject.toml --cache-dir .tidings/mypy-cache "$TREE/tidings" "$@"
