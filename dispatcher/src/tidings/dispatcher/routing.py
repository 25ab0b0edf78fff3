"""Keeps an in-memory copy of the routing table current.

Change notifications (pub/sub) make updates visible within milliseconds; a
periodic full re-read is the safety net for a missed message (pub/sub is
fire-and-forget, e.g. across a Redis restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.api import keys, table
from tidings.api.table import RoutingTable
from tidings.api.text import text

log = logging.getLogger(__name__)

Listener = Callable[[RoutingTable], Awaitable[None]]
WakeListener = Callable[[str], None]


class TableWatcher:
    def __init__(self, redis: Redis, *, resync_interval: float = 10.0) -> None:
        self.redis = redis
        self.resync_interval = resync_interval
        self.current = RoutingTable()
        self.loaded = asyncio.Event()
        self._listeners: list[Listener] = []
        self._wake_listeners: list[WakeListener] = []
        self._resubscribe_listeners: list[Callable[[], None]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Checked between messages and rounds: a cancel swallowed inside redis-py
        # (below) must not keep a task going while changes keep arriving.
        self._stopping = False

    def on_change(self, listener: Listener) -> None:
        """Call `listener(table)` after every load that changed the version."""
        self._listeners.append(listener)

    def on_wake(self, listener: WakeListener) -> None:
        """Call `listener(trigger id)` for each keys.TRIGGER_WAKE message."""
        self._wake_listeners.append(listener)

    def on_resubscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener()` whenever the subscription is made again after a loss:
        wake messages published meanwhile were missed."""
        self._resubscribe_listeners.append(listener)

    async def start(self) -> None:
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._subscribe(), name="routing-subscribe"),
            asyncio.create_task(self._resync(), name="routing-resync"),
        ]

    async def stop(self) -> None:
        # Cancel until done: on Python 3.11 a cancel landing inside redis-py's own
        # wait_for (pub/sub reads) can be swallowed, leaving the task running.
        self._stopping = True
        pending = {task for task in self._tasks if not task.done()}
        for _ in range(20):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        for task in self._tasks:
            if task.done() and not task.cancelled():
                with contextlib.suppress(asyncio.CancelledError):
                    task.exception()
        if pending:
            log.warning("routing table watcher: %d task(s) ignored cancellation", len(pending))

    async def refresh(self) -> None:
        loaded = await table.load(self.redis)
        changed = loaded.version != self.current.version or not self.loaded.is_set()
        self.current = loaded
        self.loaded.set()
        for entry, error in loaded.rejected.items():
            log.error("routing table entry %s rejected: %s", entry, error)
        if changed:
            for listener in self._listeners:
                await listener(loaded)

    async def _subscribe(self) -> None:
        lost = False
        while not self._stopping:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.TABLE_CHANGED, keys.TRIGGER_WAKE)
                    # Catch up on anything published before the subscription was live.
                    await self.refresh()
                    if lost:
                        lost = False
                        for listener in self._resubscribe_listeners:
                            listener()
                    async for message in pubsub.listen():
                        if self._stopping:
                            return
                        if message.get("type") != "message":
                            continue
                        if text(message.get("channel")) == keys.TRIGGER_WAKE:
                            for wake in self._wake_listeners:
                                wake(text(message.get("data")))
                        elif self._newer(text(message.get("data"))):
                            await self.refresh()
            except (RedisError, OSError) as error:
                lost = True
                log.warning("routing table subscription lost (%s); retrying in 1s", error)
                await asyncio.sleep(1)

    def _newer(self, announced: str) -> bool:
        """Whether a change notification (its data: the new version) is news: one
        reload reads every change before it, so a burst of 10,000 (a bulk apply)
        costs a few reloads, not 10,000 of the whole table."""
        try:
            return int(announced) > self.current.version
        except ValueError:
            return True

    async def _resync(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.resync_interval)
            try:
                # The version is bumped by every change: reading the whole table (10 MB
                # and 10,000 parses at 10,000 Triggers) only when it moved. A Redis
                # restart drops the subscription, and resubscribing reloads in full.
                version = await self.redis.get(keys.TABLE_VERSION)
                if self.loaded.is_set() and int(version or 0) == self.current.version:
                    continue
                await self.refresh()
            except (RedisError, OSError) as error:
                log.warning("routing table resync failed: %s", error)
