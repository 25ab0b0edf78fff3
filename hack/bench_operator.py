#!/usr/bin/env python3
"""Operator scale benchmark: 1,000 Triggers over 100 EventSources.

Against the real kube-apiserver (hack/control-plane.sh) and a private
redis-server, with the real `tidings operator` as a subprocess:

1. baseline: the API server alone stores the 1,100 objects (kubectl apply),
   the cost any controller pays before it can do anything;
2. running operator: time from the start of that apply until all 1,000
   Triggers are Ready (compiled, routed, status written);
3. cold start: the operator restarted with everything in place — time until
   it has re-reconciled all of them, and how many writes that caused (should
   be none: table version and resourceVersions unchanged);
4. stopping: SIGTERM with everything in place, with Redis up (after part 2) and
   with Redis stopped under it (after part 3), time until the process exits
   (a pod's grace period is 30 s);
5. deletion: every object deleted, time until all are gone (EventSources
   hold a finalizer until cleaned up; Triggers have none) and until the
   routing table has no route left;
and the operator's memory (RSS, peak) and CPU. Prints ratios against the baseline.

    eval "$(bash hack/control-plane.sh env)"
    .venv/bin/python hack/bench_operator.py [--triggers 1000] [--sources 100]
        [--skip-baseline] [--skip-delete]
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import yaml

from tidings.api import keys
from tidings.api.sealing import new_key
from tidings.cli.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[1]
# One list, not pages: at 10,000 objects on a loaded machine, paging took longer
# than the API server keeps a continue token (its etcd compaction interval).
WHOLE = ("--chunk-size=0",)


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    binary = os.environ.get("KUBECTL", "kubectl")
    done = subprocess.run([binary, *args], input=input, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args[:3])}: {done.stderr}")
    return done.stdout


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process, KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def manifests(sources: int, triggers: int) -> str:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "mailer"},
            "spec": {"ports": [{"port": 8080}]},
        }
    ]
    for s in range(sources):
        docs.append(
            {
                "apiVersion": "tidings.dev/v1alpha1",
                "kind": "EventSource",
                "metadata": {"name": f"src-{s}"},
                "spec": {"http": {}},  # default auth: a generated token Secret each
            }
        )
    for t in range(triggers):
        docs.append(
            {
                "apiVersion": "tidings.dev/v1alpha1",
                "kind": "Trigger",
                "metadata": {"name": f"trg-{t}"},
                "spec": {
                    "source": f"src-{t % sources}",
                    "filter": {"types": ["com.example.created"], "expression": "event.data.n > 1"},
                    "subscriber": {"ref": {"name": "mailer"}, "path": f"/hooks/{t}"},
                },
            }
        )
    return yaml.safe_dump_all(docs)


def ready_counts(namespace: str) -> tuple[int, int]:
    """(Triggers Ready, Triggers total)."""
    items = json.loads(kubectl("get", "triggers", "-n", namespace, "-o", "json", *WHOLE))["items"]
    ready = sum(
        1
        for item in items
        for c in (item.get("status") or {}).get("conditions") or []
        if c["type"] == "Ready" and c["status"] == "True"
    )
    return ready, len(items)


def resource_versions(namespace: str) -> dict[str, str]:
    out = {}
    for kind in ("triggers", "eventsources", "secrets"):
        items = json.loads(kubectl("get", kind, "-n", namespace, "-o", "json", *WHOLE))["items"]
        for item in items:
            out[f"{kind}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return out


def wait_count(
    counts: Callable[[], tuple[int, int]],
    count: int,
    started: float,
    limit: float,
    what: str,
    every: float = 0.5,
) -> float:
    """Seconds since `started` until `counts()` reaches `count` Triggers that are `what`."""
    while True:
        done, _ = counts()
        if done >= count:
            return time.monotonic() - started
        if time.monotonic() - started > limit:
            raise SystemExit(f"only {done}/{count} Triggers {what} after {limit:.0f}s")
        time.sleep(every)


def wait_all_ready(namespace: str, count: int, started: float, limit: float) -> float:
    return wait_count(lambda: ready_counts(namespace), count, started, limit, "Ready")


def apply_marker(namespace: str, prefix: str) -> str:
    """Create one more Trigger (named `prefix`-…); its name."""
    marker = f"{prefix}-{uuid.uuid4().hex[:4]}"
    kubectl(
        "apply", "-n", namespace, "-f", "-",
        input=yaml.safe_dump({
            "apiVersion": "tidings.dev/v1alpha1", "kind": "Trigger",
            "metadata": {"name": marker},
            "spec": {"source": "src-0", "subscriber": {"ref": {"name": "mailer"}}},
        }),
    )  # fmt: skip
    return marker


class Operator:
    def __init__(self, namespace: str, redis_url: str, log: Path) -> None:
        self.command = [
            sys.executable, "-m", "tidings.cli", "operator",
            "--namespace", namespace, "--redis-url", redis_url, "--standalone",
        ]  # fmt: skip
        self.env = {**os.environ, "TIDINGS_SEAL_KEY": new_key()}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=REPO
            )

    def stop(self, timeout: float = 60) -> float:
        """SIGTERM; seconds until the process exited (SIGKILL after `timeout`: inf)."""
        if self.process is None:
            return 0.0
        started = time.monotonic()
        self.process.terminate()
        try:
            self.process.wait(timeout)
            took = time.monotonic() - started
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            took = float("inf")
        self.process = None
        return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=100)
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--limit", type=float, default=300, help="give up after this many s")
    parser.add_argument(
        "--skip-baseline", action="store_true", help="no apply without the operator (no ratio)"
    )
    parser.add_argument("--skip-delete", action="store_true", help="leave out part 5")
    args = parser.parse_args()
    if not os.environ.get("KUBECONFIG"):
        raise SystemExit('no cluster: eval "$(bash hack/control-plane.sh env)" first')

    kubectl("apply", "-f", str(REPO / "crds"))
    namespace = f"bench-operator-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    server = RedisServer(workdir / "redis")
    server.start()
    client = redis.Redis.from_url(server.url)
    operator = Operator(namespace, server.url, workdir / "operator.log")
    text = manifests(args.sources, args.triggers)
    objects = 1 + args.sources + args.triggers
    results: dict[str, Any] = {}
    try:
        # 1. Baseline: the API server stores the objects, no operator running.
        baseline_ns = f"{namespace}-baseline"
        kubectl("create", "namespace", baseline_ns)
        if not args.skip_baseline:
            started = time.monotonic()
            kubectl("apply", "-n", baseline_ns, "-f", "-", input=text)
            results["baseline_apply_s"] = time.monotonic() - started

        # 2. The operator running while the same objects arrive.
        operator.start()
        time.sleep(3)  # started and watching (an empty namespace)
        assert operator.process is not None
        results["idle_rss_kib"], _ = rss_kib(operator.process.pid)
        started = time.monotonic()
        kubectl("apply", "-n", namespace, "-f", "-", input=text)
        results["apply_s"] = time.monotonic() - started
        results["all_ready_s"] = wait_all_ready(namespace, args.triggers, started, args.limit)
        print(f"partial: {results}", flush=True)
        assert operator.process is not None
        results["rss_kib"], results["peak_rss_kib"] = rss_kib(operator.process.pid)
        results["cpu_s"] = cpu_seconds(operator.process.pid)
        results["routes_published"] = client.hlen(keys.ROUTES)
        time.sleep(3)  # let the last status writes land
        version = int(client.get(keys.TABLE_VERSION) or 0)
        versions = resource_versions(namespace)

        # 3. Cold start: everything exists; the restarted operator must change nothing.
        results["sigterm_s"] = operator.stop()
        operator.start()
        started = time.monotonic()
        # A Trigger created after the restart, last in every queue, proves the
        # operator has gone through the backlog (Kopf lists objects in order).
        marker = apply_marker(namespace, "late")
        results["restart_ready_s"] = wait_all_ready(
            namespace, args.triggers + 1, started, args.limit
        )
        time.sleep(5)
        after = resource_versions(namespace)
        after.pop(f"triggers/{marker}", None)
        results["restart_status_writes"] = sum(1 for k, v in versions.items() if after.get(k) != v)
        results["restart_table_changes"] = int(client.get(keys.TABLE_VERSION) or 0) - version - 1
        assert operator.process is not None
        results["restart_rss_kib"], results["restart_peak_rss_kib"] = rss_kib(operator.process.pid)
        results["restart_cpu_s"] = cpu_seconds(operator.process.pid)
        print(f"partial: {results}", flush=True)

        # 4. SIGTERM while Redis is unreachable: every controller's next call fails.
        server.stop()
        time.sleep(5)
        results["sigterm_redis_down_s"] = operator.stop()
        server.start()
        print(f"partial: {results}", flush=True)
        if not args.skip_delete:
            # 5. Deletion of everything: routes, cursors, streams cleaned up.
            operator.start()
            # Only once it has listed everything: a Trigger deleted before that is
            # never seen (no finalizer); the orphan collector's first pass takes it.
            apply_marker(namespace, "listed")
            wait_all_ready(namespace, args.triggers + 2, time.monotonic(), args.limit)
            started = time.monotonic()
            # --wait=false and poll: kubectl's own wait goes object by object (minutes).
            kubectl("delete", "triggers,eventsources", "--all", "-n", namespace, "--wait=false")
            while kubectl(
                "get", "triggers,eventsources", "-n", namespace, "-o", "name", *WHOLE
            ).strip():
                if time.monotonic() - started > args.limit:
                    raise SystemExit("objects left after deletion")
                time.sleep(0.5)
            results["delete_all_s"] = time.monotonic() - started
            # A Trigger is gone at once; its route goes in the background.
            while client.hlen(keys.ROUTES) and time.monotonic() - started < args.limit:
                time.sleep(0.5)
            results["delete_routes_gone_s"] = time.monotonic() - started
            results["routes_left"] = client.hlen(keys.ROUTES)
    finally:
        operator.stop()
        server.stop()
        for ns in (namespace, f"{namespace}-baseline"):
            kubectl("delete", "namespace", ns, "--wait=false", check=False)

    cpu = os.cpu_count()
    print(f"machine: {platform.processor() or platform.machine()}, {cpu} cores, "
          f"Python {platform.python_version()}, load average at the end "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"objects: {args.sources} EventSources, {args.triggers} Triggers, 1 Service")
    baseline = results.get("baseline_apply_s")
    if baseline:
        print(f"baseline  kubectl apply of {objects} objects (no operator): {baseline:.1f} s")
    ratio = (f" ({results['apply_s'] / baseline:.2f}x baseline; all Ready "
             f"{results['all_ready_s'] / baseline:.2f}x)" if baseline else "")  # fmt: skip
    print(f"running   apply {results['apply_s']:.1f} s; all {args.triggers} Ready after "
          f"{results['all_ready_s']:.1f} s{ratio}; "
          f"routes in Redis: {results['routes_published']}")  # fmt: skip
    print(f"          operator RSS {results['rss_kib'] / 1024:.0f} MiB "
          f"(peak {results['peak_rss_kib'] / 1024:.0f} MiB; idle before: "
          f"{results['idle_rss_kib'] / 1024:.0f} MiB), "
          f"CPU {results['cpu_s']:.1f} s")  # fmt: skip
    print(f"restart   all Ready again (+1 new) after {results['restart_ready_s']:.1f} s; "
          f"objects rewritten: {results['restart_status_writes']}; "
          f"table changes besides the new route: {results['restart_table_changes']}; "
          f"RSS {results['restart_rss_kib'] / 1024:.0f} MiB, "
          f"CPU {results['restart_cpu_s']:.1f} s")  # fmt: skip
    print(f"stop      SIGTERM to exit: {results['sigterm_s']:.1f} s with Redis up, "
          f"{results['sigterm_redis_down_s']:.1f} s with Redis stopped (inf: SIGKILLed "
          f"after 60 s)")  # fmt: skip
    if "delete_all_s" in results:
        print(f"delete    all Triggers and EventSources gone after "
              f"{results['delete_all_s']:.1f} s, every route after "
              f"{results['delete_routes_gone_s']:.1f} s; routes left: "
              f"{results['routes_left']}")  # fmt: skip
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
