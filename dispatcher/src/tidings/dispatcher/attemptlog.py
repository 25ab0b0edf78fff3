"""Writing the attempt log (the record: tidings.api.attempts).

The attempts of one settled batch go to Redis in one script call after the
batch is settled (lua/attempt_log_append.lua): N XADDs and the two approximate
trims (XADD takes one trim strategy, the log has two bounds), one round trip
for the whole batch. Each attempt travels as one JSON argument
(tidings.api.attempts.pack), not 22: redis-py's per-argument encoding was most
of the log's cost, measured in hack/bench_dispatch.py --only attempt-log. The
log is a record, not a guarantee: a write that fails (Redis unreachable just
then) is logged and dropped, never retried ahead of the next deliveries.
"""

from __future__ import annotations

import logging
import os
import socket

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.api import attempts, keys, scripts
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
    args: list[str | int] = [
        delivery.attempt_log_max_entries,
        int(delivery.attempt_log_max_age * 1000),
    ]
    args.extend(map(attempts.pack, records))
    try:
        await scripts.ATTEMPT_LOG_APPEND(redis, [key], args)
    except (RedisError, OSError) as error:
        log.warning(
            "Trigger %s: %d attempts not recorded in the attempt log: %s",
            route.id,
            len(records),
            error,
        )
        return False
    return True
