#!/usr/bin/env python3
"""Start-up benchmark: how long each `tidings` command takes to start.

For each source tree (this checkout, and any `--tree LABEL=PATH`, e.g. a
`git worktree` of an older commit, run on this venv's libraries), median of
--runs runs, interleaved so load changes hit every tree alike:

- baselines, same run: `python -c pass` (the interpreter) and
  `python -c "import tidings.cli.main"` (the command's own module);
- `--help` of the command and of operator, dispatcher, source, dev, send;
- time to first useful work of the real processes:
  dispatcher   until /healthz answers, then until /readyz does (Redis
               answered, routing table loaded);
  source       a schedule adapter from a manifest, until its /healthz answers;
  dev          examples/quickstart on the benchmark's Redis, until /healthz;
  operator     (with $KUBECONFIG, e.g. hack/control-plane.sh) a standalone
               operator with one EventSource and one Trigger in place and an
               empty Redis, until the Trigger's route is in the routing table.

Wall clock and CPU (user + system of the process, until that moment) are
printed, with CPU as a multiple of `python -c pass`, and each tree against the
first. Not a pass/fail test.

    .venv/bin/python hack/bench_startup.py [--runs 5] [--tree before=../old] [--only help]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from tidings.api import keys
from tidings.api.sealing import new_key
from tidings.cli.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("api/src", "dispatcher/src", "operator/src", "cli/src")
NAMESPACE = "bench-startup"
HELP = ["--help", "operator --help", "dispatcher --help", "source --help", "dev --help"]
HELP += ["send --help"]
OPERATOR_OBJECTS = """
apiVersion: v1
kind: Service
metadata: {name: mailer}
spec: {ports: [{port: 8080}]}
---
apiVersion: tidings.dev/v1alpha1
kind: EventSource
metadata: {name: orders}
spec: {http: {}}
---
apiVersion: tidings.dev/v1alpha1
kind: Trigger
metadata: {name: mail}
spec:
  source: orders
  filter: {expression: "event.type == 'created'"}
  subscriber: {ref: {name: mailer}, path: /hooks}
"""
SCHEDULE = """
apiVersion: tidings.dev/v1alpha1
kind: EventSource
metadata: {name: tick, namespace: bench}
spec:
  schedule: {cron: "0 6 * * *", data: {report: daily}}
