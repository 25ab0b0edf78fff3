"""Ingest throughput, single events and batches, against baselines from the same run.

    .venv/bin/python hack/bench_ingest.py [--seconds 2] [--rounds 3] [--concurrency 32]
        [--loop asyncio|uvloop|both]

Starts a private redis-server (AOF on, appendfsync everysec, as production),
then measures, one after the other:

  redis XADD            raw XADD from redis-py, `concurrency` in flight (no HTTP)
  redis XADD x batch    raw pipelined XADD, `batch` per round trip (no HTTP)
  bare HTTP -> XADD     a minimal aiohttp server: read body, one XADD, 202
  ingest single         POST /sources/NS/NAME, binary mode, bearer token, dedupe script
  bare HTTP batch       minimal server: JSON array -> pipelined XADD
  ingest batch          POST application/cloudevents-batch+json, `batch` events

Servers run in a child process (one core), the load generator here (the other
core), so "bare" and "ingest" share the same client cost and their ratio is
the price of Tidings' parsing, auth, dedupe and metrics. The HTTP rows run in
interleaved rounds and report medians, so other load on the machine hits both
sides alike; server and Redis CPU per event come from /proc, the steadier figures
under contention. Prints a table; results go in docs/benchmarks.md, "## Ingest".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.typing import EncodableT

from tidings.api import keys, table
from tidings.api.process import ENV_EVENT_LOOP, EVENT_LOOPS, run_event_loop
from tidings.api.routes import compile_source
from tidings.api.sealing import Sealer, new_key
from tidings.api.types import EventSourceSpec, TriggerGrantSpec
from tidings.cli.redis_server import RedisServer, free_port
from tidings.dispatcher.ingest import build_app
from tidings.dispatcher.routing import TableWatcher

TOKEN = "bench-token"
SEAL_KEY = "BENCH_INGEST_SEAL_KEY"


class OneSecret:
    def source(self, namespace: str, name: str) -> EventSourceSpec | None:
        return None

    def service_ports(self, namespace: str, name: str) -> list[int] | None:
        return None

    def secret(self, namespace: str, name: str, key: str) -> str | None:
        return TOKEN

    def grants(self, namespace: str) -> list[TriggerGrantSpec]:
        return []  # one namespace: no cross-namespace Triggers


# --- servers (run in the child process) -------------------------------------------------


async def serve_bare(redis_url: str, port: int) -> None:
    redis = Redis.from_url(redis_url)
    stream = keys.stream("bench", "bare")

    async def single(request: web.Request) -> web.Response:
        body = await request.read()
        await redis.xadd(stream, {"e": body})
        return web.json_response({"ok": True}, status=202)

    async def batch(request: web.Request) -> web.Response:
        events = json.loads(await request.read())
        async with redis.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(stream, {"e": json.dumps(event)})
            await pipe.execute()
        return web.json_response({"ok": True}, status=202)

    app = web.Application()
    app.router.add_post("/single", single)
    app.router.add_post("/batch", batch)
    await _run(app, port)


async def serve_ingest(redis_url: str, port: int) -> None:
    redis = Redis.from_url(redis_url)
    # One key for every ingest server of the run: they share the routing table.
    sealer = Sealer(os.environ[SEAL_KEY])
    spec = EventSourceSpec.model_validate(
        {"http": {"auth": {"tokenSecretRef": {"name": "t", "key": "token"}}}}
    )
    source = compile_source(
        namespace="bench", name="orders", spec=spec, world=OneSecret(), sealer=sealer
    )
    await table.put_source(redis, source)
    watcher = TableWatcher(redis)
    await watcher.start()
    await _run(build_app(redis, watcher, CollectorRegistry(), sealer), port)


async def _run(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("serving", flush=True)
    await asyncio.Event().wait()


# --- load -------------------------------------------------------------------------------


async def load(url: str, make: object, seconds: float, concurrency: int) -> tuple[int, list[float]]:
    """POST as fast as `concurrency` workers can for `seconds`; (requests, latencies)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                headers, body = make()  # type: ignore[operator]
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 202:
                        raise RuntimeError(f"{url}: {response.status} {await response.text()}")
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies


