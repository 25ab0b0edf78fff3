"""Dispatcher under test: a private redis-server (AOF on) for this folder, real
subscriber servers on loopback, the real routing table and compiler."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from dispatch_harness import Plane, Subscriber
from redis.asyncio import Redis

from tidings.api.sealing import Sealer, new_key
from tidings.cli.redis_server import RedisServer


@pytest.fixture(scope="session")
def dispatch_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for these tests; each test uses its own namespace."""
    server = RedisServer(tmp_path_factory.mktemp("dispatch-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def plane(dispatch_redis: RedisServer) -> AsyncIterator[Plane]:
    redis = Redis.from_url(dispatch_redis.url)
    key = new_key()
    plane = Plane(redis, dispatch_redis.url, Sealer(key), key)
    try:
        yield plane
    finally:
        await plane.close()
        await redis.aclose()


@pytest.fixture
async def subscriber() -> AsyncIterator[Subscriber]:
    server = await Subscriber().start()
    yield server
    await server.stop()
