"""A source's stream and its Triggers' consumer groups, created in one place.

A Trigger is a consumer group on its source's stream (keys.group). The operator
creates it before the Trigger's route is published, `tidings dev` when it loads
a manifest, and a dispatcher's worker when it starts (in case it was removed by
hand): all with `ensure_group`, at `$`, so a new Trigger gets the events that
arrive from then on, not the source's history — unless its spec.startFrom
says `beginning` (`0`: the oldest event still stored) or a time (the route's
`cursor_start`). It applies only when the group is created: an existing
cursor never moves.
"""

from __future__ import annotations

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from tidings.api import scripts


async def ensure_group(
    redis: Redis | RedisCluster, stream: str, group: str, start: str = "$"
) -> bool:
    """Create the consumer group at `start` (and the stream, MKSTREAM); False if it existed."""
    try:
        await redis.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" in str(error):
            return False
        raise
    return True


async def ensure_stream(redis: Redis | RedisCluster, stream: str) -> bool:
    """Create the stream, empty and without groups, unless it exists; True if created."""
    return bool(await scripts.ENSURE_STREAM(redis, keys=[stream]))
