#!/usr/bin/env python3
"""Dispatcher throughput against its own bare ceiling, in one run on this machine.

    .venv/bin/python hack/bench_dispatch.py [--events 20000] [--loop asyncio|uvloop|both]
        [--only attempt-log|throughput|gc] [--gc-defaults]

`--loop both` (the default) runs everything on asyncio's event loop, then on
uvloop's (what the dispatcher process runs on), one after the other. The
collector is set as the dispatcher process sets it (freeze_startup_heap)
unless `--gc-defaults`.

Starts a private redis-server and a subscriber (a separate aiohttp process
answering 200, with a /slow path that never answers in time), then measures:

1. ceiling: XREADGROUP(100) -> 100 concurrent aiohttp POSTs -> one XACK of 100,
   no features: the loop DESIGN.md measured; then the same loop with the
   dispatcher's own HTTP client (tidings.dispatcher.http_post, where the tree
   has it), the bare ceiling of what the dispatcher runs;
2. dispatcher: the real Dispatcher with every feature on (type + CEL filter,
   Standard Webhooks signing, Prometheus metrics, the fetch/settle scripts
   with retry bookkeeping, leases and a rate limit far above the rate), and
   the ratio to (1) (target >= 0.75);
3. p99 latency from XADD to the subscriber at half the rate measured in (2);
4. fan-out: one event to 10 Triggers (deliveries/s);
5. isolation: a Trigger's throughput while another Trigger on the same source
   has a subscriber that times out, against its throughput alone (target: costs <= 10%);
6. the attempt log: the dispatcher as in (2), against itself with no attempt
   records built or written (the baseline), rounds interleaved (target: costs <= 5%).
   `--only attempt-log` runs this part alone.
7. `--only gc`: the collector's pauses while the dispatcher delivers, with Python's
   defaults and after freeze_startup_heap (what the dispatcher process does).

Everything runs in this process except Redis and the subscriber, so the
dispatcher and the ceiling get the same CPU. Takes about a minute and a half.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from tidings.api import keys, table
from tidings.api.events import CloudEvent, encode
from tidings.api.process import freeze_startup_heap
from tidings.api.routes import Route, compile_source, compile_trigger
from tidings.api.sealing import Sealer, new_key
from tidings.api.types import EventSourceSpec, TriggerGrantSpec, TriggerSpec
from tidings.cli.redis_server import RedisServer, free_port
from tidings.dispatcher import engine
from tidings.dispatcher.engine import Dispatcher
from tidings.dispatcher.routing import TableWatcher

try:  # hack/bench_tracing.py also imports this file over trees older than the policy
    from tidings.api.destinations import LOCAL

    LOOPBACK: dict[str, Any] = {"destinations": LOCAL}
except ImportError:
    LOOPBACK = {}
try:  # the dispatcher's own HTTP client, for a second ceiling (trees before it: none)
    from tidings.dispatcher.guard import Guard
    from tidings.dispatcher.http_post import Client as HTTPPost
except ImportError:
    HTTPPost = None  # type: ignore[assignment,misc]

NAMESPACE = "bench"
DEFAULT_GC_THRESHOLD = gc.get_threshold()
SECRET = "whsec_" + base64.b64encode(b"b" * 32).decode()


# --- the subscriber (its own process) --------------------------------------------------


def subscriber_main(port: int) -> None:
    latencies: list[float] = []
    counts = {"n": 0}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        counts["n"] += 1
        sent = request.headers.get("x-sent")
        if sent is None and body[:1] == b"{":
            sent_value = json.loads(body).get("sent")
            if sent_value:
                latencies.append(time.time() - float(sent_value))
        return web.Response(status=200)

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(30)
        return web.Response(status=200)

    async def stats(request: web.Request) -> web.Response:
        out = {"count": counts["n"], "latencies": latencies[:]}
        latencies.clear()
        counts["n"] = 0
        return web.json_response(out)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/slow", slow)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --- helpers -----------------------------------------------------------------------------


class World:
    def __init__(self) -> None:
        self.spec = EventSourceSpec.model_validate({"http": {"auth": {"allowAnonymous": True}}})

    def source(self, namespace: str, name: str) -> EventSourceSpec | None:
        return self.spec

    def service_ports(self, namespace: str, name: str) -> list[int] | None:
        return [80]

    def secret(self, namespace: str, name: str, key: str) -> str | None:
        return SECRET

    def grants(self, namespace: str) -> list[TriggerGrantSpec]:
        return []  # one namespace: no cross-namespace Triggers


async def fill(redis: Redis, stream: str, count: int, *, data: Any = None) -> None:
    for start in range(0, count, 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(count, start + 1000)):
                event = CloudEvent(
                    id=f"{stream}-{i}",
                    source="/bench",
                    type="com.example.order.created",
                    data=data if data is not None else {"n": i, "plan": "pro"},
                )
                pipe.xadd(stream, encode(event))  # type: ignore[arg-type]
            await pipe.execute()


async def subscriber_count(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(f"{base}/stats") as response:
        result: dict[str, Any] = await response.json()
        return result


async def bare_ceiling(redis: Redis, url: str, count: int, *, lean: bool = False) -> float:
    """XREADGROUP(100) -> POST each -> one XACK: events/s. The POSTs go through
    aiohttp's ClientSession, or with `lean` through the dispatcher's own client
    (tidings.dispatcher.http_post, where the tree has it)."""
    stream = keys.stream(NAMESPACE, "ceiling")
    await fill(redis, stream, count)
    await redis.xgroup_create(stream, "bare", id="0")
    json_type = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        client = HTTPPost(Guard(LOCAL)) if lean and HTTPPost is not None else None

        async def post(fields: dict[bytes, bytes]) -> None:
            if client is not None:
                await client.post(url, json_type, fields[b"e"], 10)
                return
            async with session.post(url, data=fields[b"e"], headers=json_type) as response:
                await response.read()

        started = time.perf_counter()
        done = 0
        while done < count:
            reply: Any = await redis.xreadgroup("bare", "c", {stream: ">"}, count=100)
            entries = reply[0][1]
            await asyncio.gather(*(post(fields) for _, fields in entries))
            await redis.xack(stream, "bare", *(entry_id for entry_id, _ in entries))
            done += len(entries)
        rate = count / (time.perf_counter() - started)
        if client is not None:
            await client.close()
        return rate


def trigger(
    name: str, source: str, url: str, world: World, sealer: Sealer, **delivery: Any
) -> Route:
    spec = TriggerSpec.model_validate(
        {
            "source": source,
            "subscriber": {"uri": url},
            "filter": {
                "types": ["com.example.order.created"],
                "expression": 'event.data.plan == "pro"',
            },
            "delivery": {
                "signing": {"secretRef": {"name": "hook", "key": "secret"}},
                "rateLimit": {"perSecond": 1_000_000},
                **delivery,
            },
        }
    )
    return compile_trigger(
        namespace=NAMESPACE, name=name, spec=spec, world=world, sealer=sealer, **LOOPBACK
    )


async def add_source(redis: Redis, name: str, world: World, sealer: Sealer) -> str:
    source = compile_source(
        namespace=NAMESPACE, name=name, spec=world.spec, world=world, sealer=sealer
    )
    await table.put_source(redis, source)
    return source.stream


async def delivered(redis: Redis, route: Route) -> int:
    """Events this Trigger's group has read and acknowledged."""
    for group in await redis.xinfo_groups(route.stream):
        if group["name"] in (route.group, route.group.encode()):
            return int(group["entries-read"] or 0) - int(group["pending"])
    return 0


