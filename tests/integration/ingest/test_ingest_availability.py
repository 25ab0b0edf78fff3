"""An ack means stored: with Redis gone the answer is 503, never 202; readiness
follows Redis and the routing table; WAIT for replicas when configured."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from ingest_harness import AUTH, IngestUnderTest
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis

from tidings.api.sealing import Sealer, new_key
from tidings.cli.redis_server import RedisServer
from tidings.dispatcher.ingest import INGEST, build_app
from tidings.dispatcher.routing import TableWatcher


@pytest.fixture
async def throwaway(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server this test may kill."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def ingest_beside(
    server: RedisServer, *, redis_timeout: float
) -> AsyncIterator[tuple[TestClient[Any, Any], IngestUnderTest]]:
    """Ingest on `server` through a client without socket timeouts, as `tidings
    dispatcher` makes it (only ingest's own deadline holds), with a source "orders"."""
    redis = Redis.from_url(server.url)
    watcher = TableWatcher(redis)
    await watcher.start()
    ingest_app = build_app(
        redis, watcher, CollectorRegistry(), Sealer(new_key()), redis_timeout=redis_timeout
    )
    try:
        async with TestClient(TestServer(ingest_app, host="127.0.0.1")) as client:
            under_test = IngestUnderTest(
                client=client,
                redis=redis,
                watcher=watcher,
                sealer=ingest_app[INGEST].sealer,
                registry=CollectorRegistry(),
                namespace=f"t-{uuid.uuid4().hex[:10]}",
            )
            await under_test.add_source("orders")
            yield client, under_test
    finally:
        await watcher.stop()
        await redis.aclose()


async def serve(
    redis_url: str, *, start_watcher: bool = True, sealer: Sealer | None = None, **options: object
) -> tuple[IngestUnderTest, TableWatcher]:
    # The socket timeout must outlast WAIT's, or the client gives up first.
    redis = Redis.from_url(redis_url, socket_timeout=3, socket_connect_timeout=1)
    watcher = TableWatcher(redis)
    if start_watcher:
        await watcher.start()
    sealer = sealer or Sealer(new_key())
    registry = CollectorRegistry()
    app = build_app(redis, watcher, registry, sealer, **options)  # type: ignore[arg-type]
    client: TestClient[object, object] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    under_test = IngestUnderTest(
        client=client,
        redis=redis,
        watcher=watcher,
        sealer=sealer,
        registry=registry,
        namespace=f"t-{uuid.uuid4().hex[:10]}",
    )
    return under_test, watcher


async def close(under_test: IngestUnderTest) -> None:
    await under_test.client.close()
    await under_test.watcher.stop()
    await under_test.redis.aclose()


async def test_with_redis_killed_ingest_answers_503_and_recovers_when_it_returns(
    throwaway: RedisServer,
) -> None:
    ingest, _ = await serve(throwaway.url)
    try:
        await ingest.add_source("orders")
        ok = await ingest.client.post(ingest.url("orders"), json={"n": 1}, headers=AUTH)
        assert ok.status == 202

        throwaway.kill()
        for n in range(3):
            down = await ingest.client.post(ingest.url("orders"), json={"n": n}, headers=AUTH)
            assert down.status == 503
            assert down.headers["Retry-After"] == "1"
            assert "Redis is unavailable" in (await down.json())["error"]
        ready = await ingest.client.get("/readyz")
        assert ready.status == 503 and "Redis unreachable" in (await ready.json())["reason"]

        throwaway.start()  # same port, same AOF directory
        await asyncio.sleep(0.1)
        back = await ingest.client.post(ingest.url("orders"), json={"n": 9}, headers=AUTH)
        assert back.status == 202, await back.text()
        # Only the events answered 202 are in the stream (AOF kept the first one).
        assert [e.data for e in await ingest.stored("orders")] == [{"n": 1}, {"n": 9}]
    finally:
        await close(ingest)


async def test_readyz_is_503_until_the_routing_table_is_loaded(throwaway: RedisServer) -> None:
    ingest, watcher = await serve(throwaway.url, start_watcher=False)
    try:
        before = await ingest.client.get("/readyz")
        assert before.status == 503
        assert "routing table" in (await before.json())["reason"]
        posted = await ingest.client.post("/sources/a/b", json={}, headers=AUTH)
        assert posted.status == 503
        await watcher.start()
        after = await ingest.client.get("/readyz")
        assert after.status == 200 and (await after.json())["ready"] is True
        assert (await ingest.client.get("/healthz")).status == 200
    finally:
        await close(ingest)


async def test_metrics_serve_the_shared_registry_and_count_ingest_by_source_and_code(
    ingest: IngestUnderTest,
) -> None:
    engine_counter = Counter(
        "engine_things", "Something the engine counts.", registry=ingest.registry
    )
    engine_counter.inc(3)
    source = await ingest.add_source("orders")
    await ingest.client.post(ingest.url("orders"), json={}, headers=AUTH)
    await ingest.client.post(ingest.url("orders"), json={}, headers={})
    await ingest.client.post(ingest.url("unknown"), json={}, headers=AUTH)
    text = await (await ingest.client.get("/metrics")).text()
    assert "engine_things_total 3.0" in text
    assert f'tidings_ingest_requests_total{{code="202",source="{source.id}"}} 1.0' in text
    assert f'tidings_ingest_requests_total{{code="401",source="{source.id}"}} 1.0' in text
    # Unknown sources share one unlabelled series: URLs cannot inflate cardinality.
    assert 'tidings_ingest_requests_total{code="404",source=""} 1.0' in text
    assert f'tidings_ingest_events_total{{outcome="accepted",source="{source.id}"}} 1.0' in text


async def test_with_wait_a_replica_must_acknowledge_before_202(
    throwaway: RedisServer, tmp_path: Path
) -> None:
    primary = Redis.from_url(throwaway.url)
    await primary.config_set("repl-diskless-sync-delay", 0)  # default: waits 5 s for more
    await primary.aclose()
    replica = RedisServer(
        tmp_path / "replica", extra_args=["--replicaof", "127.0.0.1", str(throwaway.port)]
    )
    replica.start()
    one, _ = await serve(throwaway.url, wait_replicas=1, wait_timeout=2.0)
    two, _ = await serve(throwaway.url, sealer=one.sealer, wait_replicas=2, wait_timeout=0.3)
    try:
        source = await one.add_source("orders")
        await two.watcher.refresh()
        replica_redis = Redis.from_url(replica.url)
        for _ in range(100):  # the replica's first sync
            info = await replica_redis.info("replication")
            if info.get("master_link_status") == "up":
                break
            await asyncio.sleep(0.1)
        ok = await one.client.post(one.url("orders"), json={"n": 1}, headers=AUTH)
        assert ok.status == 202, await ok.text()
        assert await replica_redis.xlen(source.stream) == 1
        await replica_redis.aclose()

        short = await two.client.post(
            f"/sources/{one.namespace}/orders", json={"n": 2}, headers=AUTH
        )
        assert short.status == 503
        assert "only 1 of 2 replicas acknowledged" in (await short.json())["error"]
    finally:
        await close(one)
        await close(two)
        replica.stop()


async def test_with_redis_hanging_ingest_answers_503_after_its_timeout(
    throwaway: RedisServer,
) -> None:
    # A client without socket timeouts, as `tidings dispatcher` makes it: the
    # ingest's own deadline must still hold when Redis stops answering.
    assert throwaway.process is not None
    async with ingest_beside(throwaway, redis_timeout=0.5) as (client, under_test):
        throwaway.process.send_signal(signal.SIGSTOP)
        try:
            for _ in range(3):
                started = time.monotonic()
                response = await client.post(under_test.url("orders"), json={}, headers=AUTH)
                assert response.status == 503
                assert time.monotonic() - started < 3
            # Concurrent ones too: all but the first gather behind it (streams.Coalescer).
            started = time.monotonic()
            burst = await asyncio.gather(
                *(client.post(under_test.url("orders"), json={}, headers=AUTH) for _ in range(5))
            )
            assert [r.status for r in burst] == [503] * 5
            assert time.monotonic() - started < 3
        finally:
            throwaway.process.send_signal(signal.SIGCONT)
        # Nothing stays stuck behind the calls that hung.
        response = await client.post(under_test.url("orders"), json={}, headers=AUTH)
        assert response.status == 202, await response.text()


async def test_with_redis_hanging_a_gathered_request_waits_one_timeout_not_two(
    throwaway: RedisServer,
) -> None:
    # Requests that gather behind a call still on its way share one deadline, their
    # first one's (streams.Coalescer): the gathered call must not get a timeout of
    # its own when it finally starts, or they would wait for the hung call and then
    # for their own, twice redis_timeout.
    timeout = 2.0
    assert throwaway.process is not None
    async with ingest_beside(throwaway, redis_timeout=timeout) as (client, under_test):
        throwaway.process.send_signal(signal.SIGSTOP)
        try:

            async def post() -> tuple[int, float]:
                started = time.monotonic()
                response = await client.post(under_test.url("orders"), json={}, headers=AUTH)
                return response.status, time.monotonic() - started

            first = asyncio.ensure_future(post())
            await asyncio.sleep(0.2)  # the first call is on its way: the rest gather
            gathered = await asyncio.gather(*(post() for _ in range(4)))
            status, took = await first
        finally:
            throwaway.process.send_signal(signal.SIGCONT)
        assert status == 503
        assert timeout <= took < timeout + 1.0
        assert [s for s, _ in gathered] == [503] * 4
        # Each within one timeout of its own start (twice would be 4 s).
        assert all(t < timeout + 1.0 for _, t in gathered), gathered
        response = await client.post(under_test.url("orders"), json={}, headers=AUTH)
        assert response.status == 202, await response.text()


async def test_with_redis_stalling_a_late_request_keeps_its_own_time(
    throwaway: RedisServer,
) -> None:
    # A gathering ends by its first caller's deadline. A request arriving when half of
    # that is gone goes on its own instead: Redis back after the gathering's deadline
    # but within the late request's own time, the late request is stored.
    timeout = 2.0
    assert throwaway.process is not None
    async with ingest_beside(throwaway, redis_timeout=timeout) as (client, under_test):

        async def post(delay: float) -> int:
            await asyncio.sleep(delay)
            response = await client.post(under_test.url("orders"), json={}, headers=AUTH)
            return response.status

        throwaway.process.send_signal(signal.SIGSTOP)
        try:
            # 0 s: a call on its way (deadline 2 s); 0.1 s: gathers behind it (its
            # gathering must end by 2.1 s); 1.5 s: the gathering has 0.6 s left.
            posts = [asyncio.ensure_future(post(d)) for d in (0.0, 0.1, 1.5)]
            await asyncio.sleep(2.6)  # past the gathering's deadline
        finally:
            throwaway.process.send_signal(signal.SIGCONT)
        first, gathered, late = await asyncio.gather(*posts)
        assert (first, gathered) == (503, 503)
        assert late == 202  # stored at 2.6 s, within its own 3.5 s
