"""What every Tidings process shares: the common options (--redis-url,
--log-format, --log-level) and logging as text or JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from tidings.api.settings import RedisConnection, SettingsError
from tidings.api.tracing import trace_id_of

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

T = TypeVar("T")

# The data plane's event loop: uvloop (libuv) unless TIDINGS_EVENT_LOOP=asyncio.
# Measured in hack/bench_dispatch.py and hack/bench_latency.py (docs/benchmarks.md).
ENV_EVENT_LOOP = "TIDINGS_EVENT_LOOP"
EVENT_LOOPS = ("uvloop", "asyncio")


# Young collections per allocations: Python's 700 runs one every few deliveries,
# promoting the objects of deliveries still in flight, whose pile then triggers a
# full collection of the whole heap (tens of ms: a latency spike). 50,000 lets a
# delivery's objects die young (docs/benchmarks.md, Dispatcher).
GC_YOUNG_THRESHOLD = 50_000


def freeze_startup_heap() -> None:
    """After start-up: move what is alive now (modules, the routing table, clients)
    out of the collector's sight, so a full collection walks only what came later,
    and collect the young generation less often (GC_YOUNG_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def event_loop_choice(env: Mapping[str, str] = os.environ) -> str:
    """`uvloop` (the default) or `asyncio`; SettingsError naming the variable otherwise."""
    chosen = env.get(ENV_EVENT_LOOP, "").strip().lower() or "uvloop"
    if chosen not in EVENT_LOOPS:
        raise SettingsError(
            f"{ENV_EVENT_LOOP}: {chosen!r} is not an event loop Tidings runs on; "
            "use uvloop (the default) or asyncio"
        )
    return chosen


def run_event_loop(main: Coroutine[Any, Any, T], env: Mapping[str, str] = os.environ) -> T:
    """asyncio.run(main) on the chosen event loop (event_loop_choice)."""
    if event_loop_choice(env) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any `extra=` fields kept."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def event_fields(
    event: Mapping[str, Any], *, source: str, trigger: str | None = None
) -> dict[str, Any]:
    """`extra=` fields of a log line about one event, so one event can be followed
    across processes: `source` (NS/NAME), `trigger` (NS/NAME, when delivering),
    `event_id`, and `trace_id` (from the stored traceparent, when it has one)."""
    fields: dict[str, Any] = {"source": source, "event_id": str(event.get("id", ""))}
    if trigger is not None:
        fields["trigger"] = trigger
    trace_id = trace_id_of(event)
    if trace_id is not None:
        fields["trace_id"] = trace_id
    return fields


def setup_logging(log_format: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT, the host an IPv6 address in brackets if it is one (`[::1]:8080`);
    port 0 asks for any free port. ValueError names the fix."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # an IPv6 address needs its brackets, or the port is ambiguous
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise SettingsError(f"--listen {value!r}: write HOST:PORT, e.g. 0.0.0.0:8080 or [::1]:8080")
    return host, int(port)


async def wait_until_reachable(
    what: str,
    check: Callable[[], Awaitable[object]],
    stop: asyncio.Event | None = None,
    *,
    first_delay: float = 0.2,
    max_delay: float = 5.0,
) -> bool:
    """Call `check` until it returns without raising, backing off from
    `first_delay` to `max_delay`; False if `stop` was set first. A process
    started before its Redis or API server waits here, not-ready, instead of
    crashing into a restart loop."""
    delay, failures = first_delay, 0
    while stop is None or not stop.is_set():
        try:
            await check()
        except Exception as error:
            failures += 1
            if failures == 1 or failures % 10 == 0:
                log.warning("waiting for %s (%s); retrying", what, error)
        else:
            if failures:
                log.info("%s is reachable after %d failed attempt(s)", what, failures)
            return True
        if stop is None:
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        delay = min(max_delay, delay * 2)
    return False


# Connections one process opens to Redis at most; more concurrent calls wait for
# one (up to POOL_WAIT seconds; a dispatcher starting 1,000 Triggers at once on
# 2 cores queued past 5 s) instead of failing: redis-py's default pool
# raises "Too many connections" past 100, which made a burst of ingest requests
# (an object store posting a notification per upload at once) answer 503. A
# dispatcher's idle Triggers no longer hold a connection each in a blocking XREAD
# (tidings.dispatcher.waker blocks for all of them), so the bound can be small:
# every command but those few blocking reads takes well under a millisecond.
POOL_SIZE = 64
POOL_WAIT = 30.0


def connect_redis(target: str | RedisConnection, *, cluster: bool = False, **options: Any) -> Redis:
    """A client for `target` (a URL, or a RedisConnection with the ACL user,
    password and TLS files of the process's settings): a Redis Cluster client
    when `cluster` (any node's URL). `options` go to the connection pool (e.g.
    socket_timeout)."""
    # Here, not at the top: `tidings --help` and argument errors need no Redis client.
    from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

    connection = target if isinstance(target, RedisConnection) else RedisConnection(target)
    options = {**connection.options(), **options}
    if cluster:
        return RedisCluster.from_url(connection.url, **options)  # type: ignore[return-value]
    options.setdefault("socket_connect_timeout", 5)
    options.setdefault("max_connections", POOL_SIZE)
    options.setdefault("timeout", POOL_WAIT)
    pool = BlockingConnectionPool.from_url(connection.url, **options)
    return Redis.from_pool(pool)
