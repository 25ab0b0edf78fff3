#!/usr/bin/env python3
"""What tracing costs the dispatcher: off against the code before tracing existed,
and on, in one run on this machine.

    .venv/bin/python hack/bench_tracing.py [--events 10000] [--rounds 5] [--baseline REV]

Three kinds of run, each a fresh process delivering the same events through the
real Dispatcher with every feature on (as hack/bench_dispatch.py: type + CEL
filter, signing, metrics, retry bookkeeping, leases, a rate limit), interleaved
round by round because the machine's load drifts:

- baseline: the tree of REV (default: the commit before tidings.api.tracing was
  added), exported with `git archive`;
- off: this tree, no OTEL_* variables (the default);
- on: this tree with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a real Jaeger
  (hack/jaeger.sh up; JAEGER_OTLP_HTTP), every attempt sampled: one CLIENT span
  per delivery, batched and exported over OTLP/HTTP.

Every event carries a traceparent, as events ingested by a traced producer do.
Prints deliveries/s and this process's CPU per delivery for each, best and
median of the rounds, and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

HACK = Path(__file__).resolve().parent
REPO = HACK.parent
ROOTS = ("api/src", "dispatcher/src", "operator/src", "cli/src")


def use_tree(tree: Path) -> None:
    """Import `tidings` from `tree` only: drop the editable install's finder."""
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in repr(f)]
    sys.path[:] = [p for p in sys.path if "__editable__" not in p]
    sys.path_importer_cache.clear()
    for root in reversed(ROOTS):
        sys.path.insert(0, str(tree / root))
    sys.path.insert(0, str(HACK))


# --- one measurement (a child process) --------------------------------------------------


async def measure(redis_url: str, subscriber: str, events: int, name: str) -> dict[str, Any]:
    from bench_dispatch import LOOPBACK, NAMESPACE, World, add_source, run_until, trigger
    from prometheus_client import CollectorRegistry
    from redis.asyncio import Redis

    from tidings.api import table
    from tidings.api.events import CloudEvent, encode
    from tidings.api.sealing import Sealer, new_key
    from tidings.dispatcher.engine import Dispatcher
    from tidings.dispatcher.routing import TableWatcher

    redis = Redis.from_url(redis_url)
    sealer, world = Sealer(new_key()), World()
    stream = await add_source(redis, name, world, sealer)
    for start in range(0, events, 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(events, start + 1000)):
                event = CloudEvent(
                    id=f"{name}-{i}",
                    source="/bench",
                    type="com.example.order.created",
                    data={"n": i, "plan": "pro"},
                    extensions={"traceparent": f"00-{i + 1:032x}-{i + 1:016x}-01"},
                )
                pipe.xadd(stream, encode(event))  # type: ignore[arg-type]
            await pipe.execute()
    watcher = TableWatcher(redis)
    await watcher.start()
    dispatcher = Dispatcher(
        redis, watcher, sealer=sealer, registry=CollectorRegistry(), consumer=name, **LOOPBACK
    )
    await dispatcher.start()
    route = trigger(name, name, subscriber, world, sealer)
    await redis.xgroup_create(route.stream, route.group, id="0")
    cpu = time.process_time()
    await table.put_route(redis, route)
    seconds = await run_until(redis, [route], events, limit=300)
    cpu = time.process_time() - cpu
    await table.delete_route(redis, NAMESPACE, name)
    await dispatcher.stop(grace=1.0)
    await watcher.stop()
    await redis.delete(stream)
    await redis.aclose()
    return {"rate": events / seconds, "cpu_us": cpu / events * 1e6}


def worker(options: argparse.Namespace) -> None:
    """One measurement. `off` runs this tree as a process started without OTEL_*
    does (tidings.cli.main calls tracing.setup, which finds nothing to do)."""
    use_tree(Path(options.tree))
    mode = options.worker
    if mode != "baseline":
        from tidings.api import tracing

        enabled = tracing.setup("tidings-bench") is not None
        assert enabled == (mode == "on"), f"{mode}: tracing on is {enabled}"
    result = asyncio.run(
        measure(options.redis_url, options.subscriber, options.events, options.name)
    )
    if mode == "on":
        started = time.perf_counter()
        tracing.shutdown()
        result["flush_s"] = time.perf_counter() - started
    result["sdk_loaded"] = any(m.startswith("opentelemetry.sdk.trace") for m in sys.modules)
    print(json.dumps(result))


