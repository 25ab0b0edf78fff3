#!/usr/bin/env python3
"""Operator scale benchmark: 1,000 Triggers over 100 EventSources.

Against the real kube-apiserver (hack/control-plane.sh) and a private
redis-server, with the real `tidings operator` as a subprocess:

1. baseline: the API server alone stores the 1,100 objects (kubectl apply),
   the cost any controller pays before it can do anything (with the same
   watch on Ready as part 2 open: since 2026-12-01, evening);
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
and the operator's memory (RSS, peak) and CPU, and the API server's and etcd's
CPU. Prints ratios against the baseline.

Readiness is followed with a watch, not by listing every Trigger again and
again (`--poll` does that, as this benchmark did until 2026-12-01: at 10,000
Triggers each list is 50 MB and took a core away from what it measures).

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
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes  # type: ignore[import-untyped]
import redis
import urllib3
import yaml
from bench_status_write import cpu_seconds as cpu_of
from bench_status_write import processes

from tidings.api import keys
from tidings.api.sealing import new_key
from tidings.cli.redis_server import RedisServer
from tidings.operator.kube import load_config

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
    """(Triggers Ready, Triggers total), from the server's table (the CRD's Ready
    column): at 10,000 Triggers 1 MB against 50 MB of `-o json`, and a third of
    kubectl's CPU. Used
    once per phase, after the watch below has seen them all Ready."""
    rows = kubectl("get", "triggers", "-n", namespace, "--no-headers", *WHOLE).splitlines()
    cells = [row.split() for row in rows if row.strip()]
    ready = sum(1 for row in cells if len(row) > 3 and row[3] == "True")
    return ready, len(cells)


def json_ready_counts(namespace: str) -> tuple[int, int]:
    """(Triggers Ready, Triggers total) from the full objects (--poll)."""
    items = json.loads(kubectl("get", "triggers", "-n", namespace, "-o", "json", *WHOLE))["items"]
    return sum(1 for item in items if is_ready(item)), len(items)


def is_ready(item: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (item.get("status") or {}).get("conditions") or []
    )


class ReadyWatch:
    """Watches the Triggers of a namespace (or one of them) and notes when `count`
    of them are Ready. A watch, not polling: a LIST of 10,000 Triggers is 50 MB,
    about 13 s and 8 CPU-seconds of kubectl on this machine, and polling it every
    few seconds took a core away from the API server and the operator being
    measured. Started before the objects exist (an empty first list), or on one
    object by name; the constructor returns once that first list is done (the
    API server reads every Trigger of the namespace for it, even for one name),
    so it does not fall into a measurement."""

    def __init__(self, namespace: str, name: str | None = None) -> None:
        self.namespace = namespace
        self.selector = f"metadata.name={name}" if name else None
        self.api: Any = kubernetes.client.CustomObjectsApi(
            kubernetes.client.ApiClient(load_config(os.environ["KUBECONFIG"]))
        )
        self.ready: set[str] = set()
        self.changed = threading.Condition()
        self.listed = threading.Event()
        self.stopping = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.listed.wait(120)
        if self.error is not None:
            raise SystemExit(f"watching Triggers: {self.error!r}")

    def _list(self) -> str:
        listed: dict[str, Any] = self.api.list_namespaced_custom_object(
            "tidings.dev", "v1alpha1", self.namespace, "triggers", field_selector=self.selector
        )
        with self.changed:
            self.ready = {i["metadata"]["name"] for i in listed["items"] if is_ready(i)}
            self.changed.notify_all()
        return str(listed["metadata"]["resourceVersion"])

    def _run(self) -> None:
        try:
            version = self._list()
            self.listed.set()
            while not self.stopping:
                try:
                    watcher = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
                    for event in watcher.stream(  # type: ignore[no-untyped-call]
                        self.api.list_namespaced_custom_object,
                        "tidings.dev", "v1alpha1", self.namespace, "triggers",
                        field_selector=self.selector, resource_version=version,
                        timeout_seconds=10, allow_watch_bookmarks=True,
                    ):  # fmt: skip
                        item = event["object"]
                        version = item["metadata"]["resourceVersion"]
                        if event["type"] == "BOOKMARK":
                            continue
                        name = item["metadata"]["name"]
                        with self.changed:
                            if event["type"] != "DELETED" and is_ready(item):
                                self.ready.add(name)
                            else:
                                self.ready.discard(name)
                            self.changed.notify_all()
                        if self.stopping:
                            return
                except kubernetes.client.ApiException as error:
                    if error.status != 410:
                        raise
                    version = self._list()  # the version is too old: list again
                except urllib3.exceptions.ProtocolError:
                    continue  # the connection dropped: watch again from `version`
        except BaseException as error:
            with self.changed:
                self.error = error
                self.changed.notify_all()
            self.listed.set()

    def wait(self, count: int, started: float, limit: float) -> float:
        """Seconds since `started` until `count` Triggers are Ready."""
        with self.changed:
            while len(self.ready) < count:
                if self.error is not None:
                    raise SystemExit(f"watching Triggers: {self.error!r}")
                left = started + limit - time.monotonic()
                if left <= 0:
                    raise SystemExit(
                        f"only {len(self.ready)}/{count} Triggers Ready after {limit:.0f}s"
                    )
                self.changed.wait(min(left, 1.0))
        return time.monotonic() - started

    def stop(self) -> None:
        """Stops at the next event, or within the watch's 10 s timeout."""
        self.stopping = True


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


