"""Appending events to a source's stream: the one write path into the data plane.

Ingest and every source adapter call `append`. Each event is added with XADD
and remembered under a dedupe key (SET PX, the source's dedupe window) in the
same Lua script, so a crash can never leave one without the other: an event
is either in the stream and remembered, or neither. An event whose id was seen
within the window is not added again; its first stream id is returned instead.
A delayed event (extension `deliverafter`, checked by ingest) is stored like
any other, with its due time in one more field (keys.FIELD_DUE) that the
dispatchers' fetch script reads to set it aside (cursor.py).

The dedupe key is the pair (CloudEvents `source`, `id`), which is what the
CloudEvents spec makes unique: two producers posting to one EventSource with
their own `source` may reuse each other's ids without losing events.

Batches are cut into chunks of `CHUNK` events; each chunk is one script call
(lua/streams_append.lua, atomic), and all chunks go out in one pipeline (one round trip). With
`wait_replicas`, a WAIT on the same connection follows, so the result says
how many replicas hold the writes. On Redis Cluster (all keys of a source
share its hash tag, so each script runs on one slot) the chunks go one after
the other, as a cluster pipeline refuses scripts, and WAIT is not supported.

Ingest appends through a `Coalescer`: small requests to one source that arrive
while an append is on its way share the next script call (group commit).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError

from tidings.api import keys, scripts
from tidings.api.events import CloudEvent, encode
from tidings.api.routes import CompiledSource
from tidings.api.text import text

# Events per script call: large enough to amortise the round trip, small enough
# that one call never blocks Redis for long (~100 µs per event).
CHUNK = 100
# Sources without an ingest section (postgres, kubernetes, schedule) still
# dedupe replays after an adapter restart, with the API's default window.
DEFAULT_DEDUPE_WINDOW = 300.0

# Requests with more events than this do not gather (Coalescer): their call is paid
# off already, and bench_ingest measured 100-event batches slower when gathered.
GATHER_EVENTS_MAX = 10

CLUSTER_WAIT = (
    "waiting for replicas (WAIT) is not supported with Redis Cluster yet: WAIT must run on "
    "the connection that wrote, which a cluster client does not expose; leave it at 0"
)


@dataclass(frozen=True)
class Appended:
    """What happened to one event: its stream id, and whether it was a duplicate
    (then `stream_id` is where the first copy was stored)."""

    event_id: str
    stream_id: str
    duplicate: bool


@dataclass(frozen=True)
class AppendResult:
    events: list[Appended]
    # Replicas that acknowledged the writes (WAIT); None when not asked for.
    replicas: int | None = None

    @property
    def accepted(self) -> list[Appended]:
        return [e for e in self.events if not e.duplicate]

    @property
    def duplicates(self) -> list[Appended]:
        return [e for e in self.events if e.duplicate]


def dedupe_key(source: CompiledSource, event: CloudEvent) -> str:
    """The dedupe key of (event.source, event.id); hashed to bound its length."""
    digest = hashlib.sha256(f"{event.source}\0{event.id}".encode()).hexdigest()[:32]
    return keys.dedupe(source.namespace, source.name, digest)


def dedupe_window(source: CompiledSource) -> float:
    return source.ingest.dedupe_window if source.ingest is not None else DEFAULT_DEDUPE_WINDOW


async def append(
    redis: Redis,
    source: CompiledSource,
    events: Sequence[CloudEvent],
    *,
    wait_replicas: int = 0,
    wait_timeout: float = 1.0,
) -> AppendResult:
    """Store `events` in the source's stream, each at most once per dedupe window.

    Returns once Redis has them (and, with `wait_replicas`, after WAIT returned;
    compare `result.replicas`). Raises redis errors as they come: the caller
    must not report success then.
    """
    if not events:
        return AppendResult(events=[])
    if wait_replicas > 0 and isinstance(redis, RedisCluster):
        raise ValueError(CLUSTER_WAIT)
    window_ms = str(max(1, round(dedupe_window(source) * 1000)))
    now_ms = int(time.time() * 1000)
    index = keys.event_index(source.namespace, source.name)
    calls: list[tuple[list[str], list[str]]] = []
    for start in range(0, len(events), CHUNK):
        chunk = events[start : start + CHUNK]
        call_keys = [source.stream, index]
        args = [window_ms]
        for event in chunk:
            fields = encode(event, now_ms)
            call_keys.append(dedupe_key(source, event))
            args += (
                fields[keys.FIELD_EVENT],
                fields[keys.FIELD_TIME],
                event.id,
                fields.get(keys.FIELD_DUE, ""),
            )
        calls.append((call_keys, args))
    replies = await _run(redis, calls, wait_replicas, wait_timeout)
    replicas: int | None = None
    if wait_replicas > 0:
        replicas = int(replies.pop())
    results: list[Appended] = []
    ids = (text(stream_id) for reply in replies for stream_id in reply)
    for event, stream_id in zip(events, ids, strict=True):
        if stream_id[0] == "=":
            results.append(Appended(event.id, stream_id[1:], True))
        else:
            results.append(Appended(event.id, stream_id, False))
    return AppendResult(events=results, replicas=replicas)


async def _run(
    redis: Redis, calls: list[tuple[list[str], list[str]]], wait_replicas: int, wait_timeout: float
) -> list[Any]:
    """EVALSHA each call in one round trip (redis-py's Script objects would add a
    SCRIPT EXISTS round trip per pipeline); load the script on NOSCRIPT."""
    for _ in range(2):
        try:
            if isinstance(redis, RedisCluster):
                # A cluster pipeline refuses EVALSHA: one call per chunk, in order.
                return [await scripts.APPEND(redis, *call) for call in calls]
            if len(calls) == 1 and wait_replicas <= 0:
                return [await scripts.APPEND(redis, *calls[0])]
            async with redis.pipeline(transaction=False) as pipe:
                for call in calls:
                    scripts.APPEND.queue(pipe, *call)
                if wait_replicas > 0:
                    pipe.wait(wait_replicas, max(1, round(wait_timeout * 1000)))
                replies: list[Any] = await pipe.execute()
                return replies
        except NoScriptError:
            # A restarted or new Redis: load the script, then run again. Events a
            # call did store before the error come back as duplicates the second time.
            await scripts.APPEND.load(redis)
    raise NoScriptError("the append script could not be loaded")


class _Gathering:
    """Events of several requests waiting to go to one source's stream together."""

    __slots__ = ("deadline", "events", "source", "stored")

    def __init__(self, source: CompiledSource, timeout: float | None) -> None:
        self.source = source
        self.events: list[CloudEvent] = []
        loop = asyncio.get_running_loop()
        self.stored: asyncio.Future[AppendResult] = loop.create_future()
        # Its first caller's deadline, the earliest of its callers': the call must end
        # by then, so every caller is answered within `timeout` of its own start.
        self.deadline = None if timeout is None else loop.time() + timeout


