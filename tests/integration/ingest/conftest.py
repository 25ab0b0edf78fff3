"""Ingest under test: a real redis-server, the real routing table, the aiohttp
app served on a loopback port, and sources compiled by the real compiler."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from ingest_harness import IngestUnderTest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from tidings.api.sealing import Sealer, new_key
from tidings.cli.redis_server import RedisServer
from tidings.dispatcher.ingest import build_app
from tidings.dispatcher.routing import TableWatcher


@pytest.fixture(scope="session")
def ingest_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the ingest tests (tests use their own namespaces)."""
    server = RedisServer(tmp_path_factory.mktemp("ingest-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def ingest(ingest_redis: RedisServer) -> AsyncIterator[IngestUnderTest]:
    redis = Redis.from_url(ingest_redis.url, socket_timeout=2, socket_connect_timeout=2)
    watcher = TableWatcher(redis)
    await watcher.start()
    sealer = Sealer(new_key())
    registry = CollectorRegistry()
    app = build_app(redis, watcher, registry, sealer)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield IngestUnderTest(
            client=client,
            redis=redis,
            watcher=watcher,
            sealer=sealer,
            registry=registry,
            namespace=f"t-{uuid.uuid4().hex[:10]}",
        )
    await watcher.stop()
    await redis.aclose()
