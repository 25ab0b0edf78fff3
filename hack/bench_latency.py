#!/usr/bin/env python3
"""Tail latency ingest -> subscriber, single events at a fixed rate, through the real processes.

    .venv/bin/python hack/bench_latency.py [--seconds 10] [--rates 100,1000] [--loop both]

Starts a private redis-server (AOF, everysec), a subscriber (a separate aiohttp
process answering 200, recording when each event arrived), and the real
`tidings dispatcher` process (ingest HTTP and delivery in one process, as one
pod runs them). This process is the producer: one POST per event
(binary mode, anonymous source), open loop, sent at its due time
(`start + i / rate`) whatever earlier answers did, so a slow dispatcher shows as
latency, not as a lower rate. Each event's data carries the wall-clock time it
was handed to the HTTP client; the subscriber subtracts it on arrival (same
machine, same clock).

For each rate (the first, 100/s by default, is the baseline of the same run) it
prints p50/p90/p99/p99.9/max and a text histogram. With `--loop both` the
dispatcher process runs once on asyncio's event loop and once on uvloop
(TIDINGS_EVENT_LOOP). Not a pass/fail test: results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from tidings.api import table
from tidings.api.routes import compile_source
from tidings.api.sealing import ENV_KEY, Sealer, new_key
from tidings.cli.redis_server import RedisServer, free_port

sys.path.insert(0, str(Path(__file__).parent))
from bench_dispatch import NAMESPACE, World, machine, trigger

SOURCE = "latency"


def subscriber_main(port: int) -> None:
    """Answers 200 and keeps each event's latency (arrival - the `sent` in its data)."""
    os.setsid()  # a scheduling group of its own (see measure)
    latencies: list[float] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.time()
        sent = json.loads(body).get("sent")
        if sent:
            latencies.append(arrived - float(sent))
        return web.Response(status=200)

    async def stats(request: web.Request) -> web.Response:
        out = {"latencies": latencies[:]}
        latencies.clear()
        return web.json_response(out)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def wait_http(session: aiohttp.ClientSession, url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_latency: {url} did not answer within {seconds:g}s")
        await asyncio.sleep(0.1)


async def send_at_rate(
    session: aiohttp.ClientSession,
    url: str,
    rate: float,
    seconds: float,
    tag: str,
    answers: list[float] | None = None,
) -> tuple[int, int]:
    """POST one event every 1/rate s for `seconds` (open loop); (sent, refused).
    Each 202's time from the send is appended to `answers`: ingest's share."""
    count = int(rate * seconds)
    refused = 0
    reasons: dict[str, int] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def post(i: int) -> None:
        nonlocal refused
        headers = {
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": f"{tag}-{i}",
            "ce-source": "/bench",
            "ce-type": "com.example.order.created",
        }
        sent = time.time()
        body = json.dumps({"plan": "pro", "n": i, "sent": sent})
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 202:
                    refused += 1
                    reasons[f"HTTP {response.status}"] = (
                        reasons.get(f"HTTP {response.status}", 0) + 1
                    )
                elif answers is not None:
                    answers.append(time.time() - sent)
        except aiohttp.ClientError as error:
            refused += 1
            reasons[type(error).__name__] = reasons.get(type(error).__name__, 0) + 1

    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(post(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    if reasons:
        print(f"  not accepted: {reasons}")
    return count, refused


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def histogram(ordered: list[float], width: int = 50) -> list[str]:
    """Counts per latency bucket (ms, doubling), as bars scaled to the largest."""
    edges = [0.5, 1, 2, 3, 4, 6, 8, 10, 15, 20, 30, 50, 100, 200, 500, 1000, math.inf]
    counts = [0] * len(edges)
    for value in ordered:
        ms = value * 1000
        for i, edge in enumerate(edges):
            if ms < edge:
                counts[i] += 1
                break
    top = max(counts) or 1
    lines = []
    low = 0.0
    for edge, n in zip(edges, counts, strict=True):
        label = f"{low:g}-{edge:g} ms" if edge != math.inf else f">= {low:g} ms"
        bar = "#" * max(1 if n else 0, round(n / top * width))
        lines.append(f"  {label:>14} {n:7d} {n / len(ordered) * 100:6.2f}% {bar}")
        low = edge
    return lines


async def measure(
    rates: list[float], seconds: float, loop_name: str, redis_url: str, sub_port: int
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    sealer_key = new_key()
    sealer = Sealer(sealer_key)
    world = World()
    redis = Redis.from_url(redis_url)
    source = compile_source(
        namespace=NAMESPACE, name=SOURCE, spec=world.spec, world=world, sealer=sealer
    )
    await table.put_source(redis, source)
    route = trigger(
        "latency", SOURCE, f"http://127.0.0.1:{sub_port}/hook", world, sealer, format="data"
    )
    await table.put_route(redis, route)
    port = free_port()
    env = {
        **os.environ,
        ENV_KEY: sealer_key,
        "TIDINGS_EVENT_LOOP": loop_name,
        "TIDINGS_DESTINATIONS_LOOPBACK": "allow",
    }
    log = (work / "dispatcher.log").open("w")
    dispatcher = await asyncio.create_subprocess_exec(
        *[
            sys.executable,
            "-m",
            "tidings.cli.main",
            "dispatcher",
            "--redis-url",
            redis_url,
            "--listen",
            f"127.0.0.1:{port}",
            "--grace",
            "2",
            "--drain-connections",
            "0",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        # A session of its own: with autogroup scheduling a loaded machine is shared
        # per session, as a pod gets a cgroup of its own (bench_scale.py does the same).
        start_new_session=True,
    )
    results: dict[str, Any] = {}
    base = f"http://127.0.0.1:{port}"
    stats_url = f"http://127.0.0.1:{sub_port}/stats"
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await wait_http(session, f"{base}/readyz")
            ingest = f"{base}/sources/{NAMESPACE}/{SOURCE}"
            # Warm up: connections, the consumer group, the first compiled paths.
            await send_at_rate(session, ingest, 100, 1.0, f"warm-{loop_name}")
            await asyncio.sleep(1.0)
            async with session.get(stats_url) as response:
                await response.json()
            for rate in rates:
                load_before = os.getloadavg()[0]
                cpu_before = _cpu_of(dispatcher.pid)
                answers: list[float] = []
                sent, refused = await send_at_rate(
                    session, ingest, rate, seconds, f"{loop_name}-{rate:g}", answers
                )
                answers.sort()
                await asyncio.sleep(2.0)  # the stragglers
                cpu = _cpu_of(dispatcher.pid) - cpu_before
                async with session.get(stats_url) as response:
                    latencies = sorted((await response.json())["latencies"])
                if not latencies:
                    raise SystemExit(
                        f"bench_latency: nothing arrived at {rate:g}/s; see {work}/dispatcher.log"
                    )
                row = {
                    "rate": rate,
                    "sent": sent,
                    "refused": refused,
                    "arrived": len(latencies),
                    "p50_ms": percentile(latencies, 0.50) * 1000,
                    "p90_ms": percentile(latencies, 0.90) * 1000,
                    "p99_ms": percentile(latencies, 0.99) * 1000,
                    "p999_ms": percentile(latencies, 0.999) * 1000,
                    "max_ms": latencies[-1] * 1000,
                    "ingest_p50_ms": percentile(answers, 0.50) * 1000 if answers else None,
                    "ingest_p99_ms": percentile(answers, 0.99) * 1000 if answers else None,
                    "dispatcher_cpu_us_per_event": cpu / sent * 1e6,
                    "load": load_before,
                }
                results[f"{rate:g}"] = row
                print(
                    f"{loop_name:8} {rate:6g}/s  sent {sent}, arrived {len(latencies)}, "
                    f"refused {refused}; p50 {row['p50_ms']:.1f} ms, p90 {row['p90_ms']:.1f}, "
                    f"p99 {row['p99_ms']:.1f}, p99.9 {row['p999_ms']:.1f}, "
                    f"max {row['max_ms']:.1f}; ingest's 202 p50 {row['ingest_p50_ms'] or 0:.1f}, "
                    f"p99 {row['ingest_p99_ms'] or 0:.1f} ms; dispatcher process "
                    f"{row['dispatcher_cpu_us_per_event']:.0f} µs CPU per event "
                    f"(load average {load_before:.1f})"
                )
                print("\n".join(histogram(latencies)))
    finally:
        dispatcher.terminate()
        try:
            await asyncio.wait_for(dispatcher.wait(), timeout=10)
        except TimeoutError:
            dispatcher.kill()
            await dispatcher.wait()
        log.close()
        await table.delete_route(redis, route.namespace, route.name)
        await redis.aclose()
    return results


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(rates: list[float], seconds: float, loops: list[str]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-latency-redis-"))
    server = RedisServer(work / "redis")
    server.start()
    sub_port = free_port()
    sub = multiprocessing.get_context("spawn").Process(target=subscriber_main, args=(sub_port,))
    sub.start()
    outcome: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as session:
            await wait_http(session, f"http://127.0.0.1:{sub_port}/stats")
        for loop_name in loops:
            outcome[loop_name] = await measure(rates, seconds, loop_name, server.url, sub_port)
    finally:
        sub.terminate()
        sub.join()
        server.stop()
    return outcome


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="sending time per rate")
    parser.add_argument(
        "--rates", default="100,1000", help="events/s, comma-separated; the first is the baseline"
    )
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    options = parser.parse_args()
    rates = [float(r) for r in options.rates.split(",")]
    loops = ["asyncio", "uvloop"] if options.loop == "both" else [options.loop]
    print(f"machine      {machine()}, load average {os.getloadavg()[0]:.1f}")
    outcome = asyncio.run(main(rates, options.seconds, loops))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if options.json:
        print(json.dumps(outcome, indent=2))