async def run_until(redis: Redis, routes: list[Route], total: int, limit: float = 60) -> float:
    """Seconds until the routes together delivered `total` events."""
    started = time.perf_counter()
    while True:
        done = sum([await delivered(redis, r) for r in routes])
        if done >= total or time.perf_counter() - started > limit:
            return time.perf_counter() - started
        await asyncio.sleep(0.01)


async def throughput(
    redis: Redis, base: str, world: World, sealer: Sealer, events: int, rounds: int = 2
) -> dict[str, Any]:
    """(1) and (2), interleaved `rounds` times (the machine is shared, its load drifts):
    best rate of each, least CPU per delivery of each."""
    watcher = TableWatcher(redis)
    await watcher.start()
    dispatcher = Dispatcher(
        redis,
        watcher,
        sealer=sealer,
        registry=CollectorRegistry(),
        consumer="bench-cpu",
        **LOOPBACK,
    )
    await dispatcher.start()
    ceilings: list[float] = []
    rates: list[float] = []
    cpu_bare: list[float] = []
    lean_ceilings: list[float] = []
    cpu_lean: list[float] = []
    cpu_full: list[float] = []
    redis_full: list[float] = []
    try:
        for round_ in range(rounds):
            await redis.delete(keys.stream(NAMESPACE, "ceiling"))
            before = await cpu(redis)
            ceilings.append(await bare_ceiling(redis, f"{base}/hook", events))
            cpu_bare.append((await cpu(redis) - before) / events)
            lean = ""
            if HTTPPost is not None:
                await redis.delete(keys.stream(NAMESPACE, "ceiling"))
                before = await cpu(redis)
                lean_ceilings.append(await bare_ceiling(redis, f"{base}/hook", events, lean=True))
                cpu_lean.append((await cpu(redis) - before) / events)
            name = f"full{round_}"
            stream = await add_source(redis, name, world, sealer)
            await fill(redis, stream, events)
            route = trigger(name, name, f"{base}/hook", world, sealer)
            await redis.xgroup_create(route.stream, route.group, id="0")
            before, redis_before = await cpu(redis), await redis_cpu(redis)
            await table.put_route(redis, route)
            rates.append(events / await run_until(redis, [route], events))
            cpu_full.append((await cpu(redis) - before) / events)
            redis_full.append((await redis_cpu(redis) - redis_before) / events)
            await table.delete_route(redis, route.namespace, route.name)
            await redis.delete(stream)
            if cpu_lean:
                lean = (
                    f"; ceiling with http_post {lean_ceilings[-1]:6.0f}/s, "
                    f"{cpu_lean[-1] * 1e6:.0f} µs: {cpu_lean[-1] / cpu_full[-1]:.2f}"
                )
            print(
                f"round {round_ + 1}      ceiling {ceilings[-1]:6.0f}/s, dispatcher "
                f"{rates[-1]:6.0f}/s: {rates[-1] / ceilings[-1]:.2f}; CPU per delivery "
                f"(this process + Redis) {cpu_bare[-1] * 1e6:.0f} vs {cpu_full[-1] * 1e6:.0f} µs "
                f"(Redis {redis_full[-1] * 1e6:.0f}): {cpu_bare[-1] / cpu_full[-1]:.2f}{lean}"
            )
    finally:
        await dispatcher.stop(grace=0.5)
        await watcher.stop()
    ceiling, rate = max(ceilings), max(rates)
    print(f"ceiling      {ceiling:8.0f} deliveries/s (XREADGROUP 100 -> POST -> XACK), best")
    print(
        f"dispatcher   {rate:8.0f} deliveries/s with filter+CEL, signing, metrics, "
        f"retry bookkeeping, limits, best: {rate / ceiling:.2f} of the ceiling"
    )
    print(
        f"CPU          {min(cpu_bare) * 1e6:.0f} µs vs {min(cpu_full) * 1e6:.0f} µs per "
        f"delivery (this process + Redis), best: the dispatcher does "
        f"{min(cpu_bare) / min(cpu_full):.2f} of the ceiling's work per CPU second"
    )
    if cpu_lean:
        print(
            f"CPU          ceiling with http_post {min(cpu_lean) * 1e6:.0f} µs, best: the "
            f"dispatcher does {min(cpu_lean) / min(cpu_full):.2f} of its work per CPU second"
        )
    return {
        "cpu_us_per_delivery": {
            "ceiling": min(cpu_bare) * 1e6,
            "ceiling_http_post": min(cpu_lean) * 1e6 if cpu_lean else None,
            "dispatcher": min(cpu_full) * 1e6,
            "redis": min(redis_full) * 1e6,
            "ratio": min(cpu_bare) / min(cpu_full),
        },
        "ceiling": ceiling,
        "dispatcher": rate,
        "ratio": rate / ceiling,
    }


