#!/usr/bin/env python3
"""Delayed events and Replays, measured in one run on this machine.

    .venv/bin/python hack/bench_replay.py [--events 100000] [--delayed 10000]

Starts a private redis-server, a subscriber (aiohttp answering 200) and the
real Dispatcher in this process, then measures:

1. delayed: deliveries/s of 5,000 undelayed events alone (baseline), then of
   5,000 undelayed events stored behind --delayed events due in an hour, in
   the same run; the ratio says whether the delayed ones slow the others;
2. replay: a Replay of a --events stream window to one Trigger (created after
   the events were stored, so nothing else is delivered): the time from the
   job to completion, events/s, and Redis's used_memory before, at its peak
   during the run (sampled every 50 ms), and after.
Prints JSON; results go in docs/benchmarks.md (not a pass/fail test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from tidings.api import keys, table
from tidings.api.destinations import LOCAL
from tidings.api.events import CloudEvent, encode
from tidings.api.replays import read_progress
from tidings.api.routes import compile_replay, compile_source, compile_trigger
from tidings.api.sealing import Sealer, new_key
from tidings.api.types import EventSourceSpec, ReplaySpec, TriggerGrantSpec, TriggerSpec
from tidings.cli.redis_server import RedisServer
from tidings.dispatcher.engine import Dispatcher
from tidings.dispatcher.routing import TableWatcher

NS = "bench"


class World:
    def __init__(self, spec: EventSourceSpec) -> None:
        self.spec = spec

    def source(self, namespace: str, name: str) -> EventSourceSpec | None:
        return self.spec

    def service_ports(self, namespace: str, name: str) -> list[int] | None:
        return [80]

    def secret(self, namespace: str, name: str, key: str) -> str | None:
        return None

    def grants(self, namespace: str) -> list[TriggerGrantSpec]:
        return []  # one namespace: no cross-namespace Triggers


class Counter:
    def __init__(self) -> None:
        self.by_path: dict[str, int] = {}

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.by_path[request.path] = self.by_path.get(request.path, 0) + 1
        return web.Response(status=200)


async def wait(check: Any, within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {within}s")
        await asyncio.sleep(0.01)


async def xadd(redis: Redis, stream: str, events: list[CloudEvent]) -> None:
    for start in range(0, len(events), 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for event in events[start : start + 1000]:
                pipe.xadd(stream, encode(event))  # type: ignore[arg-type]
            await pipe.execute()


def event(prefix: str, i: int, due: str | None = None) -> CloudEvent:
    extensions = {"deliverafter": due} if due else {}
    data = {"n": i, "text": "x" * 200}
    return CloudEvent(
        id=f"{prefix}-{i}", source="/bench", type="t", data=data, extensions=extensions
    )


async def main(events: int, delayed: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tidings-bench-replay-"))
    server = RedisServer(work / "redis")
    server.start()
    redis = Redis.from_url(server.url)
    counter = Counter()
    app = web.Application()
    app.router.add_post("/{tail:.*}", counter.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    sealer = Sealer(new_key())
    spec = EventSourceSpec.model_validate({"http": {"auth": {"allowAnonymous": True}}})
    world = World(spec)
    source = compile_source(namespace=NS, name="src", spec=spec, world=world, sealer=sealer)
    await table.put_source(redis, source)

    async def trigger(name: str) -> Any:
        body = {"source": "src", "subscriber": {"uri": f"http://127.0.0.1:{port}/{name}"}}
        route = compile_trigger(
            namespace=NS,
            name=name,
            spec=TriggerSpec.model_validate(body),
            world=world,
            sealer=sealer,
            destinations=LOCAL,
        )
        await redis.xgroup_create(route.stream, route.group, id="$", mkstream=True)
        await table.put_route(redis, route)
        return route

    watcher = TableWatcher(redis, resync_interval=0.5)
    await watcher.start()
    dispatcher = Dispatcher(
        redis, watcher, sealer=sealer, registry=CollectorRegistry(), destinations=LOCAL
    )
    await dispatcher.start()
    out: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "load_average_before": os.getloadavg(),
    }
    try:
        # 1. delayed events do not slow the others
        await trigger("live")
        await asyncio.sleep(1.0)
        n = 5000
        started = time.perf_counter()
        await xadd(redis, source.stream, [event("a", i) for i in range(n)])
        await wait(lambda: counter.by_path.get("/live", 0) >= n, 300)
        alone = n / (time.perf_counter() - started)
        due = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        await xadd(redis, source.stream, [event("d", i, due) for i in range(delayed)])
        started = time.perf_counter()
        await xadd(redis, source.stream, [event("b", i) for i in range(n)])
        await wait(lambda: counter.by_path.get("/live", 0) >= 2 * n, 300)
        behind = n / (time.perf_counter() - started)
        set_aside = await redis.zcard(keys.delayed(NS, "src", "live"))
        out["delayed"] = {
            "undelayed_alone_per_s": round(alone),
            "undelayed_behind_delayed_per_s": round(behind),
            "ratio": round(behind / alone, 2),
            "delayed_set_aside": set_aside,
            "delivered_early": counter.by_path.get("/live", 0) - 2 * n,
        }
        await redis.delete(keys.retries(NS, "src", "live"), keys.delayed(NS, "src", "live"))
        await redis.delete(keys.held(NS, "src", "live"), keys.delayed_held(NS, "src", "live"))

        # 2. a Replay of a stream window
        await redis.xtrim(source.stream, maxlen=0)
        await xadd(redis, source.stream, [event("r", i) for i in range(events)])
        route = await trigger("replayed")
        await asyncio.sleep(1.0)
        before = int((await redis.info("memory"))["used_memory"])
        job = compile_replay(
            namespace=NS,
            name="bench",
            uid=str(uuid.uuid4()),
            spec=ReplaySpec.model_validate({"trigger": "replayed", "from": {"stream": {}}}),
            route=route,
        )
        peak = before
        started = time.perf_counter()
        await redis.hset(keys.REPLAY_JOBS, job.id, job.model_dump_json())  # type: ignore[misc]
        while True:
            peak = max(peak, int((await redis.info("memory"))["used_memory"]))
            progress = await read_progress(redis, NS, "src", "replayed", "bench")
            if progress is not None and progress.completed:
                break
            if time.perf_counter() - started > 1800:
                raise SystemExit("the replay did not complete in 30 minutes")
            await asyncio.sleep(0.05)
        took = time.perf_counter() - started
        after = int((await redis.info("memory"))["used_memory"])
        out["replay"] = {
            "events": events,
            "seconds": round(took, 1),
            "per_s": round(events / took),
            "delivered": progress.delivered,
            "subscriber_got": counter.by_path.get("/replayed", 0),
            "stream_bytes": await redis.memory_usage(source.stream),
            "used_memory_before": before,
            "used_memory_peak_during": peak,
            "peak_over_before_bytes": peak - before,
            "used_memory_after": after,
        }
        out["load_average_after"] = os.getloadavg()
    finally:
        await dispatcher.stop(grace=1.0)
        await watcher.stop()
        await runner.cleanup()
        await redis.aclose()
        server.stop()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--delayed", type=int, default=10_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.events, args.delayed)), indent=2))