def check_all_ready(namespace: str, count: int) -> None:
    ready, total = ready_counts(namespace)
    if ready < count:
        raise SystemExit(
            f"the watch saw {count} Triggers Ready, the API server has {ready}/{total}"
        )


def marker_name(prefix: str) -> str:
    """The name of one more Trigger, sorting after every `trg-…`: last in the
    operator's first list as in its watch, so once it is Ready the operator has
    been through all the others."""
    return f"zz-{prefix}-{uuid.uuid4().hex[:4]}"


def apply_marker(namespace: str, marker: str) -> str:
    """Create one more Trigger named `marker`; its name."""
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
    def __init__(self, namespace: str, redis_url: str, log: Path, nice: int = 0) -> None:
        self.command = [
            *(["nice", "-n", str(nice)] if nice else []),
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
    parser.add_argument(
        "--operator-nice",
        type=int,
        default=0,
        metavar="N",
        help="run the operator at this niceness: below the API server, etcd and kubectl, "
        "as in a cluster, where its pod competes for CPU with the weight of its CPU "
        "request (the chart's 100m) and the API server runs on a node of its own",
    )
    parser.add_argument(
        "--poll",
        action="store_true",
        help="wait for Ready by polling `kubectl get -o json` of every Trigger, as this "
        "benchmark did until 2026-12-01 (the polling loads the machine it measures)",
    )
    args = parser.parse_args()
    if not os.environ.get("KUBECONFIG"):
        raise SystemExit('no cluster: eval "$(bash hack/control-plane.sh env)" first')

    home = os.path.dirname(os.environ["KUBECONFIG"])
    control_plane = processes("kube-apiserver", home) + processes("etcd", home)
    if not control_plane:
        raise SystemExit(f"no kube-apiserver/etcd of {home} found")
    kubectl("apply", "-f", str(REPO / "crds"))
    namespace = f"bench-operator-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    server = RedisServer(workdir / "redis")
    server.start()
    client = redis.Redis.from_url(server.url)
    operator = Operator(namespace, server.url, workdir / "operator.log", args.operator_nice)
    text = manifests(args.sources, args.triggers)
    objects = 1 + args.sources + args.triggers
    results: dict[str, Any] = {}
    try:
        # 1. Baseline: the API server stores the objects, no operator running.
        baseline_ns = f"{namespace}-baseline"
        kubectl("create", "namespace", baseline_ns)
        if not args.skip_baseline:
            # The same watch as beside the operator below: each new object costs the
            # API server (and this process) an event for it, operator or not.
            watch = None if args.poll else ReadyWatch(baseline_ns)
            started, server_cpu = time.monotonic(), cpu_of(control_plane)
            kubectl("apply", "-n", baseline_ns, "-f", "-", input=text)
            results["baseline_apply_s"] = time.monotonic() - started
            results["baseline_server_cpu_s"] = cpu_of(control_plane) - server_cpu
            if watch is not None:
                watch.stop()

        # 2. The operator running while the same objects arrive.
        operator.start()
        time.sleep(3)  # started and watching (an empty namespace)
        assert operator.process is not None
        results["idle_rss_kib"], _ = rss_kib(operator.process.pid)
        watch = None if args.poll else ReadyWatch(namespace)
        started, server_cpu = time.monotonic(), cpu_of(control_plane)
        kubectl("apply", "-n", namespace, "-f", "-", input=text)
        results["apply_s"] = time.monotonic() - started
        results["apply_server_cpu_s"] = cpu_of(control_plane) - server_cpu
        print(f"partial: {results}", flush=True)
        if watch is None:
            results["all_ready_s"] = wait_count(
                lambda: json_ready_counts(namespace), args.triggers, started, args.limit, "Ready"
            )
        else:
            results["all_ready_s"] = watch.wait(args.triggers, started, args.limit)
            watch.stop()
        results["server_cpu_s"] = cpu_of(control_plane) - server_cpu
        if watch is not None:
            check_all_ready(namespace, args.triggers)
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
        marker = marker_name("late")
        watch = None if args.poll else ReadyWatch(namespace, marker)
        operator.start()
        started, server_cpu = time.monotonic(), cpu_of(control_plane)
        # A Trigger created after the restart, last in every queue, proves the
        # operator has gone through the backlog (Kopf lists objects in order).
        apply_marker(namespace, marker)
        if watch is None:
            results["restart_ready_s"] = wait_count(
                lambda: json_ready_counts(namespace), args.triggers + 1, started, args.limit,
                "Ready",
            )  # fmt: skip
        else:
            results["restart_ready_s"] = watch.wait(1, started, args.limit)
            watch.stop()
        results["restart_server_cpu_s"] = cpu_of(control_plane) - server_cpu
        check_all_ready(namespace, args.triggers + 1)
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
            marker = marker_name("listed")
            watch = ReadyWatch(namespace, marker)
            apply_marker(namespace, marker)
            watch.wait(1, time.monotonic(), args.limit)
            watch.stop()
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
    print(f"objects: {args.sources} EventSources, {args.triggers} Triggers, 1 Service; "
          f"operator niceness {args.operator_nice}")  # fmt: skip
    baseline = results.get("baseline_apply_s")
    if baseline:
        print(f"baseline  kubectl apply of {objects} objects (no operator): {baseline:.1f} s; "
              f"API server + etcd CPU {results['baseline_server_cpu_s']:.1f} s")  # fmt: skip
    ratio = (f" ({results['apply_s'] / baseline:.2f}x baseline; all Ready "
             f"{results['all_ready_s'] / baseline:.2f}x)" if baseline else "")  # fmt: skip
    print(f"running   apply {results['apply_s']:.1f} s; all {args.triggers} Ready after "
          f"{results['all_ready_s']:.1f} s{ratio}; "
          f"routes in Redis: {results['routes_published']}")  # fmt: skip
    print(f"          API server + etcd CPU {results['apply_server_cpu_s']:.1f} s during the "
          f"apply, {results['server_cpu_s']:.1f} s until all Ready")  # fmt: skip
    print(f"          operator RSS {results['rss_kib'] / 1024:.0f} MiB "
          f"(peak {results['peak_rss_kib'] / 1024:.0f} MiB; idle before: "
          f"{results['idle_rss_kib'] / 1024:.0f} MiB), "
          f"CPU {results['cpu_s']:.1f} s")  # fmt: skip
    print(f"restart   all Ready again (+1 new) after {results['restart_ready_s']:.1f} s; "
          f"objects rewritten: {results['restart_status_writes']}; "
          f"table changes besides the new route: {results['restart_table_changes']}; "
          f"RSS {results['restart_rss_kib'] / 1024:.0f} MiB, "
          f"CPU {results['restart_cpu_s']:.1f} s; API server + etcd CPU "
          f"{results['restart_server_cpu_s']:.1f} s")  # fmt: skip
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
