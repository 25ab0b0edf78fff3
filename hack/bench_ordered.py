#!/usr/bin/env python3
"""Ordered Triggers (`delivery.ordering.key`) against unordered ones, in one run
on this machine (issue 17, item 3).

    .venv/bin/python hack/bench_ordered.py [--events 10000] [--latency-ms 5]

Starts a private redis-server and a subscriber process (aiohttp; /hook/<ms>
answers 200 after <ms> milliseconds and records each event's key and sequence
number, so order per key is checked), then, with the real Dispatcher in this
process (every feature on, as hack/bench_dispatch.py: filter + CEL, signing,
metrics, limits):

1. 1,000 keys: N events whose subject (the ordering key) is one of 1,000 keys
   drawn at random, delivered by an ordered Trigger, against the same events
   delivered by an unordered one (the baseline); interleaved twice, best of
   each (target: ordered >= 0.7 of unordered, order per key kept);
2. one hot key: every event has the same key and the subscriber takes
   --latency-ms per request; against one client posting the same events one at
   a time to the same path, each POST after the previous answer (1 / the
   subscriber's latency as this machine serves it; target: close to 1);
3. a hot key beside 999 others: the other keys' deliveries/s while a fifth of
   the events carry one hot key, against the same other-key events alone.

Ratios are against baselines measured in the same run; not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).parent))
from bench_dispatch import LOOPBACK, World, add_source, machine, trigger

from tidings.api import table
from tidings.api.events import CloudEvent, encode
from tidings.api.routes import Route
from tidings.api.sealing import Sealer, new_key
from tidings.cli.redis_server import RedisServer, free_port
from tidings.dispatcher.engine import Dispatcher
from tidings.dispatcher.routing import TableWatcher

ORDERED = {"ordering": {"key": "event.subject"}}
HOT = "hot"


def subscriber_main(port: int) -> None:
    """Records (arrival time, key, sequence number) per event: ids are "<key>/<n>"."""
    arrivals: list[tuple[float, str, int]] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        delay = int(request.match_info["ms"])
        if delay:
            await asyncio.sleep(delay / 1000)
        key, _, n = request.headers.get("webhook-id", "").rpartition("/")
        arrivals.append((time.time(), key, int(n or 0)))
        return web.Response(status=200)

    async def count(request: web.Request) -> web.Response:
        return web.json_response(len(arrivals))

    async def stats(request: web.Request) -> web.Response:
        out = arrivals[:]
        arrivals.clear()
        return web.json_response(out)

    app = web.Application()
    app.router.add_post("/hook/{ms}", hook)
    app.router.add_get("/count", count)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def events_of(keys: list[str]) -> list[CloudEvent]:
    """One event per item of `keys`, numbered per key in stream order (the id is
    "<key>/<n>"; Bench.deliver puts the run before it)."""
    seq: dict[str, int] = {}
    out = []
    for key in keys:
        n = seq[key] = seq.get(key, -1) + 1
        out.append(
            CloudEvent(
                id=f"{key}/{n}",
                source="/bench",
                type="com.example.order.created",
                subject=key,
                data={"n": n, "plan": "pro"},
            )
        )
    return out


async def store(redis: Redis, stream: str, events: list[CloudEvent]) -> None:
    for start in range(0, len(events), 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for event in events[start : start + 1000]:
                pipe.xadd(stream, encode(event))  # type: ignore[arg-type]
            await pipe.execute()


class Bench:
    def __init__(
        self, redis: Redis, base: str, session: aiohttp.ClientSession, poll: float = 0.05
    ) -> None:
        self.redis = redis
        self.base = base
        self.session = session
        self.world = World()
        self.sealer = Sealer(new_key())
        self.runs = 0
        # How often deliver() asks the subscriber for its count. The rate comes from the
        # arrival times, not from this; asking every 5 ms (as this did until 2026-11-30)
        # cost both processes CPU the one-client baseline does not pay, in the middle
        # of the hot key's deliveries (~5 % of its rate).
        self.poll = poll

    async def count(self) -> int:
        async with self.session.get(f"{self.base}/count") as response:
            return int(await response.json())

    async def arrivals(self) -> list[tuple[float, str, int]]:
        async with self.session.get(f"{self.base}/stats") as response:
            return [tuple(a) for a in await response.json()]  # type: ignore[misc]

    async def deliver(
        self, events: list[CloudEvent], latency_ms: int, *, ordered: bool, limit: float = 120
    ) -> tuple[float, list[tuple[float, str, int]]]:
        """Store `events` on a new source, add a Trigger for them from the start, and
        wait until all arrived: (the time the Trigger was added, the arrivals)."""
        self.runs += 1
        name = f"run{self.runs}"
        stream = await add_source(self.redis, name, self.world, self.sealer)
        # Late arrivals of an earlier run (one that timed out) are told apart by the run.
        await store(self.redis, stream, [replace(e, id=f"{name}|{e.id}") for e in events])
        route: Route = trigger(
            name,
            name,
            f"{self.base}/hook/{latency_ms}",
            self.world,
            self.sealer,
            **(ORDERED if ordered else {}),
        )
        await self.redis.xgroup_create(route.stream, route.group, id="0")
        started = time.time()
        await table.put_route(self.redis, route)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if await self.count() >= len(events):
                break
            await asyncio.sleep(self.poll)
        mine = f"{name}|"
        arrivals = [
            (t, key.removeprefix(mine), n)
            for t, key, n in await self.arrivals()
            if key.startswith(mine)
        ]
        # The stream stays: deleting it under a worker still stopping makes noise.
        await table.delete_route(self.redis, route.namespace, route.name)
        if len(arrivals) < len(events):
            print(f"  (only {len(arrivals)} of {len(events)} arrived within {limit:g}s)")
        return started, arrivals

    async def sequential(self, count: int, latency_ms: int) -> float:
        """One client, one request at a time: requests/s (1 / the subscriber's latency)."""
        url = f"{self.base}/hook/{latency_ms}"
        body = json.dumps({"plan": "pro"}).encode()
        started = time.perf_counter()
        for i in range(count):
            headers = {"Content-Type": "application/json", "webhook-id": f"seq/{i}"}
            async with self.session.post(url, data=body, headers=headers) as response:
                await response.read()
        rate = count / (time.perf_counter() - started)
        await self.arrivals()
        return rate


def out_of_order(arrivals: list[tuple[float, str, int]]) -> int:
    """Arrivals whose sequence number is not the one after its key's previous."""
    last: dict[str, int] = {}
    wrong = 0
    for _, key, n in sorted(arrivals):
        if n != last.get(key, -1) + 1:
            wrong += 1
        last[key] = n
    return wrong


def rate_of(started: float, arrivals: list[tuple[float, str, int]]) -> float:
    return len(arrivals) / (max(t for t, _, _ in arrivals) - started)


async def many_keys(bench: Bench, events: int, rounds: int) -> dict[str, Any]:
    rng = random.Random(17)
    stream = events_of([f"k{rng.randrange(1000)}" for _ in range(events)])
    rates: dict[str, list[float]] = {"unordered": [], "ordered": []}
    wrong = 0
    for round_ in range(rounds):
        for mode in ("unordered", "ordered"):
            started, arrivals = await bench.deliver(stream, 0, ordered=mode == "ordered")
            rates[mode].append(rate_of(started, arrivals))
            if mode == "ordered":
                wrong += out_of_order(arrivals)
        print(
            f"round {round_ + 1}      1,000 keys: unordered {rates['unordered'][-1]:6.0f}/s, "
            f"ordered {rates['ordered'][-1]:6.0f}/s: "
            f"{rates['ordered'][-1] / rates['unordered'][-1]:.2f}"
        )
    unordered, ordered = max(rates["unordered"]), max(rates["ordered"])
    print(
        f"1,000 keys   ordered {ordered:.0f}/s vs unordered {unordered:.0f}/s (best of "
        f"{rounds}): {ordered / unordered:.2f}; {wrong} events out of order per key"
    )
    return {**rates, "ratio": ordered / unordered, "out_of_order": wrong}


async def hot_key(bench: Bench, events: int, latency_ms: int, rounds: int) -> dict[str, Any]:
    stream = events_of([HOT] * events)
    rates: dict[str, list[float]] = {"sequential": [], "ordered": []}
    wrong = 0
    for round_ in range(rounds):
        rates["sequential"].append(await bench.sequential(events, latency_ms))
        started, arrivals = await bench.deliver(stream, latency_ms, ordered=True)
        rates["ordered"].append(rate_of(started, arrivals))
        wrong += out_of_order(arrivals)
        # Per event, what the Trigger adds to a request's own time: one settle round
        # trip (the next event may not go before Redis knows the last one settled) and
        # the dispatcher's work per delivery.
        added = 1000 / rates["ordered"][-1] - 1000 / rates["sequential"][-1]
        print(
            f"round {round_ + 1}      one hot key, subscriber {latency_ms} ms: one client "
            f"{rates['sequential'][-1]:5.0f}/s, ordered Trigger {rates['ordered'][-1]:5.0f}/s: "
            f"{rates['ordered'][-1] / rates['sequential'][-1]:.2f} (+{added:.2f} ms per event)"
        )
    sequential, ordered = max(rates["sequential"]), max(rates["ordered"])
    print(
        f"hot key      {ordered:.0f}/s vs {sequential:.0f}/s one request at a time to a "
        f"{latency_ms} ms subscriber (best of {rounds}): {ordered / sequential:.2f}; "
        f"{wrong} out of order"
    )
    return {**rates, "latency_ms": latency_ms, "ratio": ordered / sequential, "out_of_order": wrong}


async def hot_beside_others(bench: Bench, events: int, rounds: int) -> dict[str, Any]:
    rng = random.Random(3)
    others = [f"k{rng.randrange(999)}" for _ in range(events)]
    mixed: list[str] = []
    for key in others:  # a fifth of the stream is the hot key
        mixed.append(key)
        if rng.random() < 0.25:
            mixed.append(HOT)
    alone_events, mixed_events = events_of(others), events_of(mixed)
    rates: dict[str, list[float]] = {"alone": [], "beside_hot": []}
    wrong = 0
    for round_ in range(rounds):
        started, arrivals = await bench.deliver(alone_events, 0, ordered=True)
        rates["alone"].append(rate_of(started, arrivals))
        wrong += out_of_order(arrivals)
        started, arrivals = await bench.deliver(mixed_events, 0, ordered=True)
        wrong += out_of_order(arrivals)
        rest = [a for a in arrivals if a[1] != HOT]
        rates["beside_hot"].append(rate_of(started, rest))
        # The hot key's deliveries meanwhile take their share of the machine's CPU.
        end = max(t for t, _, _ in rest)
        hot = sum(1 for t, key, _ in arrivals if key == HOT and t <= end) / (end - started)
        rates.setdefault("hot_meanwhile", []).append(hot)
        print(
            f"round {round_ + 1}      999 keys: alone {rates['alone'][-1]:6.0f}/s, beside a hot "
            f"key ({len(mixed) - len(others)} events) {rates['beside_hot'][-1]:6.0f}/s: "
            f"{rates['beside_hot'][-1] / rates['alone'][-1]:.2f} (the hot key meanwhile "
            f"{hot:.0f}/s; both {(rates['beside_hot'][-1] + hot) / rates['alone'][-1]:.2f})"
        )
    alone, beside = max(rates["alone"]), max(rates["beside_hot"])
    print(
        f"hot + 999    the other keys {beside:.0f}/s beside the hot key vs {alone:.0f}/s "
        f"alone (best of {rounds}): {beside / alone:.2f}; {wrong} out of order"
    )
    return {**rates, "ratio": beside / alone, "out_of_order": wrong}


async def main(options: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-ordered-"))
    server = RedisServer(work / "redis")
    server.start()
    port = free_port()
    sub = multiprocessing.get_context("spawn").Process(target=subscriber_main, args=(port,))
    sub.start()
    base = f"http://127.0.0.1:{port}"
    redis = Redis.from_url(server.url)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    results: dict[str, Any] = {}
    dispatcher = watcher = None
    try:
        bench = Bench(redis, base, session, options.poll_ms / 1000)
        for _ in range(100):
            try:
                await bench.count()
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        watcher = TableWatcher(redis)
        await watcher.start()
        dispatcher = Dispatcher(
            redis,
            watcher,
            sealer=bench.sealer,
            registry=CollectorRegistry(),
            consumer="bench",
            **LOOPBACK,
        )
        await dispatcher.start()
        await bench.deliver(events_of(["warm"] * 500), 0, ordered=False)  # warm the pools
        parts = options.only or ("keys", "hot", "beside")
        if "keys" in parts:
            results["many_keys"] = await many_keys(bench, options.events, options.rounds)
        if "hot" in parts:
            results["hot_key"] = await hot_key(
                bench, options.hot_events, options.latency_ms, options.rounds
            )
        if "beside" in parts:
            results["hot_beside_others"] = await hot_beside_others(
                bench, options.events // 2, options.rounds
            )
    finally:
        if dispatcher is not None:
            await dispatcher.stop(grace=0.5)
        if watcher is not None:
            await watcher.stop()
        await session.close()
        await redis.aclose()
        sub.terminate()
        sub.join()
        server.stop()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10000, help="events of part 1")
    parser.add_argument("--hot-events", type=int, default=300, help="events of part 2")
    parser.add_argument("--latency-ms", type=int, default=5, help="the subscriber's, in part 2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--poll-ms", type=float, default=50, help="how often to ask the subscriber for its count"
    )
    parser.add_argument(
        "--only", action="append", choices=("keys", "hot", "beside"), help="run these parts"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    options = parser.parse_args()
    print(f"machine      {machine()}, load average {os.getloadavg()[0]:.1f}")
    outcome = asyncio.run(main(options))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if options.json:
        print(json.dumps(outcome, indent=2))