"""


@dataclass(frozen=True)
class Tree:
    label: str
    path: Path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment that runs this tree's code: its four source roots first
        on sys.path (ahead of the venv's editable install)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(str(self.path / root) for root in ROOTS)
        env.pop("OTEL_TRACES_EXPORTER", None)
        env.update(extra or {})
        return env


def tidings(*args: str) -> list[str]:
    return [sys.executable, "-m", "tidings.cli", *args]


def cpu_seconds(pid: int) -> float:
    """User + system CPU a running process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_to_exit(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s) of a command that exits by itself."""
    started = time.monotonic()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0, 2):
        assert process.stderr is not None
        raise SystemExit(f"{' '.join(command)}: exit {process.returncode}\n{process.stderr.read()}")
    return wall, usage.ru_utime + usage.ru_stime


def run_until(
    command: list[str],
    env: dict[str, str],
    ready: Callable[[], bool],
    log: Path,
    limit: float = 120,
) -> tuple[float, float]:
    """(wall s, CPU s) from the start of a long-running command until `ready()`,
    which is polled every 10 ms; then SIGTERM."""
    limit = 120.0
    with log.open("w") as output:
        started = time.monotonic()
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            while not ready():
                if process.poll() is not None:
                    raise SystemExit(f"{' '.join(command[3:5])} exited:\n{log.read_text()[-3000:]}")
                if time.monotonic() - started > limit:
                    raise SystemExit(f"{' '.join(command[3:5])}: not ready after {limit} s")
                time.sleep(0.01)
            wall = time.monotonic() - started
            cpu = cpu_seconds(process.pid)
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return wall, cpu


def answers(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    return check


def kubectl(*args: str, input: str | None = None) -> str:
    binary = os.environ.get("KUBECTL", "kubectl")
    done = subprocess.run([binary, *args], input=input, capture_output=True, text=True)
    if done.returncode != 0 and "AlreadyExists" not in done.stderr:
        raise SystemExit(f"kubectl {' '.join(args[:3])}: {done.stderr}")
    return done.stdout


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="another source tree to measure, run before this checkout (repeatable)",
    )
    parser.add_argument("--only", choices=("help", "start"), help="one half of the cases")
    args = parser.parse_args()
    # SIGTERM unwinds like an error: the process under test and Redis are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    trees = [Tree(*(spec.split("=", 1) if "=" in spec else (spec, spec))) for spec in args.tree]
    trees = [Tree(t.label, Path(t.path).resolve()) for t in trees] + [Tree("this", REPO)]
    operator = bool(os.environ.get("KUBECONFIG")) and args.only != "help"

    workdir = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    server = RedisServer(workdir / "redis", appendonly=False)
    client: redis.Redis | None = None
    seal = {"TIDINGS_SEAL_KEY": new_key()}
    if args.only != "help":
        server.start()
        client = redis.Redis.from_url(server.url)
        (workdir / "schedule.yaml").write_text(SCHEDULE)
    if operator:
        kubectl("apply", "-f", str(REPO / "crds"))
        kubectl("create", "namespace", NAMESPACE)
        kubectl("apply", "-n", NAMESPACE, "-f", "-", input=OPERATOR_OBJECTS)

    # case -> tree label -> [(wall, cpu)]
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}

    def record(case: str, tree: Tree, sample: tuple[float, float]) -> None:
        results.setdefault(case, {}).setdefault(tree.label, []).append(sample)

    print(f"machine      {machine()}", flush=True)
    try:
        for run in range(args.runs):
            for tree in trees:
                env = tree.env()
                record("python -c pass", tree, run_to_exit([sys.executable, "-c", "pass"], env))
                record(
                    "import tidings.cli.main",
                    tree,
                    run_to_exit([sys.executable, "-c", "import tidings.cli.main"], env),
                )
                if args.only != "start":
                    for case in HELP:
                        record(f"tidings {case}", tree, run_to_exit(tidings(*case.split()), env))
                if args.only == "help":
                    continue
                assert client is not None
                port = free_port()
                base = f"http://127.0.0.1:{port}"
                env = tree.env(seal)
                command = tidings(
                    "dispatcher", "--listen", f"127.0.0.1:{port}", "--redis-url", server.url,
                    "--drain-connections", "0",
                )  # fmt: skip
                record(
                    "dispatcher until /healthz",
                    tree,
                    run_until(command, env, answers(f"{base}/healthz"), workdir / "d.log"),
                )
                record(
                    "dispatcher until /readyz",
                    tree,
                    run_until(command, env, answers(f"{base}/readyz"), workdir / "d.log"),
                )
                port = free_port()
                command = tidings(
                    "source", "schedule", "--eventsource", "bench/tick", "-f",
                    str(workdir / "schedule.yaml"), "--redis-url", server.url,
                    "--listen", f"127.0.0.1:{port}",
                )  # fmt: skip
                record(
                    "source (schedule) until /healthz",
                    tree,
                    run_until(
                        command, env, answers(f"http://127.0.0.1:{port}/healthz"), workdir / "s.log"
                    ),
                )
                port = free_port()
                command = tidings(
                    "dev", "-f", str(REPO / "examples/quickstart"), "--redis-url", server.url,
                    "--listen", f"127.0.0.1:{port}", "--state-dir", str(workdir / "dev"),
                )  # fmt: skip
                record(
                    "dev (quickstart) until /healthz",
                    tree,
                    run_until(
                        command, env, answers(f"http://127.0.0.1:{port}/healthz"), workdir / "v.log"
                    ),
                )
                if operator:
                    client.flushall()
                    command = tidings(
                        "operator", "--standalone", "--namespace", NAMESPACE,
                        "--redis-url", server.url, "--kubeconfig", os.environ["KUBECONFIG"],
                    )  # fmt: skip
                    record(
                        "operator until the route is published",
                        tree,
                        run_until(
                            command,
                            env,
                            lambda: bool(client.hexists(keys.ROUTES, f"{NAMESPACE}/mail")),
                            workdir / "o.log",
                        ),
                    )
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    finally:
        server.stop()
        if operator:
            kubectl("delete", "namespace", NAMESPACE, "--wait=false")

    print(f"machine      {machine()} (at the end)")
    print(f"runs         {args.runs}, medians; CPU = user + system of the process")
    floor = {
        label: statistics.median(c for _, c in samples)
        for label, samples in results["python -c pass"].items()
    }
    first = trees[0].label
    header = f"{'case':<40} {'tree':<8} {'wall s':>7} {'CPU s':>6} {'CPU/pass':>8}"
    if len(trees) > 1:
        header += f" {'wall/' + first:>12} {'CPU/' + first:>11}"
    print(header)
    for case, by_tree in results.items():
        for tree in trees:
            samples = by_tree[tree.label]
            wall = statistics.median(w for w, _ in samples)
            cpu = statistics.median(c for _, c in samples)
            line = (
                f"{case:<40} {tree.label:<8} {wall:7.2f} {cpu:6.2f} {cpu / floor[tree.label]:8.1f}"
            )
            if len(trees) > 1:
                wall0 = statistics.median(w for w, _ in by_tree[first])
                cpu0 = statistics.median(c for _, c in by_tree[first])
                line += f" {wall / wall0:12.2f} {cpu / cpu0:11.2f}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