# --- the run -------------------------------------------------------------------------------


def baseline_rev(given: str | None) -> str:
    if given:
        return given
    added = subprocess.run(
        [
            "git",
            "log",
            "--diff-filter=A",
            "--format=%H",
            "-1",
            "--",
            "api/src/tidings/api/tracing.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not added:
        raise SystemExit("no commit adds tidings.api.tracing yet: pass --baseline REV")
    return f"{added}^"


def export_tree(rev: str, into: Path) -> None:
    archive = into / "tree.tar"
    subprocess.run(
        ["git", "archive", "--format=tar", "-o", str(archive), rev, *ROOTS],
        cwd=REPO,
        check=True,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")


def run_one(
    mode: str,
    tree: Path,
    redis_url: str,
    subscriber: str,
    events: int,
    name: str,
    env: dict[str, str],
) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            mode,
            "--tree",
            str(tree),
            "--redis-url",
            redis_url,
            "--subscriber",
            subscriber,
            "--events",
            str(events),
            "--name",
            name,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(options: argparse.Namespace) -> None:
    sys.path.insert(0, str(HACK))
    from bench_dispatch import machine, subscriber_main

    from tidings.cli.redis_server import RedisServer, free_port

    jaeger = os.environ.get("JAEGER_OTLP_HTTP")
    if not jaeger:
        raise SystemExit('tracing on needs a real OTLP endpoint: eval "$(hack/jaeger.sh up)"')
    rev = baseline_rev(options.baseline)
    work = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    export_tree(rev, work)
    short = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    print(f"machine      {machine()}")
    print(f"load         {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    print(f"baseline     {short} (before tracing); {options.events} events per run")
    server = RedisServer(work / "redis")
    server.start()
    port = free_port()
    sub = multiprocessing.get_context("spawn").Process(target=subscriber_main, args=(port,))
    sub.start()
    plain = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    traced = {
        **plain,
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger,
        "OTEL_SERVICE_NAME": "tidings-bench",
    }
    modes = {
        "baseline": (work / "tree", plain),
        "off": (REPO, plain),
        "on": (REPO, traced),
    }
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    url = f"http://127.0.0.1:{port}/hook"
    try:
        time.sleep(1.0)  # the subscriber binds
        for round_ in range(options.rounds):
            line = []
            for mode, (tree, env) in modes.items():
                result = run_one(
                    mode, tree, server.url, url, options.events, f"{mode}{round_}", env
                )
                if mode != "on" and result["sdk_loaded"]:
                    raise SystemExit(f"{mode}: the OpenTelemetry SDK was imported with tracing off")
                results[mode].append(result)
                line.append(f"{mode} {result['rate']:5.0f}/s {result['cpu_us']:4.0f} µs")
            print(f"round {round_ + 1}      " + ", ".join(line))
    finally:
        sub.terminate()
        sub.join()
        server.stop()
    summary: dict[str, Any] = {}
    for mode, runs in results.items():
        rates = [r["rate"] for r in runs]
        cpus = [r["cpu_us"] for r in runs]
        summary[mode] = {
            "best_rate": max(rates),
            "median_rate": statistics.median(rates),
            "best_cpu_us": min(cpus),
            "median_cpu_us": statistics.median(cpus),
        }
    base = summary["baseline"]
    for mode in ("baseline", "off", "on"):
        s = summary[mode]
        best, median = s["best_rate"] / base["best_rate"], s["median_rate"] / base["median_rate"]
        print(
            f"{mode:<12} {s['best_rate']:6.0f}/s best, {s['median_rate']:6.0f}/s median "
            f"({best:.3f}, {median:.3f} of the baseline); "
            f"CPU {s['best_cpu_us']:.0f} µs best, {s['median_cpu_us']:.0f} µs "
            f"median per delivery ({base['best_cpu_us'] / s['best_cpu_us']:.3f}, "
            f"{base['median_cpu_us'] / s['median_cpu_us']:.3f} of the baseline's throughput per "
            "CPU second)"
        )
    if options.json:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", help="git revision to compare with (default: before tracing)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    parser.add_argument("--worker", choices=("baseline", "off", "on"), help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--subscriber", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.worker:
        worker(parsed)
    else:
        main(parsed)