class GCPauses:
    """The collector's pauses while inside (gc.callbacks), per generation."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)

    def __enter__(self) -> GCPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self) -> str:
        return ", ".join(
            f"gen{g} {len(p)}x max {max(p, default=0) * 1000:.1f} ms total {sum(p) * 1000:.0f} ms"
            for g, p in self.pauses.items()
        )


async def gc_pauses(
    redis: Redis, base: str, world: World, sealer: Sealer, events: int
) -> dict[str, Any]:
    """(7): the collector's pauses while the dispatcher delivers `events`, with Python's
    defaults, then after tidings.api.process.freeze_startup_heap (what the dispatcher
    process does once started)."""
    watcher = TableWatcher(redis)
    await watcher.start()
    dispatcher = Dispatcher(
        redis,
        watcher,
        sealer=sealer,
        registry=CollectorRegistry(),
        consumer="bench-gc",
        **LOOPBACK,
    )
    await dispatcher.start()
    out: dict[str, Any] = {}
    try:
        for mode in ("defaults", "frozen"):
            if mode == "frozen":
                freeze_startup_heap()
            name = f"gc-{mode}"
            stream = await add_source(redis, name, world, sealer)
            await fill(redis, stream, events)
            route = trigger(name, name, f"{base}/hook", world, sealer)
            await redis.xgroup_create(route.stream, route.group, id="0")
            with GCPauses() as pauses:
                await table.put_route(redis, route)
                await run_until(redis, [route], events)
            await table.delete_route(redis, route.namespace, route.name)
            await redis.delete(stream)
            print(f"gc {mode:9} {len(gc.get_objects()):7d} objects tracked; {pauses.summary()}")
            out[mode] = {g: p for g, p in pauses.pauses.items()}
    finally:
        gc.unfreeze()
        gc.set_threshold(*DEFAULT_GC_THRESHOLD)
        await dispatcher.stop(grace=0.5)
        await watcher.stop()
    return out


async def attempt_log_cost(
    redis: Redis, base: str, world: World, sealer: Sealer, events: int, rounds: int = 3
) -> dict[str, Any]:
    """(6): throughput and CPU per delivery with and without the attempt log's write,
    interleaved `rounds` times; best of each."""
    watcher = TableWatcher(redis)
    await watcher.start()
    dispatcher = Dispatcher(
        redis,
        watcher,
        sealer=sealer,
        registry=CollectorRegistry(),
        consumer="bench-log",
        **LOOPBACK,
    )
    await dispatcher.start()
    # The baseline neither builds the records nor writes them.
    real_record = engine.attempt_record

    def no_record(done: Any, replica: str) -> None:
        return None

    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpus: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for round_ in range(rounds):
            for mode in ("off", "on"):
                engine.attempt_record = real_record if mode == "on" else no_record  # type: ignore[assignment]
                name = f"log-{mode}{round_}"
                stream = await add_source(redis, name, world, sealer)
                await fill(redis, stream, events)
                route = trigger(name, name, f"{base}/hook", world, sealer)
                await redis.xgroup_create(route.stream, route.group, id="0")
                before = await cpu(redis)
                await table.put_route(redis, route)
                rates[mode].append(events / await run_until(redis, [route], events))
                cpus[mode].append((await cpu(redis) - before) / events)
                await table.delete_route(redis, route.namespace, route.name)
                await redis.delete(stream)
            print(
                f"round {round_ + 1}      attempt log off {rates['off'][-1]:6.0f}/s, "
                f"on {rates['on'][-1]:6.0f}/s: {rates['on'][-1] / rates['off'][-1]:.3f}"
            )
    finally:
        engine.attempt_record = real_record  # type: ignore[assignment]
        await dispatcher.stop(grace=0.5)
        await watcher.stop()
    off, on = max(rates["off"]), max(rates["on"])
    cpu_off, cpu_on = min(cpus["off"]), min(cpus["on"])
    print(
        f"attempt log  {off:8.0f}/s without, {on:.0f}/s with (best of {rounds}): "
        f"{on / off:.3f} of the throughput, costs {(1 - on / off) * 100:.1f}%; CPU per delivery "
        f"(this process + Redis) {cpu_off * 1e6:.0f} vs {cpu_on * 1e6:.0f} µs "
        f"(+{(cpu_on / cpu_off - 1) * 100:.1f}%)"
    )
    return {
        "off": rates["off"],
        "on": rates["on"],
        "ratio": on / off,
        "cpu_us": {"off": cpu_off * 1e6, "on": cpu_on * 1e6},
    }


async def main(events: int, only: str | None = None, gc_defaults: bool = False) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    server = RedisServer(work / "redis")
    server.start()
    port = free_port()
    sub = multiprocessing.get_context("spawn").Process(target=subscriber_main, args=(port,))
    sub.start()
    base = f"http://127.0.0.1:{port}"
    redis = Redis.from_url(server.url)
    results: dict[str, Any] = {}
    session = aiohttp.ClientSession()
    try:
        for _ in range(100):
            try:
                await subscriber_count(session, base)
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        # warm up the subscriber and the client pools
        await bare_ceiling(redis, f"{base}/hook", 2000)
        await redis.delete(keys.stream(NAMESPACE, "ceiling"))

        sealer = Sealer(new_key())
        if not gc_defaults and only != "gc":
            # As the dispatcher process does once started (the ceiling gets it too).
            freeze_startup_heap()
        world = World()
        if only == "attempt-log":
            results["attempt_log"] = await attempt_log_cost(redis, base, world, sealer, events)
            return results
        if only == "gc":
            results["gc"] = await gc_pauses(redis, base, world, sealer, events)
            return results
        if only == "throughput":
            results.update(await throughput(redis, base, world, sealer, events))
            return results
        watcher = TableWatcher(redis)
        await watcher.start()
        dispatcher = Dispatcher(
            redis,
            watcher,
            sealer=sealer,
            registry=CollectorRegistry(),
            consumer="bench",
            **LOOPBACK,
        )
        await dispatcher.start()
        results.update(await throughput(redis, base, world, sealer, events))
        rate = results["dispatcher"]
        await subscriber_count(session, base)

        # 3. latency at half the measured rate
        half = rate / 2
        stream = await add_source(redis, "latency", world, sealer)
        lat_route = trigger("latency", "latency", f"{base}/hook", world, sealer, format="data")
        await table.put_route(redis, lat_route)
        for _ in range(1000):
            if await _has_group(redis, lat_route):
                break
            await asyncio.sleep(0.01)
        duration = 6.0
        sent = 0
        started = time.perf_counter()
        while time.perf_counter() - started < duration:
            due = int((time.perf_counter() - started) * half)
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(sent, due):
                    event = CloudEvent(
                        id=f"lat-{i}",
                        source="/bench",
                        type="com.example.order.created",
                        data={"plan": "pro", "sent": time.time()},
                    )
                    pipe.xadd(stream, encode(event))  # type: ignore[arg-type]
                await pipe.execute()
            sent = max(sent, due)
            await asyncio.sleep(0.002)
        await run_until(redis, [lat_route], sent, limit=20)
        stats = await subscriber_count(session, base)
        latencies = sorted(stats["latencies"])
        p50 = statistics.median(latencies) * 1000
        p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
        results["latency"] = {"rate": half, "p50_ms": p50, "p99_ms": p99, "n": len(latencies)}
        print(
            f"latency      p50 {p50:.1f} ms, p99 {p99:.1f} ms XADD -> subscriber "
            f"at {half:.0f} events/s ({len(latencies)} events)"
        )

        # 4. fan-out: 1 event -> 10 Triggers
        fan_events = max(1000, events // 10)
        stream = await add_source(redis, "fanout", world, sealer)
        await fill(redis, stream, fan_events)
        fan_routes = [
            trigger(f"fan-{i}", "fanout", f"{base}/hook", world, sealer) for i in range(10)
        ]
        for r in fan_routes:
            await redis.xgroup_create(r.stream, r.group, id="0")
            await table.put_route(redis, r)
        seconds = await run_until(redis, fan_routes, fan_events * 10)
        fan_rate = fan_events * 10 / seconds
        results["fanout"] = fan_rate
        print(
            f"fan-out      {fan_rate:8.0f} deliveries/s, 1 event -> 10 Triggers "
            f"({fan_events / seconds:.0f} events/s in)"
        )
        for r in fan_routes:
            await table.delete_route(redis, r.namespace, r.name)

        # 5. isolation: alone, then beside a Trigger whose subscriber times out;
        # interleaved twice, best of each, as the machine's load drifts.
        iso = max(5000, events // 2)
        alone_rates: list[float] = []
        beside_rates: list[float] = []
        for round_ in range(2):
            stream = await add_source(redis, f"alone{round_}", world, sealer)
            await fill(redis, stream, iso)
            alone = trigger(f"alone{round_}", f"alone{round_}", f"{base}/hook", world, sealer)
            await redis.xgroup_create(alone.stream, alone.group, id="0")
            await table.put_route(redis, alone)
            alone_rates.append(iso / await run_until(redis, [alone], iso))

            shared = f"shared{round_}"
            stream = await add_source(redis, shared, world, sealer)
            await fill(redis, stream, iso)
            healthy = trigger(f"healthy{round_}", shared, f"{base}/hook", world, sealer)
            stuck = trigger(f"stuck{round_}", shared, f"{base}/slow", world, sealer, timeout="1s")
            for r in (stuck, healthy):
                await redis.xgroup_create(r.stream, r.group, id="0")
                await table.put_route(redis, r)
            beside_rates.append(iso / await run_until(redis, [healthy], iso))
            for r in (alone, healthy, stuck):
                await table.delete_route(redis, r.namespace, r.name)
        alone_rate, beside_rate = max(alone_rates), max(beside_rates)
        cost = 1 - beside_rate / alone_rate
        results["isolation"] = {
            "alone": alone_rates,
            "beside_stuck": beside_rates,
            "cost": cost,
        }
        print(
            f"isolation    {alone_rate:8.0f}/s alone, {beside_rate:.0f}/s beside a timing-out "
            f"Trigger (best of 2 each): costs {cost * 100:.1f}%"
        )
        await dispatcher.stop(grace=0.5)
        await watcher.stop()

        results["attempt_log"] = await attempt_log_cost(redis, base, world, sealer, events)
    finally:
        await session.close()
        await redis.aclose()
        sub.terminate()
        sub.join()
        server.stop()
    return results


async def cpu(redis: Redis) -> float:
    """CPU seconds used so far by this process and by the Redis server."""
    return time.process_time() + await redis_cpu(redis)


async def redis_cpu(redis: Redis) -> float:
    """CPU seconds used so far by the Redis server."""
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _has_group(redis: Redis, route: Route) -> bool:
    try:
        groups = await redis.xinfo_groups(route.stream)
    except Exception:
        return False
    return any(g["name"] in (route.group, route.group.encode()) for g in groups)


def run_with(loop: str, coroutine: Any) -> Any:
    """asyncio.run on the standard event loop or on uvloop's."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {sys.version.split()[0]}, {platform.system()}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument(
        "--only", choices=("attempt-log", "throughput", "gc"), help="run one part alone"
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop", "both"),
        default="both",
        help="the event loop(s): both runs everything under each, one after the other",
    )
    parser.add_argument(
        "--gc-defaults",
        action="store_true",
        help="keep Python's collector settings (default: freeze_startup_heap, as the process)",
    )
    options = parser.parse_args()
    print(f"machine      {machine()}, load average {os.getloadavg()[0]:.1f}")
    outcomes: dict[str, Any] = {}
    for loop in ("asyncio", "uvloop") if options.loop == "both" else (options.loop,):
        print(f"--- event loop: {loop}")
        outcomes[loop] = run_with(loop, main(options.events, options.only, options.gc_defaults))
        gc.unfreeze()
        gc.set_threshold(*DEFAULT_GC_THRESHOLD)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if options.json:
        print(json.dumps(outcomes, indent=2))
