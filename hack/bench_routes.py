#!/usr/bin/env python3
"""A dispatcher with many routes: idle cost, Redis connections, and traffic on a few
(issue 17, item 4).

    .venv/bin/python hack/bench_routes.py [--routes 10000] [--sources 1000] [--seconds 20]

Starts a private redis-server and a subscriber process, publishes `--sources`
EventSources and `--routes` Triggers spread over them (no traffic), starts the
real Dispatcher in this process, then measures over `--seconds`:

1. idle: CPU of this process and of Redis (% of one core), Redis's connected
   clients, this process's RSS, and Redis's memory per route; first as shipped,
   then as before Triggers at rest went silent (each idle Trigger looking every
   8 s at most, publishing every 15 s, every source trimmed every retention
   interval: the old rules patched back in below);
2. traffic on 1 % more routes, each on a source of its own: deliveries/s, against
   the same events through the same routes in a dispatcher with 100 routes in all
   (the baseline, measured in the same run).

Not a pass/fail test; ratios and percentages against the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).parent))
from bench_dispatch import (
    LOOPBACK,
    World,
    add_source,
    fill,
    machine,
    subscriber_main,
    trigger,
)

from tidings.api import table
from tidings.api.process import connect_redis, freeze_startup_heap
from tidings.api.routes import Route
from tidings.api.sealing import Sealer, new_key
from tidings.cli.redis_server import RedisServer, free_port
from tidings.dispatcher import engine
from tidings.dispatcher.cursor import Fetched
from tidings.dispatcher.engine import Dispatcher
from tidings.dispatcher.routing import TableWatcher


@contextlib.contextmanager
def previous_idle_rules() -> Iterator[None]:
    """The idle rules before Triggers at rest went silent (2026-11-30)."""
    saved = (
        engine.TriggerWorker._wait_for_entries,
        engine.TriggerWorker.quiet,
        engine.Dispatcher._retention_wanted,
    )

    async def wait_for_entries(self: engine.TriggerWorker, fetched: Fetched) -> None:
        block = self.idle_block
        if fetched.due_in_ms >= 0:
            block = min(block, max(0.001, fetched.due_in_ms / 1000))
        stream = self.route.stream
        with self.dispatcher.waker.waiting_for(stream, fetched.last_id, self._wake):
            await self._sleep(block)
        # From 1 s, doubling per empty look up to 8 s; 1 s while anything is leased.
        self.idle_block = min(self.idle_block * 2, 8.0) if not fetched.leased else 1.0

    def quiet(self: engine.TriggerWorker) -> bool:
        return (
            not self.active
            and self.published is not None
            and time.monotonic() - self.published_at < engine.QUIET_PUBLISH
        )

    engine.TriggerWorker._wait_for_entries = wait_for_entries  # type: ignore[method-assign]
    engine.TriggerWorker.quiet = quiet  # type: ignore[method-assign]
    engine.Dispatcher._retention_wanted = lambda self, *_: True  # type: ignore[method-assign]
    try:
        yield
    finally:
        (
            engine.TriggerWorker._wait_for_entries,  # type: ignore[method-assign]
            engine.TriggerWorker.quiet,  # type: ignore[method-assign]
            engine.Dispatcher._retention_wanted,  # type: ignore[method-assign]
        ) = saved


async def every_worker_published(dispatcher: Dispatcher) -> None:
    for _ in range(7200):  # an hour at most
        if all(w.published is not None for w in dispatcher.workers.values()):
            return
        await asyncio.sleep(0.5)


async def all_quiet(dispatcher: Dispatcher, limit: float = 120) -> None:
    """Until every worker is quiet (nothing to publish), twice in a row 1 s apart."""
    calm = 0
    for _ in range(int(limit)):
        calm = calm + 1 if all(w.quiet() for w in dispatcher.workers.values()) else 0
        if calm >= 2:
            return
        await asyncio.sleep(1.0)
    raise SystemExit(f"bench_routes: the workers were not all quiet within {limit:g} s")


async def add_hot(redis: Redis, n: int, url: str, world: World, sealer: Sealer) -> list[Route]:
    """`n` routes, each on a source of its own (the traffic goes to them only)."""
    hot = [trigger(f"hot{i}", f"hot{i}", url, world, sealer) for i in range(n)]
    for route in hot:
        await add_source(redis, route.source, world, sealer)
        await table.put_route(redis, route)
    return hot


async def until_workers(dispatcher: Dispatcher, routes: list[Route]) -> None:
    """Until the dispatcher runs a worker for each of `routes` and it has looked."""
    for _ in range(1200):
        workers = [dispatcher.workers.get(r.id) for r in routes]
        if all(w is not None and w.published is not None for w in workers):
            return
        await asyncio.sleep(0.5)


async def redis_cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def idle_cost(redis: Redis, seconds: float, settle: float = 2) -> dict[str, float]:
    await asyncio.sleep(settle)  # let start-up (or the idle back-off) settle
    own, theirs, started = time.process_time(), await redis_cpu(redis), time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    clients = int((await redis.info("clients"))["connected_clients"])
    return {
        "process_pct": (time.process_time() - own) / elapsed * 100,
        "redis_pct": (await redis_cpu(redis) - theirs) / elapsed * 100,
        "clients": clients,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


async def xread_stats(redis: Redis) -> tuple[int, int]:
    """XREAD calls and their Redis µs so far (the StreamWaker's reads)."""
    stats = (await redis.info("commandstats")).get("cmdstat_xread", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


async def traffic(redis: Redis, routes: list[Route], events: int) -> float:
    """Deliveries/s of `events` spread over `routes`, from the first event stored
    (their sources filled now; delivery starts while the rest is stored)."""
    per = max(1, events // len(routes))
    streams = {r.stream for r in routes}
    started = time.perf_counter()
    for stream in streams:
        await fill(redis, stream, per * sum(1 for r in routes if r.stream == stream))
    for _ in range(30_000):  # 300 s at most
        if all([await drained(redis, route) for route in routes]):
            break
        await asyncio.sleep(0.01)
    return per * len(routes) / (time.perf_counter() - started)


async def drained(redis: Redis, route: Route) -> bool:
    """The Trigger read its stream to the end and has nothing pending."""
    last = (await redis.xinfo_stream(route.stream))["last-generated-id"]
    for group in await redis.xinfo_groups(route.stream):
        if group["name"] in (route.group, route.group.encode()):
            return bool(group["last-delivered-id"] == last and group["pending"] == 0)
    return False


async def main(routes_n: int, sources_n: int, seconds: float, events: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-routes-"))
    server = RedisServer(work / "redis")
    server.start()
    port = free_port()
    sub = multiprocessing.get_context("spawn").Process(target=subscriber_main, args=(port,))
    sub.start()
    base = f"http://127.0.0.1:{port}"
    # As `tidings dispatch` connects (tidings.dispatcher.cli).
    redis = connect_redis(server.url)
    world, sealer = World(), Sealer(new_key())
    watcher = TableWatcher(redis)
    # The measurements' own connection: the dispatcher's pool may be saturated.
    probe = Redis.from_url(server.url)
    try:
        print(f"machine: {machine()}; {routes_n} routes over {sources_n} sources")
        sources = [f"s{i}" for i in range(sources_n)]
        for name in sources:
            await add_source(redis, name, world, sealer)
        before = int((await redis.info("memory"))["used_memory"])
        routes = []
        for i in range(routes_n):
            source = sources[i % sources_n]
            route = trigger(f"t{i}", source, f"{base}/hook", world, sealer)
            await table.put_route(redis, route)
            routes.append(route)
        table_bytes = int((await redis.info("memory"))["used_memory"]) - before
        await watcher.start()
        dispatcher = Dispatcher(
            redis, watcher, sealer=sealer, registry=CollectorRegistry(), **LOOPBACK
        )
        started = time.monotonic()
        await dispatcher.start()
        freeze_startup_heap()  # as `tidings dispatcher` does once started
        print(f"dispatcher started in {time.monotonic() - started:.1f}s")
        # Measure idle only once every worker set up its group, looked and published.
        await every_worker_published(dispatcher)
        print(f"every Trigger looked and published its state {time.monotonic() - started:.1f}s in")
        memory = int((await probe.info("memory"))["used_memory"]) - before
        # As shipped first: each worker looked once, found nothing, and rests.
        idle = await idle_cost(probe, seconds, settle=15)
        with previous_idle_rules():
            for worker in dispatcher.workers.values():
                worker.idle_block = 1.0  # where the previous rules started
            dispatcher.wake_all()
            # Long enough for every worker's block to reach 8 s.
            previous = await idle_cost(probe, seconds, settle=16)
        dispatcher.wake_all()  # the traffic phase with the shipped rules
        # Every worker looks once on that wake-up (10,000 fetches) and may publish
        # after it: let them all come to rest first, or the traffic below measures
        # their looks too. Traffic comes to Triggers at rest.
        await all_quiet(dispatcher)
        for what, cost in (("idle, the previous rules", previous), ("idle", idle)):
            print(
                f"{what}: this process {cost['process_pct']:.1f}% of a core, Redis "
                f"{cost['redis_pct']:.1f}%; Redis clients {cost['clients']:.0f}"
            )
        print(
            f"at rest: this process {idle['process_pct'] / previous['process_pct']:.2f}"
            f", Redis {idle['redis_pct'] / previous['redis_pct']:.2f} of the previous rules; RSS "
            f"{idle['rss_mib']:.0f} MiB; Redis memory {table_bytes / routes_n:.0f} B per route "
            f"in the table, {memory / routes_n:.0f} B per route with the Trigger state"
        )
        # Traffic on 1 % more routes, each on a source of its own: only they get it.
        hot_n = max(1, routes_n // 100)
        hot = await add_hot(redis, hot_n, f"{base}/hook", world, sealer)
        await until_workers(dispatcher, hot)
        reads_before = await xread_stats(probe)
        rate = await traffic(redis, hot, events)
        reads_after = await xread_stats(probe)
        print(
            f"traffic on {hot_n} routes beside {routes_n} idle ones: {rate:.0f} deliveries/s; "
            f"XREADs {reads_after[0] - reads_before[0]}, "
            f"{(reads_after[1] - reads_before[1]) / 1000:.0f} ms of Redis"
        )
        await dispatcher.stop(grace=1.0)
        await watcher.stop()
        await redis.flushall()
        # The baseline: the same traffic through the same routes, 100 routes in all.
        hot = await add_hot(redis, hot_n, f"{base}/hook", world, sealer)
        small = [
            trigger(f"b{i}", f"b{i % 10}", f"{base}/hook", world, sealer)
            for i in range(100 - hot_n)
        ]
        for name in {r.source for r in small}:
            await add_source(redis, name, world, sealer)
        for route in small:
            await table.put_route(redis, route)
        watcher = TableWatcher(redis)
        await watcher.start()
        dispatcher = Dispatcher(
            redis, watcher, sealer=sealer, registry=CollectorRegistry(), **LOOPBACK
        )
        await dispatcher.start()
        await until_workers(dispatcher, hot)
        reads_before = await xread_stats(probe)
        baseline = await traffic(redis, hot, events)
        reads_after = await xread_stats(probe)
        print(
            f"baseline: the same traffic with 100 routes in all: {baseline:.0f} deliveries/s "
            f"(XREADs {reads_after[0] - reads_before[0]}, "
            f"{(reads_after[1] - reads_before[1]) / 1000:.0f} ms of Redis); "
            f"with {routes_n}: {rate / baseline:.2f} of it"
        )
        await dispatcher.stop(grace=1.0)
    finally:
        await watcher.stop()
        await redis.aclose()
        await probe.aclose()
        sub.terminate()
        server.stop()


def _args() -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--events", type=int, default=30_000)
    return parser.parse_args()


if __name__ == "__main__":
    args = _args()
    asyncio.run(main(args.routes, args.sources, args.seconds, args.events))
