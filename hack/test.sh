#!/usr/bin/env bash
# The test command (README): from a fresh clone with nothing running, makes
# the venv, starts the real components, runs pytest, and stops what it started.
#
#   hack/test.sh [pytest args…]      # default: -q
#
# Without paths in the arguments it runs in two rounds: every test but
# tests/e2e with Redis, PostgreSQL and kube-apiserver (hack/test-env.sh), then
# the in-cluster tests (tests/e2e) on a real one-node cluster (hack/cluster.sh,
# started after the first round so the two never share the 2 cores). With
# paths, one pytest run, and the cluster only if a path holds tests/e2e.
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
stops=()
# shellcheck disable=SC2317,SC2329  # run by the EXIT trap
stop_started() { local c; for c in "${stops[@]}"; do bash "hack/$c.sh" down 9>&- || true; done; }
trap stop_started EXIT
if bash hack/test-env.sh status >/dev/null 2>&1 9>&-; then
  echo "test.sh: reusing the running test env (hack/test-env.sh down stops it)" >&2
else
  stops+=(test-env)
fi
exports="$(bash hack/test-env.sh up 9>&-)" # an assignment, so a failed `up` stops here
eval "$exports"

# The one-node cluster for tests/e2e (cold: Go builds and images, ~20 min; warm: ~2 min).
cluster_up() {
  if bash hack/cluster.sh status >/dev/null 2>&1 9>&-; then
    echo "test.sh: reusing the running cluster (hack/cluster.sh down stops it)" >&2
  else
    stops=(cluster "${stops[@]}")
  fi
  local exports
  exports="$(bash hack/cluster.sh up 9>&-)" || return 1
  eval "$exports"
}

# Which of the arguments name tests (a file, a folder, FILE::TEST), and whether
# one of them holds tests/e2e.
paths=0 e2e=0
for arg in "$@"; do
  target="${arg%%::*}"
  [[ $arg != -* && -e $target ]] || continue
  paths=1
  target="$(realpath "$target")"
  [[ $target/ == "$PWD/tests/e2e/"* || "$PWD/tests/e2e/" == "$target/"* ]] && e2e=1
done

export PATH="$PWD/.venv/bin:$PATH"
(($#)) || set -- -q
rc=0
# 9>&- on pytest too: a server some test starts must not hold this run's lock.
if ((paths)); then
  if ((e2e)); then cluster_up || rc=$?; fi
  ((rc)) || "${PY[@]}" -m pytest "$@" 9>&- || rc=$?
else
  "${PY[@]}" -m pytest "$@" --ignore=tests/e2e 9>&- || rc=$?
  # The in-cluster tests fail by themselves, saying why, if the cluster cannot come up.
  cluster_up || echo "test.sh: hack/cluster.sh up failed; the in-cluster tests will say so" >&2
  rc2=0
  "${PY[@]}" -m pytest "$@" tests/e2e 9>&- || rc2=$?
  ((rc)) || rc=$rc2
fi
exit "$rc"
