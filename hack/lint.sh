#!/usr/bin/env bash
# ruff and mypy --strict over the whole code base: the four source roots (named
# in pyproject.toml: mypy_path and ruff's src), then the scripts in hack/ with the
# same settings (hack/ is on mypy_path, so the benchmarks' `import bench_dispatch`
# resolves, and so is tests/ for dashboard_stack.py, which render_dashboard.py
# shares with the tests). mypy takes packages or files in one run, not both.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy --config-file pyproject.toml --cache-dir .tidings/mypy-cache \
  -p tidings.api -p tidings.dispatcher -p tidings.sources -p tidings.operator -p tidings.cli -p tidings.console "$@"
.venv/bin/mypy --config-file pyproject.toml --cache-dir .tidings/mypy-cache hack/*.py "$@"
