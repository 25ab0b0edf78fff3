"""What every controller shares: settings, clients, the seal, wake-ups; and the
part of a controller that is the same for every kind (`ObjectController`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic

from redis.asyncio import Redis

from tidings.api.destinations import CLUSTER, DestinationPolicy
from tidings.operator.adapters import AdapterSettings
from tidings.operator.health import Transition
from tidings.operator.kube import Kube, StatusWriter
from tidings.operator.pacing import BulkCreates
from tidings.operator.publishing import StableSealer
from tidings.operator.status import Status
from tidings.operator.world import IndexWorld, Key, Wakeups


class ObjectLog(logging.LoggerAdapter[logging.Logger]):
    """Log lines about one object: prefixed with "[ns/name]", and with an
    `object` field in JSON logs."""

    def __init__(self, logger: logging.Logger, kind: str, namespace: str, name: str) -> None:
        super().__init__(logger, {"object": f"{kind}/{namespace}/{name}"})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return f"[{(self.extra or {})['object']}] {msg}", kwargs


@dataclass(frozen=True)
class Settings:
    """The operator's flags, as the controllers need them."""

    adapters: AdapterSettings
    ingest_service: str = "tidings-ingest"
    ingest_namespace: str = "tidings"
    # How often a Trigger's delivery report is read from Redis; at rest (Delivering,
    # nothing waiting, as the last look found it) only every health_rest_interval:
    # dispatchers announce what status would show differently (keys.REPORT_NEWS).
    health_interval: float = 5.0
    health_rest_interval: float = 60.0
    # A report older than this is shown as stale (Delivering=Unknown).
    stale_after: float = 120.0
    # Every object is fully re-reconciled this often even without events: the
    # safety net for a routing table lost with its Redis.
    resync_interval: float = 300.0
    # After a Redis or API error, wait this long before trying again, doubling
    # up to retry_max while the errors go on (a thousand controllers must not
    # hammer a Redis that is down).
    retry_delay: float = 1.0
    retry_max: float = 30.0
    # A deleted Postgres EventSource: attempts at dropping its slot before giving up.
    cleanup_attempts: int = 10
    # How often the operator reads a Postgres slot's retained WAL itself while the
    # adapter is not running.
    wal_check_interval: float = 60.0
    # Where Triggers may deliver (checked when compiling: DestinationNotAllowed).
    destinations: DestinationPolicy = CLUSTER

    def retry_after(self, failures: int) -> float:
        delay: float = min(self.retry_delay * 2.0 ** max(0, failures - 1), self.retry_max)
        return delay * random.uniform(0.8, 1.2)


class CleanupPending(Exception):
    """A deleted object's data-plane cleanup has not finished; the new object of
    the same name must wait for it (the loop retries the round)."""


# How long a round waits for a predecessor's cleanup before it is retried later.
CLEANUP_WAIT = 5.0


@dataclass
class Context:
    settings: Settings
    redis: Redis
    kube: Kube
    sealer: StableSealer
    wakeups: Wakeups = field(default_factory=Wakeups)
    # New Triggers and EventSources as they arrive: status writes yield to a
    # mass apply (tidings.operator.pacing).
    creates: BulkCreates = field(default_factory=BulkCreates)
    # Controllers running now, by key, so deletion waits for its daemon to stop.
    _running: dict[Key, asyncio.Event] = field(default_factory=dict)
    # The last DSN each Postgres EventSource was reconciled with, by (namespace,
    # name): deleting a namespace may delete the Secret before the EventSource's
    # finalizer runs, and the slot must still be dropped.
    dsns: dict[tuple[str, str], str] = field(default_factory=dict)
    _background: set[asyncio.Task[Any]] = field(default_factory=set)
    # Cleanups of deleted objects still running, by key: an object created again
    # under the same name publishes only after its predecessor's state is gone.
    _cleanups: dict[Key, asyncio.Task[None]] = field(default_factory=dict)
    # A Trigger found gone without its deletion event (key, its last body):
    # taken off the queue and cleaned up (tidings.operator.handlers.TriggerEvents).
    vanished: Callable[[Key, Mapping[str, Any]], None] = lambda key, body: None
    # Run a round of a controller now (tidings.operator.loop.WorkQueue.hurry).
    hurry: Callable[[Key], None] = lambda key: None

    @contextlib.contextmanager
    def running(self, key: Key) -> Iterator[None]:
        done = asyncio.Event()
        self._running[key] = done
        try:
            yield
        finally:
            done.set()
            if self._running.get(key) is done:
                del self._running[key]

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        """Run `work` in the background, holding a reference until it is done."""
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def clean_up(
        self, key: Key, work: Callable[[], Coroutine[Any, Any, None]]
    ) -> asyncio.Task[None]:
        """Run a deleted object's cleanup (`work()`) in the background, known by
        `key` until it ends (a second deletion of the key waits for the first)."""
        before = self._cleanups.get(key)

        async def in_turn() -> None:
            if before is not None:
                await asyncio.wait({before})
            await work()

        task = asyncio.create_task(in_turn(), name=f"clean up {'/'.join(key)}")
        self._cleanups[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._cleanups.get(key) is done:
                del self._cleanups[key]

        task.add_done_callback(forget)
        return task

    def cancel_background(self) -> None:
        """The operator is exiting: cancel cleanups and sweeps (Kopf would wait 5 s
        for them). A cleanup left undone is the orphan collector's next time."""
        for task in [*self._background, *self._cleanups.values()]:
            task.cancel()

    async def cleaned_up(self, key: Key, limit: float = CLEANUP_WAIT) -> None:
        """Return once no cleanup of `key` runs; raise CleanupPending if one
        still does after `limit` seconds."""
        task = self._cleanups.get(key)
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=limit)
        if not done:
            raise CleanupPending(f"{'/'.join(key)}: the deleted predecessor is still being removed")

    async def stopped(self, key: Key, limit: float = 10.0) -> None:
        """Wait (at most `limit` seconds) until the controller of `key`, if any, has exited."""
        done = self._running.get(key)
        if done is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), limit)


@dataclass(eq=False)
class ObjectController(Generic[Status]):
    """One object's controller, as tidings.operator.loop drives it: its live body,
    key, log and status writer. Subclasses name their kind."""

    KIND: ClassVar[str]  # Trigger | EventSource
    PLURAL: ClassVar[str]
    STATUS: ClassVar[type[Any]]  # the status model (tidings.api.types)
    CONDITIONS: ClassVar[tuple[str, ...]]  # the condition types this operator owns

    ctx: Context
    # The newest object seen: Kopf's live view (a daemon's), or replaced by each
    # watch event (a Trigger's, tidings.operator.handlers.TriggerEvents).
    body: Mapping[str, Any]
    world: IndexWorld
    post_event: Callable[[Transition], None] = field(kw_only=True)

    def __post_init__(self) -> None:
        meta = self.body["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.key: Key = (self.KIND, self.namespace, self.name)
        self.log = ObjectLog(logging.getLogger(type(self).__module__), *self.key)
        self.writer: StatusWriter[Status] = StatusWriter(
            self.ctx.kube,
            self.key,
            model=self.STATUS,
            plural=self.PLURAL,
            types=self.CONDITIONS,
            wake=lambda: self.ctx.hurry(self.key),
        )

    def generation(self) -> int:
        return int(self.body["metadata"].get("generation") or 0)

    def retired(self) -> None:
        self.writer.close()
