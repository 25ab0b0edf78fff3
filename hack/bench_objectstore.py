"""objectStore sources: poll cost on a large bucket, notify throughput beside
the bare ingest ceiling of the same run.

    .venv/bin/python hack/bench_objectstore.py [--objects 10000] [--notifications 3000]

Starts its own redis-server (AOF on, everysec) and its own Versity Gateway
(hack/s3.sh with a private state directory; the binary `hack/s3.sh bin`
builds or finds), so a running test environment is not disturbed.

poll (the adapter's own `poll()`, in this process; its counts of S3 requests
and Redis calls are the adapter's, Redis commands are also read from INFO):

  bare listing        ListObjectsV2 of the whole bucket with the MinIO SDK,
                      nothing else (median of 3 after a warm-up): the
                      baseline the poll ratios are against
  first poll          initialSync skip: every object recorded, no event
  no change           a poll that finds nothing new
  1% changed          after overwriting 1% of the objects

notify (an ingest app on loopback, aiohttp client, `--concurrency` requests
in flight, one record per request as stores send them):

  bare ingest         plain JSON events POSTed to an http source: the ceiling
  notify ingest       S3 notification records POSTed to a notify source
  notify via Versity  objects PUT to Versity Gateway, which posts each
                      notification to the same ingest: uploads -> events in
                      the stream, beside the PUTs alone

Prints a table; paste it into docs/benchmarks.md under "## Object stores".
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from minio import Minio
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from tidings.api import table
from tidings.api.process import connect_redis
from tidings.api.routes import compile_source
from tidings.api.sealing import Sealer, new_key
from tidings.api.types import EventSourceSpec, TriggerGrantSpec
from tidings.cli.redis_server import RedisServer, free_port
from tidings.dispatcher.ingest import build_app
from tidings.dispatcher.routing import TableWatcher
from tidings.sources.objectstore import Credentials, ObjectStoreAdapter

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
TOKEN = "bench-token-0123456789"


class World:
    def source(self, namespace: str, name: str) -> EventSourceSpec | None:
        return None

    def service_ports(self, namespace: str, name: str) -> list[int] | None:
        return None

    def secret(self, namespace: str, name: str, key: str) -> str | None:
        return TOKEN if key == "token" else None

    def grants(self, namespace: str) -> list[TriggerGrantSpec]:
        return []  # one namespace: no cross-namespace Triggers


class PrivateS3:
    """A Versity Gateway of our own (hack/s3.sh, private state directory)."""

    def __init__(self, state: Path, webhook: str = "") -> None:
        self.state = state
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(Path.home()),
            "TIDINGS_STATE_DIR": str(state),
            "S3_WEBHOOK_URL": webhook,
        }

    def up(self) -> dict[str, str]:
        done = subprocess.run(
            ["bash", str(REPO / "hack" / "s3.sh"), "up"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        )
        line = done.stdout.split("export ", 1)[1]
        return dict(part.split("=", 1) for part in line.split() if "=" in part)

    def down(self) -> None:
        subprocess.run(
            ["bash", str(REPO / "hack" / "s3.sh"), "down"],
            env=self.env,
            capture_output=True,
            check=False,
            timeout=60,
        )


def client_of(env: dict[str, str]) -> Minio:
    return Minio(
        urlsplit(env["S3_ENDPOINT"]).netloc,
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
        secure=False,
        region="us-east-1",
    )


def put_many(client: Minio, bucket: str, keys_: list[str], body: bytes, threads: int = 8) -> float:
    began = time.perf_counter()

    def put(key: str) -> None:
        client.put_object(bucket, key, io.BytesIO(body), len(body))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, keys_))
    return time.perf_counter() - began


async def redis_commands(redis: Redis) -> int:
    info = await redis.info("stats")
    return int(info["total_commands_processed"])


def row(rows: list[list[str]], *cells: Any) -> None:
    rows.append([str(c) for c in cells])
    print(" | ".join(rows[-1]), flush=True)


async def bench_poll(
    env: dict[str, str], redis: Redis, objects: int, rows: list[list[str]]
) -> None:
    client = client_of(env)
    bucket = f"bench{uuid.uuid4().hex[:8]}"
    client.make_bucket(bucket)
    names = [f"data/{i:07}.csv" for i in range(objects)]
    seconds = put_many(client, bucket, names, b"a,b,c\n")
    print(f"# filled {bucket} with {objects} objects in {seconds:.0f} s", flush=True)

    times = []
    for _ in range(4):  # the first one warms the store's caches; the median of the rest
        began = time.perf_counter()
        listed = sum(1 for _ in client.list_objects(bucket, prefix="data/", recursive=True))
        times.append(time.perf_counter() - began)
        assert listed == objects
    bare = sorted(times[1:])[1]
    pages = -(-objects // 1000)
    row(rows, "bare listing (baseline)", f"{bare:.2f} s", pages, "0", "1.00")

    spec = EventSourceSpec.model_validate(
        {
            "objectStore": {
                "endpoint": env["S3_ENDPOINT"],
                "bucket": bucket,
                "prefix": "data/",
                "suffix": ".csv",
                "events": ["created", "deleted"],
                "mode": "poll",
                "credentialsSecretRef": {"name": "s3"},
            }
        }
    )
    source = compile_source(
        namespace=NAMESPACE, name=bucket, spec=spec, world=World(), sealer=Sealer(new_key())
    )
    assert spec.object_store is not None
    credentials = Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])

    async def measured(label: str, adapter: ObjectStoreAdapter) -> None:
        before = await redis_commands(redis)
        result = await adapter.poll()
        commands = await redis_commands(redis) - before - 1  # the INFO itself
        row(
            rows,
            label,
            f"{result.seconds:.2f} s",
            result.s3_requests,
            f"{result.redis_calls} ({commands} commands)",
            f"{result.seconds / bare:.2f}",
        )
        print(f"#   {result}", flush=True)

    adapter = ObjectStoreAdapter(source, spec.object_store, redis, credentials=credentials)
    await measured("poll: first (initialSync skip)", adapter)
    await measured("poll: no change", adapter)
    await measured("poll: no change again", adapter)
    changed = names[::100]
    put_many(client, bucket, changed, b"x,y,z\n")
    await measured(f"poll: 1% changed ({len(changed)} objects)", adapter)
    fresh = ObjectStoreAdapter(source, spec.object_store, redis, credentials=credentials)
    await measured("poll: no change, after a restart (HSCAN load)", fresh)
    events = await redis.xlen(source.stream)
    assert events == len(changed), f"{events} events for {len(changed)} changed objects"


def notification(bucket: str, key: str, n: int) -> bytes:
    record = {
        "eventVersion": "2.2",
        "eventSource": "aws:s3",
        "eventTime": "2026-11-29T23:17:00.000Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": key, "size": 6, "eTag": f"{n:032x}", "sequencer": f"{n:016X}"},
        },
    }
    return json.dumps({"Records": [record]}).encode()


async def post_all(url: str, bodies: list[bytes], headers: dict[str, str], width: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    connector = aiohttp.TCPConnector(limit=width)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                async with session.post(url, data=body, headers=headers) as answer:
                    assert answer.status == 202, (answer.status, await answer.text())

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(width)))
        return time.perf_counter() - began


async def bench_notify(
    redis: Redis, state: Path, count: int, width: int, rows: list[list[str]]
) -> None:
    sealer = Sealer(new_key())
    bucket = f"notify{uuid.uuid4().hex[:8]}"
    http = compile_source(
        namespace=NAMESPACE,
        name="http",
        spec=EventSourceSpec.model_validate(
            {"http": {"auth": {"tokenSecretRef": {"name": "t", "key": "token"}}}}
        ),
        world=World(),
        sealer=sealer,
    )
    notify = compile_source(
        namespace=NAMESPACE,
        name="notify",
        spec=EventSourceSpec.model_validate(
            {
                "objectStore": {
                    "endpoint": "http://unused",
                    "bucket": bucket,
                    "mode": "notify",
                    "auth": {"tokenSecretRef": {"name": "t", "key": "token"}},
                }
            }
        ),
        world=World(),
        sealer=sealer,
    )
    for source in (http, notify):
        await table.put_source(redis, source)
    watcher = TableWatcher(redis, resync_interval=5)
    await watcher.start()
    app = build_app(redis, watcher, CollectorRegistry(), sealer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}/sources/{NAMESPACE}"
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        plain = [json.dumps({"n": n}).encode() for n in range(count)]
        bare = await post_all(f"{base}/http", plain, auth, width)
        bare_rate = count / bare
        row(rows, "bare ingest, plain JSON (ceiling)", f"{bare_rate:.0f} events/s", "", "", "1.00")
        bodies = [notification(bucket, f"k/{n}", n) for n in range(count)]
        took = await post_all(f"{base}/notify", bodies, auth, width)
        assert await redis.xlen(notify.stream) == count
        rate = count / took
        row(
            rows,
            "notify ingest, 1 record/request",
            f"{rate:.0f} events/s",
            "",
            "",
            f"{rate / bare_rate:.2f}",
        )

        # Through a real store: Versity posts one notification per PUT.
        s3 = PrivateS3(state / "notify-s3", f"{base}/notify?token={TOKEN}")
        env = await asyncio.to_thread(s3.up)  # Versity's test event needs ingest to answer
        try:
            client = client_of(env)
            client.make_bucket(bucket)
            uploads = min(count, 2000)
            stored_before = await redis.xlen(notify.stream)
            began = time.perf_counter()
            puts = await asyncio.to_thread(
                put_many, client, bucket, [f"v/{n}" for n in range(uploads)], b"a,b,c\n"
            )
            while await redis.xlen(notify.stream) < stored_before + uploads:
                if time.perf_counter() - began > 120:
                    raise SystemExit("notifications did not all arrive within 120 s")
                await asyncio.sleep(0.01)
            end_to_end = time.perf_counter() - began
            row(
                rows,
                "PUTs to Versity alone (with notifications on)",
                f"{uploads / puts:.0f} PUT/s",
                "",
                "",
                "",
            )
            row(
                rows,
                "notify via Versity: PUT -> event in stream",
                f"{uploads / end_to_end:.0f} events/s",
                "",
                "",
                f"{uploads / end_to_end / bare_rate:.2f}",
            )
        finally:
            s3.down()
    finally:
        await runner.cleanup()
        await watcher.stop()
        for source in (http, notify):
            await redis.delete(source.stream)


async def main(args: argparse.Namespace) -> None:
    state = Path(tempfile.mkdtemp(prefix="bench-objectstore-"))
    server = RedisServer(state / "redis")
    url = server.start()
    redis = connect_redis(url)
    rows: list[list[str]] = []
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}")
    print("# what | time or rate | S3 requests | Redis calls | ratio to baseline")
    try:
        if args.objects:
            s3 = PrivateS3(state / "poll-s3")
            env = s3.up()
            try:
                await bench_poll(env, redis, args.objects, rows)
            finally:
                s3.down()
        if args.notifications:
            await bench_notify(redis, state, args.notifications, args.concurrency, rows)
    finally:
        await redis.aclose()
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=10000, help="bucket size for poll (0: skip)")
    parser.add_argument(
        "--notifications", type=int, default=3000, help="requests per notify run (0: skip)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    asyncio.run(main(parser.parse_args()))
