#!/usr/bin/env python3
"""A backlog: 1,000,000 events stored while 10 Triggers' subscriber is down, Redis
memory per event, and the drain when it comes back (issue 17, item 6).

    .venv/bin/python hack/bench_backlog.py [--events 1000000] [--triggers 10]
        [--data-bytes 200] [--outage 30] [--drain-seconds 60] [--max-events 1000000] [--over 0]

Starts a private redis-server, then in one run:

1. baseline: the events XADDed into a bare stream, no Tidings (the same stored
   fields, pipelined): Redis memory per event, and the raw payload size;
2. backlog: one EventSource (default retention: 168h, 1,000,000 events) with
   `--triggers` Triggers whose subscriber is down (nothing listens on its port;
   every feature on, as hack/bench_dispatch.py, delivery.backoff.maxProbeInterval
   5s), the real Dispatcher running (its retention loop at a 2 s interval), and
   the same events appended through the ingest path
   (tidings.dispatcher.streams.append: dedupe key, event-id index). Redis memory
   per event against (1), and what each Trigger's keys hold, when all are in
   Backoff and again after `--outage` seconds; whether the stream still holds
   every event after a retention pass (maxEvents `--max-events`); with `--over N`,
   N more events past that and what a retention pass then trims;
3. drain: the subscriber comes up on that port; seconds until every Trigger left
   Backoff, then deliveries/s over `--drain-seconds` (all Triggers together), and
   CPU per delivery (this process + Redis);
4. the same run's references: one Trigger alone draining a backlog of the same
   events (its group at the start of the stream), and hack/bench_dispatch.py's
   bare ceiling (XREADGROUP 100 -> POST -> XACK).

Not a pass/fail test; ratios against the same run. Takes ~6 minutes with the
defaults and needs ~2 GB of memory for Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).parent))
from bench_dispatch import (
    LOOPBACK,
    NAMESPACE,
    World,
    add_source,
    bare_ceiling,
    cpu,
    machine,
    subscriber_count,
    subscriber_main,
    trigger,
)

from tidings.api import keys, table
from tidings.api.events import CloudEvent, encode
from tidings.api.process import connect_redis
from tidings.api.routes import CompiledSource, Route, compile_source
from tidings.api.sealing import Sealer, new_key
from tidings.api.text import text
from tidings.cli.redis_server import RedisServer, free_port
from tidings.dispatcher import retention, streams
from tidings.dispatcher.engine import Dispatcher
from tidings.dispatcher.routing import TableWatcher

CHUNK = 1000  # events per append call (streams.append pipelines them by 100)
BACKOFF = {"maxProbeInterval": "5s"}  # so the subscriber's return is seen in seconds


def events(count: int, data_bytes: int, first: int = 0) -> Iterator[list[CloudEvent]]:
    """The same `count` events on every call, in chunks: UUID ids, a small JSON
    object padded to about `data_bytes`."""
    pad = "x" * max(0, data_bytes - 30)
    for start in range(first, first + count, CHUNK):
        yield [
            CloudEvent(
                id=str(uuid.UUID(int=(i * 0x9E3779B97F4A7C15 + 1) % 2**128, version=4)),
                source="/bench/orders",
                type="com.example.order.created",
                data={"n": i, "plan": "pro", "note": pad},
            )
            for i in range(start, min(first + count, start + CHUNK))
        ]


async def used_memory(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def key_bytes(redis: Redis, key: str) -> int:
    """MEMORY USAGE of `key`, every element counted (SAMPLES 0)."""
    return int(await redis.memory_usage(key, samples=0) or 0)


async def bare_baseline(redis: Redis, count: int, data_bytes: int) -> dict[str, float]:
    """(1): the events XADDed into a bare stream; bytes per event; the stream is dropped."""
    stream = "bare:events"
    before = await used_memory(redis)
    payload = 0
    now_ms = int(time.time() * 1000)
    started = time.perf_counter()
    for chunk in events(count, data_bytes):
        async with redis.pipeline(transaction=False) as pipe:
            for event in chunk:
                fields = encode(event, now_ms)
                payload += len(fields[keys.FIELD_EVENT])
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            await pipe.execute()
    seconds = time.perf_counter() - started
    result = {
        "used": (await used_memory(redis) - before) / count,
        "stream": await key_bytes(redis, stream) / count,
        "payload": payload / count,
        "rate": count / seconds,
    }
    await redis.delete(stream)
    return result


async def ingest(
    redis: Redis,
    source: CompiledSource,
    count: int,
    data_bytes: int,
    concurrency: int = 4,
    first: int = 0,
) -> float:
    """(2): append through the ingest path, `concurrency` callers at once; events/s."""
    chunks = events(count, data_bytes, first)
    lock = asyncio.Lock()

    async def appender() -> None:
        while True:
            async with lock:
                chunk = next(chunks, None)
            if chunk is None:
                return
            await streams.append(redis, source, chunk)

    started = time.perf_counter()
    await asyncio.gather(*(appender() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def group_info(redis: Redis, route: Route) -> dict[str, Any]:
    for group in await redis.xinfo_groups(route.stream):
        name = group["name"]
        if text(name) == route.group:
            return {text(k): v for k, v in group.items()}
    return {}


async def trigger_keys(redis: Redis, routes: list[Route]) -> dict[str, dict[str, int]]:
    """Per kind of per-Trigger key (retry, held, log, dlq...): entries and bytes, summed
    over `routes`; plus each group's PEL."""
    out: dict[str, dict[str, int]] = {}

    def add(kind: str, entries: int, size: int) -> None:
        row = out.setdefault(kind, {"entries": 0, "bytes": 0, "max": 0})
        row["entries"] += entries
        row["bytes"] += size
        row["max"] = max(row["max"], entries)

    for route in routes:
        for key in keys.trigger_keys(route.namespace, route.source, route.name):
            kind = key.rsplit(":", 1)[1]
            kind_type = text(await redis.type(key))
            if kind_type == "none":
                continue
            entries = {
                "stream": redis.xlen,
                "zset": redis.zcard,
                "hash": redis.hlen,
                "set": redis.scard,
            }.get(kind_type)
            count = int(await entries(key)) if entries is not None else 1
            add(kind, count, await key_bytes(redis, key))
        info = await group_info(redis, route)
        add("PEL (pending)", int(info.get("pending", 0)), 0)
    return out


