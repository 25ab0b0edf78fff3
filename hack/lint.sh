#!/usr/bin/env bash
# ruff and mypy --strict over the whole code base (the four source roots are
# named in pyproject.toml: mypy_path and ruff's src).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy --config-file pyproject.toml --cache-dir .tidings/mypy-cache \
  -p tidings.api -p tidings.dispatcher -p tidings.sources -p tidings.operator -p tidings.cli -p tidings.console "$@"
