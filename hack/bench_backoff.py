#!/usr/bin/env python3
"""Backoff against flaky and down subscribers, in one run on this machine (issue 17, item 1).

    .venv/bin/python hack/bench_backoff.py [--events 5000] [--rounds 2]

Starts a private redis-server and a subscriber process (aiohttp) with three paths:
/ok answers 200; /flaky answers 503 to the first attempt of every event and 200
to its retry; /down answers 503 to everything until told otherwise. Then, with
the real Dispatcher in this process (every feature on, as hack/bench_dispatch.py):

1. healthy: time to deliver N events to /ok (the baseline);
2. flaky: N events to /flaky, each delivered on its retry (initialDelay 1s):
   time against healthy + the first retry delay (target <= 2.5), with today's
   rule (delivery.backoff defaults) and with the rule before it (`window: 0s`:
   5 failures in a row mean Backoff);
3. down: seconds from the first send until the Trigger is in Backoff, and the
   attempts it took;
4. recovery: /down comes back with N events waiting; the drain rate against the
   healthy rate (slow start ramps up from 1).

Timings are ratios against the same run's healthy baseline; not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).parent))
from bench_dispatch import LOOPBACK, World, add_source, fill, trigger

from tidings.api import keys, table
from tidings.api.sealing import Sealer, new_key
from tidings.api.text import text
from tidings.cli.redis_server import RedisServer, free_port
from tidings.dispatcher.engine import Dispatcher
from tidings.dispatcher.routing import TableWatcher

RETRY = {"initialDelay": "1s", "maxDelay": "30s", "maxAttempts": 12}
FIRST_RETRY = 1.0  # seconds (initialDelay; jitter spreads it +/- 20 %)


def subscriber_main(port: int) -> None:
    seen: set[str] = set()
    state = {"ok": 0, "attempts": 0, "down": True}

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        state["attempts"] += 1
        state["ok"] += 1
        return web.Response(status=200)

    async def flaky(request: web.Request) -> web.Response:
        await request.read()
        state["attempts"] += 1
        event_id = request.headers.get("webhook-id", "")
        if event_id not in seen:
            seen.add(event_id)
            return web.Response(status=503)
        state["ok"] += 1
        return web.Response(status=200)

    async def down(request: web.Request) -> web.Response:
        await request.read()
        state["attempts"] += 1
        if state["down"]:
            return web.Response(status=503)
        state["ok"] += 1
        return web.Response(status=200)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(state)

    async def control(request: web.Request) -> web.Response:
        body = await request.json()
        if "down" in body:
            state["down"] = bool(body["down"])
        if body.get("reset"):
            state["ok"] = state["attempts"] = 0
        return web.json_response(state)

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/flaky", flaky)
    app.router.add_post("/down", down)
    app.router.add_get("/stats", stats)
    app.router.add_post("/control", control)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class Bench:
    def __init__(self, redis: Redis, base: str, session: aiohttp.ClientSession) -> None:
        self.redis = redis
        self.base = base
        self.session = session
        self.world = World()
        self.sealer = Sealer(new_key())
        self.count = 0

    async def control(self, **body: Any) -> dict[str, Any]:
        async with self.session.post(f"{self.base}/control", json=body) as response:
            result: dict[str, Any] = await response.json()
            return result

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/stats") as response:
            result: dict[str, Any] = await response.json()
            return result

    async def trigger_on(self, path: str, events: int, **delivery: Any) -> Any:
        """A fresh source with `events` stored, and a Trigger on it (not yet routed)."""
        self.count += 1
        name = f"{path}{self.count}"
        stream = await add_source(self.redis, name, self.world, self.sealer)
        await fill(self.redis, stream, events)
        route = trigger(name, name, f"{self.base}/{path}", self.world, self.sealer, **delivery)
        await self.redis.xgroup_create(route.stream, route.group, id="0")
        return route

    async def until_delivered(self, events: int, limit: float = 600) -> float:
        """Seconds until the subscriber answered 200 `events` times (since reset)."""
        started = time.perf_counter()
        while (await self.stats())["ok"] < events:
            if time.perf_counter() - started > limit:
                raise TimeoutError(f"{events} not delivered within {limit}s")
            await asyncio.sleep(0.01)
        return time.perf_counter() - started

    async def deliver(self, path: str, events: int, **delivery: Any) -> float:
        route = await self.trigger_on(path, events, **delivery)
        await self.control(reset=True)
        await table.put_route(self.redis, route)
        seconds = await self.until_delivered(events)
        await table.delete_route(self.redis, route.namespace, route.name)
        return seconds

    async def state(self, route: Any) -> str:
        raw = await self.redis.hget(
            keys.trigger_state(route.namespace, route.source, route.name), keys.STATE_STATE
        )
        return text(raw) if raw else ""


async def main(events: int, rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-backoff-"))
    server = RedisServer(work / "redis")
    server.start()
    port = free_port()
    sub = multiprocessing.get_context("spawn").Process(target=subscriber_main, args=(port,))
    sub.start()
    redis = Redis.from_url(server.url)
    session = aiohttp.ClientSession()
    bench = Bench(redis, f"http://127.0.0.1:{port}", session)
    watcher = TableWatcher(redis)
    try:
        for _ in range(200):
            try:
                await bench.stats()
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        await watcher.start()
        dispatcher = Dispatcher(
            redis, watcher, sealer=bench.sealer, registry=CollectorRegistry(), **LOOPBACK
        )
        await dispatcher.start()
        print(f"machine: {machine()}; {events} events per run, {rounds} rounds interleaved")

        healthy: list[float] = []
        flaky: list[float] = []
        flaky_old: list[float] = []
        for round_ in range(rounds):
            healthy.append(await bench.deliver("ok", events, retry=RETRY))
            flaky.append(await bench.deliver("flaky", events, retry=RETRY))
            flaky_old.append(
                await bench.deliver("flaky", events, retry=RETRY, backoff={"window": "0s"})
            )
            base = healthy[-1] + FIRST_RETRY
            print(
                f"round {round_ + 1}: healthy {healthy[-1]:.2f}s ({events / healthy[-1]:.0f}/s); "
                f"every first attempt 503: {flaky[-1]:.2f}s = {flaky[-1] / base:.2f} x "
                f"(healthy + first retry); with the old rule {flaky_old[-1]:.2f}s = "
                f"{flaky_old[-1] / base:.2f} x"
            )
        best = min(healthy) + FIRST_RETRY
        print(
            f"flaky: best {min(flaky):.2f}s = {min(flaky) / best:.2f} x (healthy + first retry), "
            f"target <= 2.5; old rule {min(flaky_old):.2f}s = {min(flaky_old) / best:.2f} x"
        )

        # 3: down. 4: it comes back with the backlog waiting.
        await bench.control(down=True, reset=True)
        route = await bench.trigger_on("down", events, retry=RETRY)
        started = time.perf_counter()
        await table.put_route(redis, route)
        while await bench.state(route) != "Backoff":
            if time.perf_counter() - started > 120:
                raise TimeoutError("no Backoff within 120s")
            await asyncio.sleep(0.01)
        entered = time.perf_counter() - started
        attempts = (await bench.stats())["attempts"]
        print(
            f"down: in Backoff {entered:.2f}s after the Trigger started, after {attempts} "
            f"attempts (window {route.delivery.window:g}s by default)"
        )
        await asyncio.sleep(3)
        await bench.control(down=False)
        came_back = time.perf_counter()
        await bench.until_delivered(1)
        probed = time.perf_counter()
        drained = await bench.until_delivered(events)
        rate = (events - 1) / drained
        print(
            f"recovery: the next probe {probed - came_back:.2f}s after the subscriber came "
            f"back; then {events} waiting events drained in {drained:.2f}s ({rate:.0f}/s, "
            f"slow start included): {rate / (events / min(healthy)):.2f} of the healthy rate"
        )
        await dispatcher.stop(grace=1.0)
    finally:
        await watcher.stop()
        await session.close()
        await redis.aclose()
        sub.terminate()
        server.stop()


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rounds))
