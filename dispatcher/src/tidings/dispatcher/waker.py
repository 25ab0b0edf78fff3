"""One blocking reader for all the idle Triggers of a dispatcher process.

A Trigger with nothing to fetch waits until its stream grows past the newest id
it saw, a retry comes due, or something else wakes it. It used to run a blocking
XREAD of its own: one Redis connection per idle Trigger, 10,000 of them at
10,000 Triggers. Now it registers here what it waits for, and the waker blocks
for everyone: one XREAD over up to CHUNK streams (on Redis Cluster, over the
streams of one hash slot, as a command's keys must share one), and wakes the
Triggers of the streams that grew. Connections: one per chunk of streams being
waited on (per slot on a cluster), plus one for streams that start being waited
on while the others block.

Streams woken in the last HOT_SECONDS wait in reads of their own: a busy stream's
Trigger waits for a moment between batches, and in the read of the idle streams
it would end that read at its next entry, which then sends all of them again
(bench_routes: 182 reads of ~1,000 streams in 2.6 s of traffic on 100 routes).

A blocking XREAD is never cancelled (that would drop its connection, and Redis
Cluster clients finish the command anyway); one that covers streams nobody
waits for any more simply runs out its block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from tidings.api.text import text

log = logging.getLogger(__name__)

CHUNK = 1000  # streams per XREAD
BLOCK_MS = 1000  # how long one XREAD blocks
HOT_SECONDS = 10.0  # a stream woken this recently waits apart from the idle ones


def _id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


class Waiter:
    """One Trigger waiting: its stream, the newest id it saw, and what to set."""

    __slots__ = ("event", "last_id", "stream")

    def __init__(self, stream: str, last_id: str, event: asyncio.Event) -> None:
        self.stream = stream
        self.last_id = last_id
        self.event = event


class StreamWaker:
    def __init__(self, redis: Redis | RedisCluster, *, block_ms: int = BLOCK_MS) -> None:
        self.redis = redis
        self.block_ms = block_ms
        self.waiting: dict[str, set[Waiter]] = {}
        self._covered: dict[str, int] = {}  # stream -> readers blocking on it now
        # Streams waited for with no reader: kept as they change, so that starting
        # a reader does not look at every idle stream (10,000 of them) each time.
        self._uncovered: set[str] = set()
        self._woken: dict[str, float] = {}  # stream -> when a read last found entries
        self._pruned = 0.0  # when _woken last dropped what is no longer hot
        self._readers: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream waker")

    async def stop(self) -> None:
        tasks = {t for t in (self._task, *self._readers) if t is not None}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await task

    @contextlib.contextmanager
    def waiting_for(self, stream: str, last_id: str, event: asyncio.Event) -> Iterator[None]:
        """While inside: `event` is set once `stream` has an entry after `last_id`."""
        waiter = Waiter(stream, last_id, event)
        self.waiting.setdefault(stream, set()).add(waiter)
        if stream not in self._covered:
            self._uncovered.add(stream)
            self._changed.set()
        try:
            yield
        finally:
            waiters = self.waiting.get(stream)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self.waiting[stream]
                    self._uncovered.discard(stream)

    async def _run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            now = asyncio.get_running_loop().time()
            if now - self._pruned >= HOT_SECONDS:
                self._woken = {s: t for s, t in self._woken.items() if now - t < HOT_SECONDS}
                self._pruned = now
            hot: list[str] = []
            idle: list[str] = []
            for stream in self._uncovered:
                woken = self._woken.get(stream)
                if woken is not None and now - woken < HOT_SECONDS:
                    hot.append(stream)
                else:
                    idle.append(stream)
            self._uncovered = set()
            for group in (*self._groups(hot), *self._groups(idle)):
                self._start_reader(group)

    def _groups(self, streams: list[str]) -> list[list[str]]:
        if isinstance(self.redis, RedisCluster):
            by_slot: dict[int, list[str]] = {}
            for stream in streams:
                by_slot.setdefault(self.redis.keyslot(stream), []).append(stream)
            groups = list(by_slot.values())
        else:
            groups = [streams]
        return [g[i : i + CHUNK] for g in groups for i in range(0, len(g), CHUNK)]

    def _start_reader(self, streams: list[str]) -> None:
        for stream in streams:
            self._covered[stream] = self._covered.get(stream, 0) + 1
        task = asyncio.create_task(self._read(streams), name="stream waker read")
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    async def _read(self, streams: list[str]) -> None:
        try:
            # From the oldest id any waiter of the stream saw: everyone newer is woken too.
            ids: dict[Any, Any] = {}
            for stream in streams:
                waiters = self.waiting.get(stream)
                if waiters:
                    ids[stream] = min((w.last_id for w in waiters), key=_id)
            if not ids:
                return
            try:
                reply: Any = await self.redis.xread(ids, count=1, block=self.block_ms)
            except (RedisError, OSError) as error:
                # Idle waiters may wait long: wake them all to look for themselves
                # (their fetch fails and retries too, until Redis answers).
                log.debug("waiting for %d streams failed: %s", len(ids), error)
                await asyncio.sleep(min(1.0, self.block_ms / 1000))
                reply = [(stream, []) for stream in ids]
            now = asyncio.get_running_loop().time()
            for stream, entries in _streams(reply):
                if entries:
                    self._woken[stream] = now
                for waiter in self.waiting.get(stream, ()):
                    waiter.event.set()
        finally:
            # Streams still waited for need a reader again.
            for stream in streams:
                left = self._covered.get(stream, 0) - 1
                if left > 0:
                    self._covered[stream] = left
                else:
                    self._covered.pop(stream, None)
                    if stream in self.waiting:
                        self._uncovered.add(stream)
            if self._uncovered:
                self._changed.set()


def _streams(reply: Any) -> list[tuple[str, Any]]:
    """XREAD's reply as (stream, entries): a list in RESP2, a dict in RESP3."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(text(k), v) for k, v in reply.items()]
    return [(text(item[0]), item[1]) for item in reply]
