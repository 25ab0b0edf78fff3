#!/usr/bin/env bash
# The test command (README): from a fresh clone with nothing running, makes
# the venv, starts the real components, runs pytest, and stops what it started.
#
#   hack/test.sh [pytest args…]      # default: -q
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian's python3 lacks venv until python3-venv is installed.
if [[ ! -x .venv/bin/python ]] && ! python3 -m venv .venv; then
  if ! command -v apt-get >/dev/null || [[ $(id -u) != 0 ]]; then
    echo "test.sh: python3 -m venv failed; install python3-venv" >&2
    exit 1
  fi
  rm -rf .venv
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
  python3 -m venv .venv
fi

PY=(.venv/bin/python)

# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.tidings-test-deps
if [[ "$(cat "$stamp" 2>/dev/null)" != "$(sha256sum pyproject.toml)" ]]; then
  "${PY[@]}" -m pip install -q -e '.[test]'
  sha256sum pyproject.toml > "$stamp"
fi

# One run at a time per tree: tests flush the shared Redis, and one run's
# teardown must not stop the components under another. (9>&- below: the
# servers started must not inherit this lock.)
STATE="${TIDINGS_STATE_DIR:-$PWD/.tidings}"
mkdir -p "$STATE"
exec 9>>"$STATE/test.lock"
flock -n 9 || { echo "test.sh: waiting for another test run in this tree" >&2; flock 9; }

# Stop the components afterwards only if this run started them: a developer's
# environment that was already up stays up.
if bash hack/test-env.sh status >/dev/null 2>&1 9>&-; then
  echo "test.sh: reusing the running test env (hack/test-env.sh down stops it)" >&2
else
  trap 'bash hack/test-env.sh down 9>&-' EXIT
fi
exports="$(bash hack/test-env.sh up 9>&-)" # an assignment, so a failed `up` stops here
eval "$exports"

export PATH="$PWD/.venv/bin:$PATH"
(($#)) || set -- -q
rc=0
"${PY[@]}" -m pytest "$@" || rc=$?
exit "$rc"