async def states(redis: Redis, routes: list[Route]) -> list[dict[str, str]]:
    out = []
    for route in routes:
        raw = await redis.hgetall(keys.trigger_state(route.namespace, route.source, route.name))
        out.append({text(k): text(v) for k, v in raw.items()})
    return out


async def outcomes(redis: Redis, routes: list[Route]) -> dict[str, int]:
    """The attempt logs' outcomes (with the first words of each error), all Triggers."""
    out: dict[str, int] = {}
    for route in routes:
        log = keys.attempt_log(route.namespace, route.source, route.name)
        entries: list[Any] = await redis.xrange(log) or []
        for _, fields in entries:
            values = {text(k): text(v) for k, v in (fields or {}).items()}
            what = values.get(keys.ATTEMPT_OUTCOME, "?")
            error = values.get(keys.ATTEMPT_ERROR, "")
            if error:
                what += f" ({' '.join(error.split()[:3])})"
            out[what] = out.get(what, 0) + 1
    return out


def show_keys(title: str, found: dict[str, dict[str, int]], triggers: int) -> None:
    print(f"  per-Trigger keys, {title} (sum over {triggers} Triggers; largest one):")
    for kind, row in sorted(found.items()):
        print(
            f"    {kind:16} {row['entries']:9,d} entries, {row['bytes']:11,d} B "
            f"(largest {row['max']:,d})"
        )