def single_event() -> tuple[dict[str, str], bytes]:
    return (
        {
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": str(uuid.uuid4()),
            "ce-source": "/bench",
            "ce-type": "com.bench.event",
        },
        b'{"order": 12345, "total": 99.5, "items": ["a", "b", "c"]}',
    )


def batch_of(size: int) -> object:
    def make() -> tuple[dict[str, str], bytes]:
        events = [
            {
                "specversion": "1.0",
                "id": str(uuid.uuid4()),
                "source": "/bench",
                "type": "com.bench.event",
                "data": {"order": 12345, "total": 99.5, "items": ["a", "b", "c"]},
            }
            for _ in range(size)
        ]
        return (
            {
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": "application/cloudevents-batch+json",
            },
            json.dumps(events).encode(),
        )

    return make


async def raw_xadd(redis: Redis, seconds: float, concurrency: int, batch: int) -> int:
    stream = keys.stream("bench", "raw")
    fields: dict[EncodableT, EncodableT] = {"e": json.dumps({"id": "x", "data": {"order": 12345}})}
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            if batch == 1:
                await redis.xadd(stream, fields)
            else:
                async with redis.pipeline(transaction=False) as pipe:
                    for _ in range(batch):
                        pipe.xadd(stream, fields)
                    await pipe.execute()
            done += batch

    await asyncio.gather(*(worker() for _ in range(concurrency if batch == 1 else 1)))
    return done


