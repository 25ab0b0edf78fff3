"""Postgres CDC throughput and latency, beside PostgreSQL's own insert rate.

    eval "$(bash hack/postgres.sh up)"      # PostgreSQL 15, wal_level=logical
    .venv/bin/python hack/bench_cdc.py [--rows 50000] [--live-seconds 10] [--rate 500]

Starts a private redis-server (AOF on, appendfsync everysec, as production)
and measures, one after the other, on one small table (id bigint, note text):

  postgres inserts, 1-row txns   4 connections inserting one row per transaction
  postgres inserts, 1000-row txns   INSERT ... SELECT generate_series, 1000 rows each
  cdc backlog, 1000-row txns     the adapter process (`tidings source postgres`)
                                  drains a backlog of that many rows: rows/s from
                                  its first event to its last, and its CPU per row
  cdc backlog, 1-row txns        the same for one-row transactions
  live latency                   `--rate` one-row commits per second for
                                  `--live-seconds`, adapter streaming: commit ->
                                  stream (a blocking XREAD here sees the entry) and commit ->
                                  subscriber (a Dispatcher and an HTTP subscriber
                                  in this process), p50 / p99

The adapter runs as its own process, so "per adapter process" is what is
measured; PostgreSQL, Redis and this script share the other core(s). Prints a
table; paste it into docs/benchmarks.md under "## Sources".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from tidings.api import table
from tidings.api.destinations import LOCAL
from tidings.api.events import decode
from tidings.api.routes import compile_source, compile_trigger
from tidings.api.sealing import Sealer, new_key
from tidings.api.types import EventSourceSpec, TriggerGrantSpec, TriggerSpec
from tidings.cli.redis_server import RedisServer
from tidings.dispatcher.engine import Dispatcher
from tidings.dispatcher.routing import TableWatcher
from tidings.sources import pgsetup, status

NAMESPACE = "bench"


class World:
    def __init__(self, spec: EventSourceSpec, name: str) -> None:
        self.spec, self.name = spec, name

    def source(self, namespace: str, name: str) -> EventSourceSpec | None:
        return self.spec if name == self.name else None

    def service_ports(self, namespace: str, name: str) -> list[int] | None:
        return None

    def secret(self, namespace: str, name: str, key: str) -> str | None:
        return None

    def grants(self, namespace: str) -> list[TriggerGrantSpec]:
        return []  # one namespace: no cross-namespace Triggers


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Bench:
    def __init__(self, args: argparse.Namespace, dsn: str, redis: Redis, redis_url: str) -> None:
        self.args = args
        self.dsn = dsn
        self.redis = redis
        self.redis_url = redis_url
        self.name = f"cdc-{uuid.uuid4().hex[:6]}"
        self.table = f"bench_{uuid.uuid4().hex[:8]}"
        self.spec = EventSourceSpec.model_validate(
            {
                "postgres": {
                    "connectionSecretRef": {"name": "db", "key": "dsn"},
                    "tables": [f"public.{self.table}"],
                }
            }
        )
        self.world = World(self.spec, self.name)
        self.sealer = Sealer(new_key())
        self.source = compile_source(
            namespace=NAMESPACE,
            name=self.name,
            spec=self.spec,
            world=self.world,
            sealer=self.sealer,
        )
        self.dir = Path(tempfile.mkdtemp(prefix="bench-cdc-"))
        self.manifest = self.dir / "source.yaml"
        self.manifest.write_text(
            yaml.safe_dump_all(
                [
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {"name": "db", "namespace": NAMESPACE},
                        "stringData": {"dsn": dsn},
                    },
                    {
                        "apiVersion": "tidings.dev/v1alpha1",
                        "kind": "EventSource",
                        "metadata": {"name": self.name, "namespace": NAMESPACE},
                        "spec": self.spec.to_wire(),
                    },
                ]
            )
        )
        self.next_id = 1
        self.rows: list[tuple[str, str, str]] = []

    # --- the adapter process ------------------------------------------------------

    def start_adapter(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                str(Path(sys.executable).parent / "tidings"),
                "source",
                "postgres",
                "--eventsource",
                f"{NAMESPACE}/{self.name}",
                "--manifest",
                str(self.manifest),
                "--log-level",
                "WARNING",
            ],
            env={**os.environ, "REDIS_URL": self.redis_url},
        )

    async def wait_running(self) -> None:
        while True:
            current = await status.read(self.redis, NAMESPACE, self.name)
            if current is not None and current.state == "Running":
                return
            await asyncio.sleep(0.05)

    @staticmethod
    def stop_adapter(process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGTERM)
        process.wait(30)

    # --- writing rows ---------------------------------------------------------------

    async def insert_single(self, count: int, connections: int = 4) -> float:
        """rows/s for `count` one-row transactions over `connections` connections."""
        start_id = self.next_id
        self.next_id += count
        per = count // connections

        async def worker(offset: int) -> None:
            async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                first = start_id + offset * per
                for row in range(first, first + per):
                    await conn.execute(f"INSERT INTO {self.table} VALUES (%s, 'small row')", (row,))

        began = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(connections)))
        return per * connections / (time.perf_counter() - began)

    async def insert_batched(self, count: int, size: int = 1000) -> float:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            began = time.perf_counter()
            for start in range(self.next_id, self.next_id + count, size):
                await conn.execute(
                    f"INSERT INTO {self.table} SELECT g, 'small row' "
                    f"FROM generate_series({start}, {start + size - 1}) g"
                )
            elapsed = time.perf_counter() - began
        self.next_id += count
        return count / elapsed

    # --- phases -----------------------------------------------------------------------

    async def drain(self, insert: Any, count: int) -> tuple[float, float, float]:
        """Backlog `count` rows with the adapter stopped, then time it draining.
        Returns (postgres rows/s, cdc rows/s, adapter CPU µs per row)."""
        before = await self.redis.xlen(self.source.stream)
        pg_rate = await insert(count)
        target = before + count
        process = self.start_adapter()
        first_at = last_at = 0.0
        first_len = before
        try:
            while True:
                length = await self.redis.xlen(self.source.stream)
                now = time.perf_counter()
                if length > before and not first_at:
                    first_at, first_len = now, length
                    cpu_start = cpu_seconds(process.pid)
                if length >= target:
                    last_at = now
                    cpu = cpu_seconds(process.pid) - cpu_start
                    break
                await asyncio.sleep(0.005)
        finally:
            self.stop_adapter(process)
        drained = target - first_len
        return pg_rate, drained / (last_at - first_at), cpu / drained * 1e6

    async def live(self) -> tuple[list[float], list[float], int]:
        """One-row commits at --rate; latencies commit->stream and commit->subscriber (ms)."""
        received: list[tuple[dict[str, Any], float]] = []

        async def hook(request: web.Request) -> web.Response:
            received.append((await request.json(), time.time()))
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        route = compile_trigger(
            namespace=NAMESPACE,
            name="bench",
            world=self.world,
            sealer=self.sealer,
            destinations=LOCAL,
            spec=TriggerSpec.model_validate(
                {
                    "source": self.name,
                    "subscriber": {"uri": f"http://127.0.0.1:{port}/hook"},
                    "delivery": {"format": "data"},
                }
            ),
        )
        await table.put_source(self.redis, self.source)
        await table.put_route(self.redis, route)
        dispatcher_redis = Redis.from_url(self.redis_url)
        watcher = TableWatcher(dispatcher_redis, resync_interval=1.0)
        await watcher.start()
        dispatcher = Dispatcher(
            dispatcher_redis,
            watcher,
            sealer=self.sealer,
            registry=CollectorRegistry(),
            destinations=LOCAL,
        )
        await dispatcher.start()
        while True:  # the Trigger's group exists: events from now on are delivered
            groups = await self.redis.xinfo_groups(self.source.stream)
            if any(g["name"] == b"bench" for g in groups):
                break
            await asyncio.sleep(0.05)
        start_len = await self.redis.xlen(self.source.stream)
        newest: Any = await self.redis.xrevrange(self.source.stream, count=1)
        last_id: bytes = newest[0][0]
        arrived: dict[bytes, float] = {}

        async def read_stream() -> None:
            """Note when each entry becomes readable (stream ids have only ms resolution)."""
            reader = Redis.from_url(self.redis_url)
            cursor = last_id
            try:
                while True:
                    reply: Any = await reader.xread({self.source.stream: cursor}, block=1000)
                    now = time.time()
                    for _, entries in reply:
                        for entry_id, _ in entries:
                            arrived[entry_id] = now
                            cursor = entry_id
            finally:
                await reader.aclose()

        reading = asyncio.create_task(read_stream())
        process = self.start_adapter()
        await self.wait_running()
        count = int(self.args.rate * self.args.live_seconds)
        try:
            async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                began = time.perf_counter()
                for i in range(count):
                    await conn.execute(
                        f"INSERT INTO {self.table} VALUES (%s, 'small row')", (self.next_id,)
                    )
                    self.next_id += 1
                    delay = began + (i + 1) / self.args.rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
            while True:
                stored = await self.redis.xlen(self.source.stream)
                if len(received) >= count and stored >= start_len + count:
                    break
                await asyncio.sleep(0.05)
        finally:
            reading.cancel()
            self.stop_adapter(process)
            await dispatcher.stop(grace=1.0)
            await watcher.stop()
            await dispatcher_redis.aclose()
            await runner.cleanup()
        entries: Any = await self.redis.xrange(self.source.stream, min=f"({last_id.decode()}")
        to_stream = []
        for entry_id, fields in entries:
            event, _ = decode(fields)
            committed = datetime.fromisoformat(event.data["commitTime"]).timestamp()
            to_stream.append(arrived[entry_id] - committed)
        to_subscriber = [
            at - datetime.fromisoformat(data["commitTime"]).timestamp() for data, at in received
        ]
        return [x * 1000 for x in to_stream], [x * 1000 for x in to_subscriber], count


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--single-rows", type=int, default=20_000)
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=500.0, help="one-row commits/s, live")
    args = parser.parse_args()
    dsn = os.environ.get("TIDINGS_PG_DSN")
    if not dsn:
        sys.exit('set TIDINGS_PG_DSN: eval "$(bash hack/postgres.sh up)"')
    server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-cdc-redis-")))
    server.start()
    redis = Redis.from_url(server.url)
    bench = Bench(args, dsn, redis, server.url)
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await conn.execute(f"CREATE TABLE {bench.table} (id bigint PRIMARY KEY, note text)")
    pg_version = (await (await conn.execute("SHOW server_version")).fetchone())[0]  # type: ignore[index]
    postgres = bench.spec.postgres
    assert postgres is not None  # the bench's source is a postgres one
    try:
        # Create the slot and publication, then stop: the backlogs pile up behind it.
        process = bench.start_adapter()
        await bench.wait_running()
        bench.stop_adapter(process)
        pg_batch, cdc_batch, cpu_batch = await bench.drain(bench.insert_batched, args.rows)
        pg_single, cdc_single, cpu_single = await bench.drain(bench.insert_single, args.single_rows)
        to_stream, to_subscriber, live_count = await bench.live()
    finally:
        await pgsetup.cleanup(postgres, dsn, namespace=NAMESPACE, name=bench.name)
        await conn.execute(f"DROP TABLE IF EXISTS {bench.table}")
        await conn.close()
        await redis.aclose()
        server.stop()

    report(
        args,
        pg_version,
        (pg_batch, cdc_batch, cpu_batch),
        (pg_single, cdc_single, cpu_single),
        to_stream,
        to_subscriber,
        live_count,
    )


def report(
    args: argparse.Namespace,
    pg_version: str,
    batched: tuple[float, float, float],
    single: tuple[float, float, float],
    to_stream: list[float],
    to_subscriber: list[float],
    live_count: int,
) -> None:
    pg_batch, cdc_batch, cpu_batch = batched
    pg_single, cdc_single, cpu_single = single
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[2]
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        f"machine: {os.cpu_count()} cores, {cpu}; PostgreSQL {pg_version}, Redis "
        f"{redis_version}, Python {platform.python_version()}"
    )
    print()
    print("| measurement | rows/s | ratio to PostgreSQL's inserts | adapter CPU per row |")
    print("|---|---:|---:|---:|")
    print(f"| PostgreSQL inserts, 1000-row transactions | {pg_batch:,.0f} | 1.00 | |")
    print(
        f"| CDC into the stream, 1000-row transactions | {cdc_batch:,.0f} | "
        f"{cdc_batch / pg_batch:.2f} | {cpu_batch:.0f} µs |"
    )
    print(f"| PostgreSQL inserts, 1-row transactions (4 connections) | {pg_single:,.0f} | 1.00 | |")
    print(
        f"| CDC into the stream, 1-row transactions | {cdc_single:,.0f} | "
        f"{cdc_single / pg_single:.2f} | {cpu_single:.0f} µs |"
    )
    print()
    print(f"live: {live_count} one-row commits at {args.rate:.0f}/s")
    print("| latency | p50 | p99 | max |")
    print("|---|---:|---:|---:|")
    for label, values in (("commit → stream", to_stream), ("commit → subscriber", to_subscriber)):
        print(
            f"| {label} | {statistics.median(values):.1f} ms | "
            f"{percentile(values, 99):.1f} ms | {max(values):.1f} ms |"
        )


if __name__ == "__main__":
    asyncio.run(main())
