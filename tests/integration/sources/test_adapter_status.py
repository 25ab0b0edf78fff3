"""The adapter's status document in Redis, as the operator reads it."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from tidings.api import keys
from tidings.sources import status

pytestmark = pytest.mark.integration


async def test_a_report_with_fields_this_version_does_not_know_is_still_read(
    redis_client: aioredis.Redis,
) -> None:
    document = {"state": "Running", "reason": "Streaming", "since": 1.0, "shard": 3}
    await redis_client.hset(keys.adapter_state("ns", "a"), status.FIELD, json.dumps(document))
    read = await status.read(redis_client, "ns", "a")
    assert read is not None and (read.state, read.reason) == ("Running", "Streaming")


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '{"reason": "no state"}'])
async def test_an_unreadable_report_is_no_report_not_a_crash(
    redis_client: aioredis.Redis, raw: str
) -> None:
    await redis_client.hset(keys.adapter_state("ns", "b"), status.FIELD, raw)
    assert await status.read(redis_client, "ns", "b") is None
