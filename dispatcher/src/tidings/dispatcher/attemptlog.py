"""Writing the attempt log (the record: tidings.api.attempts).

The attempts of one settled batch go to Redis in one pipelined write, after the
batch is settled: N XADDs and the two approximate trims (XADD takes one trim
strategy, the log has two bounds), one round trip for the whole batch. The
log is a record, not a guarantee: a write that fails (Redis unreachable just
then) is logged and dropped, never retried ahead of the next deliveries.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.api import attempts, keys
from tidings.api.attempts import Attempt
from tidings.api.routes import Route

log = logging.getLogger(__name__)


def replica_name() -> str:
    """The pod's name where the downward API gives it, else the host's."""
    return os.environ.get("POD_NAME") or socket.gethostname()


async def write(redis: Redis, route: Route, records: list[Attempt]) -> bool:
    """Append `records` to the Trigger's attempt log and trim it; False if Redis failed."""
    if not records:
        return True
    key = keys.attempt_log(route.namespace, route.source, route.name)
    delivery = route.delivery
    pipe = redis.pipeline(transaction=False)
    for record in records:
        pipe.xadd(key, attempts.encode(record))  # type: ignore[arg-type]
    pipe.xtrim(key, maxlen=delivery.attempt_log_max_entries, approximate=True)
    oldest_ms = int((time.time() - delivery.attempt_log_max_age) * 1000)
    pipe.xtrim(key, minid=f"{max(0, oldest_ms)}-0", approximate=True)
    try:
        await pipe.execute()
    except (RedisError, OSError) as error:
        log.warning(
            "Trigger %s: %d attempts not recorded in the attempt log: %s",
            route.id,
            len(records),
            error,
        )
        return False
    return True