async def until(predicate: Any, limit: float, what: str) -> float:
    started = time.perf_counter()
    while not await predicate():
        if time.perf_counter() - started > limit:
            raise TimeoutError(f"{what}: not within {limit:.0f}s")
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


async def listening(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        await subscriber_count(session, base)
    except aiohttp.ClientError:
        return False
    return True


class Counter:
    """The subscriber's 200s, read every second (its /stats count resets on each read)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base
        self.total = 0
        self.samples: list[tuple[float, int]] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.started = time.perf_counter()
        self.task = asyncio.create_task(self._run())

    async def read(self) -> int:
        self.total += int((await subscriber_count(self.session, self.base))["count"])
        self.samples.append((time.perf_counter() - self.started, self.total))
        return self.total

    async def _run(self) -> None:
        while True:
            await self.read()
            await asyncio.sleep(1.0)

    async def has(self, count: int) -> bool:
        return self.total >= count

    def timeline(self, step: float = 5.0) -> str:
        out, mark, last = [], step, 0
        for at, total in self.samples:
            if at >= mark:
                out.append(f"{(total - last) / step:,.0f}")
                last, mark = total, mark + step
        return " ".join(out)

    async def rate(self, redis: Redis, seconds: float) -> dict[str, float]:
        """Deliveries/s over the next `seconds`, and CPU per delivery (this process +
        Redis)."""
        before, done, started = await cpu(redis), self.total, time.perf_counter()
        await asyncio.sleep(seconds)
        count = await self.read() - done
        elapsed = time.perf_counter() - started
        used = await cpu(redis) - before
        return {"rate": count / elapsed, "cpu_us": used / max(1, count) * 1e6, "count": count}


async def main(
    count: int,
    triggers: int,
    data_bytes: int,
    outage: float,
    drain_seconds: float,
    max_events: int,
    over: int,
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-backlog-"))
    server = RedisServer(work / "redis")
    server.start()
    port = free_port()  # the subscriber's; nothing listens until (3)
    base = f"http://127.0.0.1:{port}"
    redis = connect_redis(server.url)  # as `tidings dispatch` connects
    world, sealer = World(), Sealer(new_key())
    world.spec = world.spec.model_copy(
        update={"retention": world.spec.retention.model_copy(update={"max_events": max_events})}
    )
    watcher = TableWatcher(redis)
    session = aiohttp.ClientSession()
    sub: multiprocessing.process.BaseProcess | None = None
    counter: Counter | None = None
    results: dict[str, Any] = {}
    try:
        print(f"machine      {machine()}, load average {os.getloadavg()[0]:.1f}")
        version = (await redis.info("server"))["redis_version"]
        print(f"redis        {version}, {count:,d} events, {triggers} Triggers")
        # 1. the bare stream
        bare = await bare_baseline(redis, count, data_bytes)
        results["bare"] = bare
        print(
            f"bare stream  {bare['stream']:.0f} B/event (MEMORY USAGE), used_memory "
            f"{bare['used']:.0f} B/event; stored CloudEvent JSON {bare['payload']:.0f} B/event; "
            f"XADD {bare['rate']:,.0f}/s"
        )

        # 2. the backlog
        stream = await add_source(redis, "orders", world, sealer)
        source = compile_source(
            namespace=NAMESPACE, name="orders", spec=world.spec, world=world, sealer=sealer
        )
        routes = [
            trigger(f"lagging-{i}", "orders", f"{base}/hook", world, sealer, backoff=BACKOFF)
            for i in range(triggers)
        ]
        for route in routes:
            await redis.xgroup_create(route.stream, route.group, id="0", mkstream=True)
            await table.put_route(redis, route)
        await watcher.start()
        dispatcher = Dispatcher(
            redis,
            watcher,
            sealer=sealer,
            registry=CollectorRegistry(),
            retention_interval=2.0,
            **LOOPBACK,
        )
        await dispatcher.start()
        before = await used_memory(redis)
        rate = await ingest(redis, source, count, data_bytes)
        print(f"ingest       {rate:,.0f} events/s through streams.append (4 callers)")

        async def all_in_backoff() -> bool:
            return all(s.get(keys.STATE_STATE) == keys.BACKOFF for s in await states(redis, routes))

        await until(all_in_backoff, 120, "every Trigger in Backoff")
        index = keys.event_index(NAMESPACE, "orders")
        keyspace = (await redis.info("keyspace")).get("db0", {})
        dedupe_keys = int(keyspace.get("expires", 0))
        sample = []
        async for key in redis.scan_iter(match=keys.dedupe(NAMESPACE, "orders", "*"), count=1000):
            sample.append(key)
            if len(sample) >= 1000:
                break
        dedupe_each = sum([await key_bytes(redis, k) for k in sample[:1000]]) / max(
            1, min(1000, len(sample))
        )
        found = await trigger_keys(redis, routes)
        memory = {
            "used": (await used_memory(redis) - before) / count,
            "stream": await key_bytes(redis, stream) / count,
            "index": await key_bytes(redis, index) / count,
            "dedupe": dedupe_each * dedupe_keys / count,
            "triggers": sum(row["bytes"] for row in found.values()) / count,
        }
        results["memory"] = memory
        results["keys_in_backoff"] = found
        print(
            f"tidings      used_memory {memory['used']:.0f} B/event = "
            f"{memory['used'] / bare['used']:.2f} x the bare stream; of it: stream with "
            f"{triggers} groups {memory['stream']:.0f} B ({memory['stream'] / bare['stream']:.3f}"
            f" x bare), event-id index {memory['index']:.0f} B, dedupe keys "
            f"{memory['dedupe']:.0f} B ({dedupe_keys:,d} keys, until the 5m dedupe window "
            f"ends), per-Trigger keys {memory['triggers']:.1f} B"
        )
        show_keys("all in Backoff", found, triggers)
        await asyncio.sleep(outage)
        later = await trigger_keys(redis, routes)
        results["keys_after_outage"] = later
        show_keys(f"{outage:.0f}s later, still down", later, triggers)
        kept = await retention.trim(redis, source, watcher.current.routes_of(NAMESPACE, "orders"))
        trimmed, expired = kept.trimmed, kept.lost
        length = int(await redis.xlen(stream))
        seen = await states(redis, routes)
        lags = [int(s.get(keys.STATE_LAG, "0")) for s in seen]
        true_lags = [int((await group_info(redis, r)).get("lag") or -1) for r in routes]
        expired_total = sum(int(s.get(keys.STATE_EXPIRED, "0")) for s in seen)
        results["retention"] = {"length": length, "trimmed": trimmed, "expired": expired_total}
        print(
            f"retention    stream holds {length:,d} of {count:,d} events after {outage:.0f}s of "
            f"retention runs (every 2s; one more now trimmed {trimmed}, expired {expired}); "
            f"expired counted {expired_total}; lag in the Triggers' state "
            f"{min(lags):,d}-{max(lags):,d} (XINFO lag {min(true_lags):,d}-{max(true_lags):,d})"
        )

        if over:
            # Past maxEvents while the Triggers still lag: what a retention pass trims.
            await ingest(redis, source, over, data_bytes, first=count)
            routes_now = watcher.current.routes_of(NAMESPACE, "orders")
            kept = await retention.trim(redis, source, routes_now)
            length = int(await redis.xlen(stream))
            results["over"] = {"trimmed": kept.trimmed, "lost": kept.lost, "length": length}
            print(
                f"over         {over:,d} more events (maxEvents {max_events:,d}): a retention "
                f"pass trimmed {kept.trimmed:,d}, expired per Trigger "
                f"{sorted(set(kept.lost.values())) or [0]}; the stream holds {length:,d}"
            )

        # 3. the subscriber comes back
        sub = multiprocessing.get_context("spawn").Process(target=subscriber_main, args=(port,))
        sub.start()
        await until(lambda: listening(session, base), 120, "the subscriber listening")
        counter = Counter(session, base)
        counter.start()

        async def none_in_backoff() -> bool:
            return all(s.get(keys.STATE_STATE) != keys.BACKOFF for s in await states(redis, routes))

        first = await until(lambda: counter.has(1), 120, "a first delivery")
        recovered = await until(none_in_backoff, 120, "every Trigger out of Backoff") + first
        print(
            f"recovery     first delivery {first:.1f}s after the subscriber listened, every "
            f"Trigger out of Backoff after {recovered:.1f}s (probes at most 5s apart)"
        )
        await asyncio.sleep(2)  # slow start: the in-flight cap doubles per settled batch
        drain = await counter.rate(redis, drain_seconds)
        results["drain"] = {**drain, "first_s": first, "recovered_s": recovered}
        print(f"  deliveries/s per 5s since it listened: {counter.timeline()}")
        print(
            f"drain        {drain['rate']:,.0f} deliveries/s, {triggers} Triggers together over "
            f"{drain_seconds:.0f}s; CPU {drain['cpu_us']:.0f} µs per delivery (this process + "
            f"Redis); the whole backlog ({count * triggers:,d}) would take "
            f"{count * triggers / drain['rate'] / 60:.0f} min"
        )
        print(f"  attempt logs' outcomes: {await outcomes(redis, routes)}")
        drained_keys = await trigger_keys(redis, routes)
        results["keys_draining"] = drained_keys
        show_keys("draining", drained_keys, triggers)
        for route in routes:
            await table.delete_route(redis, route.namespace, route.name)
        await asyncio.sleep(3)  # their workers drain and stop

        # 4. references: one Trigger alone on the same backlog; the bare ceiling
        solo = trigger("solo", "orders", f"{base}/hook", world, sealer)
        await redis.xgroup_create(solo.stream, solo.group, id="0")
        await table.put_route(redis, solo)
        await asyncio.sleep(2)
        alone = await counter.rate(redis, drain_seconds)
        results["solo"] = alone
        await table.delete_route(redis, solo.namespace, solo.name)
        await asyncio.sleep(2)
        ceiling = await bare_ceiling(redis, f"{base}/hook", 20_000)
        results["ceiling"] = ceiling
        print(
            f"one Trigger  {alone['rate']:,.0f} deliveries/s draining the same backlog alone; "
            f"CPU {alone['cpu_us']:.0f} µs per delivery"
        )
        print(f"ceiling      {ceiling:,.0f} deliveries/s (bench_dispatch's bare loop)")
        print(
            f"ratios       {triggers} Triggers' drain = {drain['rate'] / alone['rate']:.2f} x one "
            f"Trigger's, {drain['rate'] / ceiling:.2f} x the ceiling; load average now "
            f"{os.getloadavg()[0]:.1f}"
        )
        await dispatcher.stop(grace=1.0)
    finally:
        if counter is not None and counter.task is not None:
            counter.task.cancel()
        await watcher.stop()
        await session.close()
        await redis.aclose()
        if sub is not None:
            sub.terminate()
            sub.join()
        server.stop()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--triggers", type=int, default=10)
    parser.add_argument("--data-bytes", type=int, default=200, help="size of each event's data")
    parser.add_argument("--max-events", type=int, default=1_000_000, help="retention.maxEvents")
    parser.add_argument(
        "--over", type=int, default=0, help="events appended past the backlog before the drain"
    )
    parser.add_argument(
        "--outage", type=float, default=30, help="seconds the subscriber stays down"
    )
    parser.add_argument("--drain-seconds", type=float, default=60)
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    options = parser.parse_args()
    outcome = asyncio.run(
        main(
            options.events,
            options.triggers,
            options.data_bytes,
            options.outage,
            options.drain_seconds,
            options.max_events,
            options.over,
        )
    )
    if options.json:
        print(json.dumps(outcome, indent=2))
