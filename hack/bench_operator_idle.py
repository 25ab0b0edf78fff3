"""The operator at rest: CPU of an idle operator over N Triggers whose reports
are at rest (issue 17, item 4).

Against the real kube-apiserver (hack/control-plane.sh) and a private
redis-server, with a real `tidings dispatcher` publishing every Trigger's
report (no traffic: each is published once, at rest, and vouched for by the
dispatcher's heartbeat). The operator runs in turn with the old behaviour
(`--health-rest-interval` equal to `--health-interval`, 5 s: every report read
every 5 s) and the default (60 s: reports at rest read seldom, news announced),
in alternating rounds, and its CPU over a window once every Trigger shows its
report is printed, with the ratio. Not a pass/fail test.

With `--no-dispatcher` no dispatcher runs, so no Trigger has a report: the operator
rests on those too (a dispatcher announces a Trigger's first report), and
`--health-rest-interval 5` reads each missing report every 5 s as it used to. The
window starts once every Trigger is Ready.

    eval "$(bash hack/control-plane.sh env)"
    .venv/bin/python hack/bench_operator_idle.py [--triggers 1000] [--sources 100]
        [--window 60] [--rounds 2] [--no-dispatcher]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench_operator import REPO, WHOLE, Operator, cpu_seconds, kubectl, manifests, wait_count

from tidings.cli.redis_server import RedisServer

HEALTH_INTERVAL = 5.0
SETTINGS = {"every 5 s (before)": HEALTH_INTERVAL, "at rest every 60 s": 60.0}


def reported(namespace: str) -> tuple[int, int]:
    """(Triggers whose status shows a Delivering report, Triggers)."""
    items = json.loads(kubectl("get", "triggers", "-n", namespace, "-o", "json", *WHOLE))["items"]
    shown = sum(
        1 for item in items if ((item.get("status") or {}).get("delivery") or {}).get("state")
    )
    return shown, len(items)


def ready(namespace: str) -> tuple[int, int]:
    """(Triggers whose Ready condition is True, Triggers)."""
    items = json.loads(kubectl("get", "triggers", "-n", namespace, "-o", "json", *WHOLE))["items"]
    shown = sum(
        1
        for item in items
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (item.get("status") or {}).get("conditions") or []
        )
    )
    return shown, len(items)


def wait_ready(namespace: str, count: int, limit: float) -> float:
    return wait_count(lambda: ready(namespace), count, time.monotonic(), limit, "Ready", every=1.0)


def wait_reported(namespace: str, count: int, limit: float) -> float:
    return wait_count(
        lambda: reported(namespace), count, time.monotonic(), limit, "show a report", every=1.0
    )


def wait_quiet(pid: int, limit: float) -> None:
    """Until the (re)started operator has gone through its first rounds: a 5 s slice
    under 30 % of a core."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = cpu_seconds(pid)
        time.sleep(5)
        if cpu_seconds(pid) - before < 1.5:
            return
    raise SystemExit(f"the operator stayed busy for {limit:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=100)
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--window", type=float, default=60.0, help="seconds of CPU measured")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=float, default=600, help="give up after this many s")
    parser.add_argument(
        "--no-dispatcher", action="store_true", help="no dispatcher: no Trigger has a report"
    )
    args = parser.parse_args()

    kubectl("apply", "-f", str(REPO / "crds"))
    namespace = f"bench-idle-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-idle-"))
    server = RedisServer(workdir / "redis")
    server.start()
    dispatcher: subprocess.Popen[bytes] | None = None
    operator: Operator | None = None
    results: dict[str, list[float]] = {name: [] for name in SETTINGS}
    env = Operator(namespace, server.url, workdir / "operator.log").env
    try:
        kubectl("apply", "-n", namespace, "-f", "-", input=manifests(args.sources, args.triggers))
        for round_ in range(args.rounds):
            for name, rest in SETTINGS.items():
                operator = Operator(namespace, server.url, workdir / "operator.log")
                operator.env = env  # one seal key for every operator and the dispatcher
                operator.command += [
                    "--health-interval", str(HEALTH_INTERVAL),
                    "--health-rest-interval", str(rest),
                ]  # fmt: skip
                operator.start()
                if dispatcher is None and not args.no_dispatcher:
                    # One dispatcher, with the operator's seal key.
                    with (workdir / "dispatcher.log").open("ab") as out:
                        dispatcher = subprocess.Popen(
                            [
                                sys.executable,
                                "-m",
                                "tidings.cli",
                                "dispatcher",
                                "--redis-url",
                                server.url,
                                "--no-ingest",
                                "--listen",
                                "127.0.0.1:0",
                            ],
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            env=operator.env,
                            cwd=REPO,
                        )
                if args.no_dispatcher:
                    took = wait_ready(namespace, args.triggers, args.limit)
                else:
                    took = wait_reported(namespace, args.triggers, args.limit)
                assert operator.process is not None
                pid = operator.process.pid
                wait_quiet(pid, args.limit)
                # Every controller's next rounds find nothing new: settled at rest.
                time.sleep(2 * HEALTH_INTERVAL + 5)
                before = cpu_seconds(pid)
                time.sleep(args.window)
                share = (cpu_seconds(pid) - before) / args.window
                results[name].append(share)
                print(
                    f"round {round_ + 1}, {name}: all "
                    f"{'Ready' if args.no_dispatcher else 'reports shown'} after {took:.0f} s; "
                    f"idle operator {100 * share:.1f} % of a core",
                    flush=True,
                )
                operator.stop()
                operator = None
    finally:
        if operator is not None:
            operator.stop()
        if dispatcher is not None:
            dispatcher.terminate()
            dispatcher.wait(30)
        server.stop()
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)

    load = os.getloadavg()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average at the end {load[0]:.1f}"
    )
    print(
        f"objects: {args.sources} EventSources, {args.triggers} Triggers; "
        f"window {args.window:.0f} s, {args.rounds} rounds"
    )
    (old, new) = (results[name] for name in SETTINGS)
    for name, shares in results.items():
        print(f"{name:>22}: " + ", ".join(f"{100 * s:.1f} %" for s in shares))
    print(f"ratio (at rest / before), best of each: {min(new) / min(old):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