class Coalescer:
    """`append` for many concurrent callers (ingest's requests): while one append
    to a source is on its way to Redis, the events other callers bring for that
    source gather, and go together in the next script call as soon as it returns
    (group commit; nothing waits for a timer, and a caller alone goes at once).

    Each caller still returns only once Redis stored its events (and WAIT
    returned), with its own part of the result; a Redis error reaches every
    caller of that call. Events of one call are deduped in order, so two
    callers sending one id in the same gathering get one accepted, one duplicate.

    Requests of more than GATHER_EVENTS_MAX events go on their own, and a gathering
    holds at most CHUNK events (one script call); a request that does not fit goes
    on its own too.

    `timeout` bounds every caller from its own call: a call on its own has that
    deadline, and a gathered call ends by the deadline of its first caller (TimeoutError
    to all of its callers). One timer per script call, not one per request: a timer
    costs ~4 µs, a few percent of a single-event request. A caller does not join a
    gathering with less than half of `timeout` left (the call before it is slow): it
    goes on its own, with its whole time.

    Why: one script call costs the client far more than one event in it
    (redis-py's command path, the round trip) and Redis a fixed ~10 µs; gathered,
    single-event requests cost about what a batch does per event
    (docs/benchmarks.md, "Ingest").
    """

    def __init__(
        self,
        redis: Redis,
        *,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        timeout: float | None = None,
    ) -> None:
        self.redis = redis
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        # A gathered call's deadline (TimeoutError to its callers): nobody else
        # bounds it, and a call that never returns would hold the source's next ones.
        self.timeout = timeout
        self._busy: set[str] = set()  # sources with an append on its way
        self._gathering: dict[str, _Gathering] = {}

    async def append(self, source: CompiledSource, events: Sequence[CloudEvent]) -> AppendResult:
        key = source.id
        if len(events) > GATHER_EVENTS_MAX:
            # A batch pays its call off alone; gathered, it would only wait for others.
            return await self._alone(source, events)
        if key not in self._busy:
            self._busy.add(key)
            try:
                return await self._alone(source, events)
            finally:
                self._next(key)
        gathering = self._gathering.get(key)
        if gathering is not None and len(gathering.events) + len(events) > CHUNK:
            return await self._alone(source, events)  # a full gathering goes as it is
        if gathering is not None and self._late(gathering):
            # The call before it is slow: what joins now would get less than half its
            # own time (the gathering ends by its first caller's deadline).
            return await self._alone(source, events)
        if gathering is None or gathering.source is not source:
            if gathering is not None:
                # The table changed the source (window, stream) meanwhile: the
                # events gathered so far go apart from these.
                self._start(key, gathering)
            gathering = self._gathering[key] = _Gathering(source, self.timeout)
        start = len(gathering.events)
        gathering.events.extend(events)
        # shield: a caller that gives up (its timeout) must not cancel the others'.
        result = await asyncio.shield(gathering.stored)
        part = result.events[start : start + len(events)]
        return AppendResult(events=part, replicas=result.replicas)

    def _late(self, gathering: _Gathering) -> bool:
        if gathering.deadline is None or self.timeout is None:
            return False
        return gathering.deadline - asyncio.get_running_loop().time() < self.timeout / 2

    async def _alone(self, source: CompiledSource, events: Sequence[CloudEvent]) -> AppendResult:
        async with asyncio.timeout(self.timeout):
            return await self._append(source, events)

    async def _append(self, source: CompiledSource, events: Sequence[CloudEvent]) -> AppendResult:
        return await append(
            self.redis,
            source,
            events,
            wait_replicas=self.wait_replicas,
            wait_timeout=self.wait_timeout,
        )

    def _next(self, key: str) -> None:
        """The append for `key` returned: send what gathered meanwhile, if anything."""
        gathering = self._gathering.pop(key, None)
        if gathering is None:
            self._busy.discard(key)
        else:
            self._start(key, gathering)

    def _start(self, key: str, gathering: _Gathering) -> None:
        task = asyncio.get_running_loop().create_task(self._send(key, gathering))
        _SENDING.add(task)
        task.add_done_callback(_SENDING.discard)

    async def _send(self, key: str, gathering: _Gathering) -> None:
        stored = gathering.stored
        try:
            async with asyncio.timeout_at(gathering.deadline):
                result = await self._append(gathering.source, gathering.events)
        except asyncio.CancelledError:
            stored.cancel()  # the loop is closing
            raise
        except Exception as error:  # every caller of this call hears of it
            stored.set_exception(error)
            stored.exception()  # callers that timed out do not read it: mark it read
        else:
            stored.set_result(result)
        finally:
            self._next(key)


# Sending tasks, held so the loop does not lose them while they run.
_SENDING: set[asyncio.Task[None]] = set()
