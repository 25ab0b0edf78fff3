"""Dispatchers' heartbeats: which replicas are alive, for the freshness of the
delivery state of Triggers at rest.

A dispatcher rewrites a Trigger's state HASH when something happened to it;
a Trigger at rest (nothing waiting, nothing failing) keeps the state it had, so
10,000 idle Triggers cost no writes. Instead each dispatcher process beats
every BEAT_EVERY seconds into one ZSET (keys.DISPATCHERS), and since every
dispatcher routes every Trigger, the operator reads a state written long ago as
current while some dispatcher beats (`newest`).
"""

from __future__ import annotations

import time

from redis.asyncio import Redis, RedisCluster

from tidings.api import keys

BEAT_EVERY = 10.0  # seconds
# A replica that has not beaten for this long is dropped from the ZSET (it died
# without saying so; a stopping one removes itself).
FORGET_AFTER = 24 * 3600.0


async def beat(redis: Redis | RedisCluster, replica: str) -> None:
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(keys.DISPATCHERS, {replica: now_ms})
        pipe.zremrangebyscore(keys.DISPATCHERS, "-inf", now_ms - int(FORGET_AFTER * 1000))
        await pipe.execute()


async def leave(redis: Redis | RedisCluster, replica: str) -> None:
    await redis.zrem(keys.DISPATCHERS, replica)


async def newest(redis: Redis | RedisCluster) -> int | None:
    """The last heartbeat of any dispatcher, ms since epoch (None: never one)."""
    last = await redis.zrange(keys.DISPATCHERS, -1, -1, withscores=True)
    return int(last[0][1]) if last else None