class Child:
    def __init__(self, kind: str, redis_url: str, loop: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, __file__, f"--serve-{kind}", redis_url, str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, ENV_EVENT_LOOP: loop},
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "serving":
            raise RuntimeError(f"{kind} server did not start")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def cpu_seconds(pid: int) -> float:
    """CPU seconds process `pid` used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    return f"{statistics.quantiles(values, n=100)[int(q) - 1] * 1000:.1f}"


async def bench(
    seconds: float, concurrency: int, batch: int, rounds: int, loops: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            assert server.process is not None
            await _bench(server.url, server.process.pid, seconds, concurrency, batch, rounds, loops)
        finally:
            server.stop()


async def _bench(
    redis_url: str,
    redis_pid: int,
    seconds: float,
    concurrency: int,
    batch: int,
    rounds: int,
    loops: list[str],
) -> None:
    redis = Redis.from_url(redis_url)
    xadd = statistics.median(
        [await raw_xadd(redis, seconds, concurrency, 1) / seconds for _ in range(rounds)]
    )
    pipelined = statistics.median(
        [await raw_xadd(redis, seconds, concurrency, batch) / seconds for _ in range(rounds)]
    )
    await redis.aclose()

    os.environ[SEAL_KEY] = new_key()
    children: list[Child] = []
    cases: list[tuple[str, Child, str, object, int, int]] = []
    for loop in loops:
        bare, ingest = Child("bare", redis_url, loop), Child("ingest", redis_url, loop)
        children += [bare, ingest]
        cases += [
            (f"{loop}: bare HTTP -> XADD", bare, bare.url("/single"), single_event, concurrency,
             1),
            (f"{loop}: ingest single (binary, token, dedupe)", ingest,
             ingest.url("/sources/bench/orders"), single_event, concurrency, 1),
            (f"{loop}: bare HTTP batch of {batch}", bare, bare.url("/batch"), batch_of(batch),
             max(1, concurrency // 4), batch),
            (f"{loop}: ingest batch of {batch}", ingest, ingest.url("/sources/bench/orders"),
             batch_of(batch), max(1, concurrency // 4), batch),
        ]  # fmt: skip
    # Interleaved rounds (bare, ingest, bare, ingest ...) and medians, so load from
    # anything else on the machine hits both sides alike.
    runs: dict[str, list[tuple[float, list[float]]]] = {}
    cpu: dict[str, list[float]] = {}  # server CPU µs per event
    redis_cpu: dict[str, list[float]] = {}  # redis-server CPU µs per event
    try:
        for _ in range(rounds):
            for name, child, url, make, workers, size in cases:
                before, redis_before = child.cpu(), cpu_seconds(redis_pid)
                count, lat = await load(url, make, seconds, workers)
                runs.setdefault(name, []).append((count * size / seconds, lat))
                cpu.setdefault(name, []).append((child.cpu() - before) / (count * size) * 1e6)
                redis_spent = cpu_seconds(redis_pid) - redis_before
                redis_cpu.setdefault(name, []).append(redis_spent / (count * size) * 1e6)
    finally:
        for child in children:
            child.stop()

    def median_run(name: str) -> tuple[float, list[float]]:
        ordered = sorted(runs[name], key=lambda run: run[0])
        return ordered[len(ordered) // 2]

    rows: list[tuple[str, float, str, str, str, str]] = [
        ("redis XADD (no HTTP)", xadd, "-", "-", "-", "-"),
        (f"redis XADD x{batch} pipelined (no HTTP)", pipelined, "-", "-", "-", "-"),
    ]
    for name, *_ in cases:
        rate, lat = median_run(name)
        used = f"{statistics.median(cpu[name]):.0f}"
        redis_used = f"{statistics.median(redis_cpu[name]):.0f}"
        rows.append((name, rate, ms(lat, 50), ms(lat, 99), used, redis_used))

    print(
        f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, {await _redis_version(redis_url)}, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(
        f"median of {rounds} interleaved rounds of {seconds:g} s; {concurrency} concurrent "
        f"single requests, {max(1, concurrency // 4)} concurrent batches\n"
    )
    print("| measurement | events/s | p50 ms | p99 ms | server CPU µs/event | Redis CPU µs/event |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, value, p50, p99, used, redis_used in rows:
        print(f"| {name} | {value:,.0f} | {p50} | {p99} | {used} | {redis_used} |")
    for index, loop in enumerate(loops):
        bare_single, ingest_single, bare_batch, ingest_batch = (
            name for name, *_ in cases[4 * index : 4 * index + 4]
        )
        rates = {name: median_run(name)[0] for name, *_ in cases}
        cpu_used = {name: statistics.median(cpu[name]) for name, *_ in cases}
        print(f"\n{loop}:")
        print(
            f"ingest single / bare HTTP -> XADD:   {rates[ingest_single] / rates[bare_single]:.2f}"
        )
        print(f"ingest single / raw XADD:            {rates[ingest_single] / xadd:.2f}")
        print(f"ingest batch / bare HTTP batch:      {rates[ingest_batch] / rates[bare_batch]:.2f}")
        print(f"ingest batch / raw pipelined XADD:   {rates[ingest_batch] / pipelined:.2f}")
        print(
            "ingest batch / ingest single:        "
            f"{rates[ingest_batch] / rates[ingest_single]:.1f}x"
        )
        print(
            "server CPU per event, ingest / bare: "
            f"single {cpu_used[ingest_single] / cpu_used[bare_single]:.2f}x, "
            f"batch {cpu_used[ingest_batch] / cpu_used[bare_batch]:.2f}x"
        )


async def _redis_version(url: str) -> str:
    redis = Redis.from_url(url)
    info = await redis.info("server")
    await redis.aclose()
    return f"Redis {info['redis_version']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--loop",
        choices=(*EVENT_LOOPS, "both"),
        default="both",
        help="the servers' event loop (both: each, in the same interleaved rounds)",
    )
    parser.add_argument("--serve-bare", nargs=2, metavar=("REDIS_URL", "PORT"))
    parser.add_argument("--serve-ingest", nargs=2, metavar=("REDIS_URL", "PORT"))
    args = parser.parse_args()
    if args.serve_bare:
        run_event_loop(serve_bare(args.serve_bare[0], int(args.serve_bare[1])))
    elif args.serve_ingest:
        run_event_loop(serve_ingest(args.serve_ingest[0], int(args.serve_ingest[1])))
    else:
        loops = list(EVENT_LOOPS) if args.loop == "both" else [args.loop]
        asyncio.run(bench(args.seconds, args.concurrency, args.batch, args.rounds, loops))


if __name__ == "__main__":
    main()
