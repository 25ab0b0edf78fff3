"""The Dispatcher: one worker per Trigger, reading its consumer group and delivering.

A worker's loop, per round trip (cursor.py does the Redis side in one script):
fetch what may start now (due retries, entries reclaimed from a dead consumer,
new entries; bounded by local capacity and the cluster-wide limits), start a
delivery task for each, and go again. Finished deliveries pile up and one
flusher settles them in a single script call (XACK, retries, dead letters,
leases), so acknowledgements are batched without any delivery waiting for
another. Nothing is read that cannot start at once, so the idle time of a
pending entry is the time its attempt takes, and reclaiming entries idle for
longer than the Trigger's timeout plus RECLAIM_MARGIN never steals a live one.

Routes come and go with the routing table (TableWatcher.on_change):

- a new Trigger's consumer group is created where its startFrom says
  (tidings.api.groups; `$` by default: the events appended from its creation on);
- a changed route is swapped in place (its filter recompiled once);
- a paused route stops pulling and keeps its cursor (the group stays);
- a removed route's worker drains and stops; its group and keys are left for
  the operator to delete with the Trigger.

`stop(grace)` drains: no new fetches, in-flight deliveries get up to `grace`
seconds, their outcomes are settled; whatever is still running after that stays
pending in Redis and is reclaimed by another dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from aiohttp.abc import AbstractResolver
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from tidings.api import groups, heartbeat, keys, tracing
from tidings.api.attempts import Attempt, AttemptOutcome, clip_body
from tidings.api.destinations import CLUSTER, DestinationPolicy
from tidings.api.events import now_rfc3339
from tidings.api.process import event_fields
from tidings.api.routes import CompiledTLS, Route
from tidings.api.sealing import OpenedSecrets, Sealer, SealError
from tidings.api.table import RoutingTable
from tidings.api.text import text
from tidings.api.tls import TLSConfigError, client_context
from tidings.dispatcher import deadletter, retention
from tidings.dispatcher.backoff_state import (
    FILTER_SPAN,
    BackoffState,
    Published,
    news_for_status,
)
from tidings.dispatcher.cursor import (
    Cursor,
    Entry,
    FailureNote,
    Fetched,
    FetchStatus,
    Op,
    Origin,
    Outcome,
)
from tidings.dispatcher.delivery import (
    Request,
    Result,
    build_request,
    refused,
    send,
    signing_key,
    unsendable,
)
from tidings.dispatcher.filtering import Filter, FilterCounts, FilterFailed
from tidings.dispatcher.guard import Guard
from tidings.dispatcher.http_post import Client, RequestError
from tidings.dispatcher.metrics import DispatchMetrics, TriggerMetrics
from tidings.dispatcher.replays import Replays
from tidings.dispatcher.retry import Failure, decide, is_retryable
from tidings.dispatcher.routing import TableWatcher
from tidings.dispatcher.waker import StreamWaker

log = logging.getLogger(__name__)

# Added to a Trigger's timeout before its pending entries count as abandoned.
RECLAIM_MARGIN = 5.0
# How often each worker looks for abandoned entries (XAUTOCLAIM).
RECLAIM_EVERY = 1.0
# Consumers holding nothing, idle this long, are removed from the group.
CONSUMER_IDLE_FORGET = 3600.0
CONSUMER_CLEANUP_EVERY = 300.0
# How long finished deliveries wait to be settled together.
FLUSH_DELAY = 0.001
# How long an idle worker waits before looking again. While entries of its group
# are leased to any consumer: IDLE_BLOCK (they may be a dead replica's, to reclaim
# in time). Otherwise it is at rest until woken, and nothing it must see needs a
# look: new entries wake it (the waker); retries are in the shared retry ZSET,
# whose next due time every look returns (a retry in flight is scheduled there at
# its lease's end), and it wakes then; retries another process makes due are
# announced (keys.TRIGGER_WAKE), and every worker looks when that subscription is
# made again, as messages may have been missed meanwhile. IDLE_REST (spread by
# ±REST_JITTER) is a safety net only, cheap at 10,000 Triggers.
IDLE_BLOCK = 1.0
IDLE_REST = 300.0
REST_JITTER = 0.2
# A quiet Trigger (nothing delivered or settled here, its state unchanged) that is
# not at rest (events waiting, paused, in Backoff, its filter failing lately) has
# its state published this often instead of every publish interval; one at rest
# is not published at all while quiet: the process's heartbeat (tidings.api.heartbeat)
# tells the operator its state is current. The operator calls a state stale after
# 120 s (TIDINGS_STALE_AFTER).
QUIET_PUBLISH = 15.0
# A source whose oldest entry is young and whose Triggers are at rest and fetched
# nothing since its last trim has nothing to trim: its retention pass waits, up to
# this long (new entries of a source no Trigger reads count toward maxEvents unseen).
RETENTION_IDLE_EVERY = 300.0
# Workers setting up their consumer group at once, at most: 10,000 starting
# together queued on the connection pool past its wait and failed, over and over.
STARTING_AT_ONCE = 32

# Called after every attempt: (route, event, result, op) where op is what
# happened to the event. `tidings dev` prints from it.
AttemptHook = Callable[[Route, dict[str, Any], Result, Op], None]


async def cancel(tasks: set[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait for them. On Python 3.11 a cancel that lands inside
    redis-py's own timeout handling can be swallowed, so cancel until they end."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    await asyncio.gather(*tasks, return_exceptions=True)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Verdict(StrEnum):
    """What became of an entry this time; its metric and Backoff bookkeeping follow."""

    DELIVERED = "delivered"  # the subscriber answered 2xx
    FILTERED = "filtered"  # the Trigger's filter dropped it
    RETRIED = "retried"  # the attempt failed; another is scheduled
    DEAD_ANSWERED = "dead_answered"  # the subscriber refused it (a status not in retryOn)
    DEAD_FAILED = "dead_failed"  # failed, and no attempt or time is left for another
    EXPIRED = "expired"  # dead-lettered unsent: maxAge passed before delivery
    UNREADABLE = "unreadable"  # dead-lettered unsent: the stored entry is no CloudEvent
    FILTER_FAILED = "filter_failed"  # dead-lettered unsent: the filter expression failed on it


# The subscriber answered (it is up), or it did not (it counts toward Backoff).
ANSWERED = frozenset({Verdict.DELIVERED, Verdict.DEAD_ANSWERED})
FAILED = frozenset({Verdict.RETRIED, Verdict.DEAD_FAILED})
DEAD_LETTERED = frozenset(
    {Verdict.DEAD_ANSWERED, Verdict.DEAD_FAILED, Verdict.EXPIRED, Verdict.FILTER_FAILED}
)


# The attempt log's outcome of each verdict (a filtered-out event made no attempt).
LOGGED: dict[Verdict, AttemptOutcome] = {
    Verdict.DELIVERED: AttemptOutcome.DELIVERED,
    Verdict.RETRIED: AttemptOutcome.RETRY,
    Verdict.DEAD_ANSWERED: AttemptOutcome.REFUSED,
    Verdict.DEAD_FAILED: AttemptOutcome.DEAD,
    Verdict.EXPIRED: AttemptOutcome.EXPIRED,
    Verdict.UNREADABLE: AttemptOutcome.DEAD,
    Verdict.FILTER_FAILED: AttemptOutcome.DEAD,
}


@dataclass(slots=True)
class Done:
    """A finished delivery task, waiting for the flusher."""

    outcome: Outcome
    verdict: Verdict
    failure: Failure | None = None
    event: dict[str, Any] | None = None
    result: Result | None = None  # the HTTP attempt, when one was made
    ended: float = 0.0  # when the attempt ended (time.time())


def replica_name() -> str:
    """The pod's name where the downward API gives it, else the host's (the attempt
    log's `replica`)."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def attempt_record(done: Done, replica: str) -> Attempt | None:
    """What the attempt log keeps of `done`; None for an event filtered out."""
    outcome = LOGGED.get(done.verdict)
    if outcome is None:
        return None
    entry = done.outcome.entry
    event = done.event or {}
    result = done.result
    ended = done.ended or time.time()
    # A dead letter's message says why it was given up (and the last error).
    if done.outcome.op is Op.DEAD:
        error = done.outcome.message
    else:
        error = done.failure.message if done.failure is not None else ""
    return Attempt(
        event_id=str(event.get("id", "")),
        type=str(event.get("type", "")),
        stream_id=entry.id,
        attempt=entry.attempts + 1,
        outcome=outcome,
        status=str(result.status) if result is not None and result.status is not None else "",
        duration_ms=int(result.seconds * 1000) if result is not None else 0,
        error=error,
        body=clip_body(result.body) if result is not None else "",
        replica=replica,
        latency_ms=max(0, int(ended * 1000) - entry.due_ms(0)) if entry.stored_ms else 0,
    )


@dataclass(slots=True)
class Tally:
    """A settled batch, counted: for the settle script and the metrics."""

    delivered: int = 0
    filtered: int = 0
    retried: int = 0
    dead_lettered: int = 0  # given up on after trying, or past maxAge
    unreadable: int = 0  # dead-lettered too, but never deliverable: counted apart
    answered: int = 0
    failed: int = 0
    ordered: int = 0  # outcomes of events with an ordering key: they may release it
    last_failure: Failure | None = None


def tally(batch: list[Done]) -> Tally:
    counts = Tally()
    for done in batch:
        verdict = done.verdict
        if done.outcome.entry.order_key:
            counts.ordered += 1
        if verdict in ANSWERED:
            counts.answered += 1
        elif verdict in FAILED:
            counts.failed += 1
            counts.last_failure = done.failure
        if verdict in DEAD_LETTERED:
            counts.dead_lettered += 1
        elif verdict is Verdict.UNREADABLE:
            counts.unreadable += 1
        elif verdict is Verdict.DELIVERED:
            counts.delivered += 1
        elif verdict is Verdict.FILTERED:
            counts.filtered += 1
        else:
            counts.retried += 1
    return counts


def stored_event(entry: Entry) -> dict[str, Any] | Done:
    """The entry's CloudEvent; or, when what is stored is not a CloudEvent object,
    its outcome: dead-lettered as unreadable (no attempt can ever deliver it)."""
    try:
        event = json.loads(entry.event_json)
        if not isinstance(event, dict) or "id" not in event:
            raise ValueError("not a CloudEvent object")
    except ValueError as error:
        message = f"stored event is unreadable: {error}"
        outcome = Outcome(Op.DEAD, entry, attempts=entry.attempts, message=message)
        return Done(outcome, Verdict.UNREADABLE)
    return event


def routes_by_source(table: RoutingTable) -> dict[str, list[Route]]:
    """The table's routes by source id, each list in id order (one pass over the
    routes; `RoutingTable.routes_of` scans them all for every source)."""
    index: dict[str, list[Route]] = {}
    for route in sorted(table.routes.values(), key=lambda r: r.id):
        index.setdefault(keys.source_id(route.namespace, route.source), []).append(route)
    return index


def changed_sources(
    old: RoutingTable,
    old_routes: dict[str, list[Route]],
    new: RoutingTable,
    new_routes: dict[str, list[Route]],
) -> set[str]:
    """The sources whose entry or Triggers differ between two tables."""
    return {
        source_id
        for source_id in old.sources.keys() | new.sources.keys()
        if old.sources.get(source_id) != new.sources.get(source_id)
        or old_routes.get(source_id, []) != new_routes.get(source_id, [])
    }


class TriggerWorker:
    def __init__(self, dispatcher: Dispatcher, route: Route) -> None:
        self.dispatcher = dispatcher
        self.redis = dispatcher.redis
        self.cursor = Cursor(self.redis, route, dispatcher.consumer)
        self.backoff = BackoffState(self.redis, route)
        self.metrics: TriggerMetrics | None = (
            dispatcher.metrics.of(route.id) if dispatcher.metrics else None
        )
        self.in_flight: set[asyncio.Task[None]] = set()
        self.done: list[Done] = []
        self.stopping = False
        self._wake = asyncio.Event()
        self._flush_wake = asyncio.Event()
        self._filter_spec: Any = None
        # Counts of a replaced filter not yet published: (its route generation, counts).
        self._replaced_counts: tuple[int, FilterCounts] | None = None
        self._task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._config_error: str | None = None
        self._credentials_spec: tuple[dict[str, str], CompiledTLS | None] = ({}, None)
        self._opened_headers: dict[str, str] = {}
        self._opened_tls: ssl.SSLContext | None = None
        # Slow start after Backoff: this replica's in-flight cap, doubled by every
        # batch settled with mostly answers until it reaches local_limit (then None).
        self.ramp: int | None = None
        self.idle_block = IDLE_BLOCK
        # The last look stopped short of what it might have read (no room here, the
        # limits, a full batch): a finished delivery makes room to look again. After
        # an empty look only what wakes it (new entries, a due retry, a released key)
        # can bring something; a finished one of a key that holds the rest cannot.
        self.room_bound = True
        # For publishing a quiet Trigger's state less often (Dispatcher._publish_loop).
        self.active = True  # something was fetched or settled since the last publish
        self.published: Published | None = None
        self.published_at = 0.0  # monotonic
        self.filter_failed_at = -math.inf  # monotonic: the last publish with filter errors
        self.news_owed = False  # news for the operator (keys.REPORT_NEWS) not announced yet
        self.fetched = False  # anything fetched since the last consumer cleanup
        self.update(route)

    # --- configuration ------------------------------------------------------------------

    def update(self, route: Route) -> None:
        self.route = route
        self.source_id = keys.source_id(route.namespace, route.source)
        self.active = True  # publish the changed Trigger's state at once
        self.cursor.update(route)
        self.backoff.update(route)
        self._config_error = None
        if route.filter != self._filter_spec:
            try:
                replaced = getattr(self, "filter", None)
                self.filter = Filter(route.filter)
                self._filter_spec = route.filter
                if replaced is not None:
                    self._keep_replaced_counts(replaced.take_counts())
            except ValueError as error:
                self._config_error = f"filter.expression: {error}"
                log.error("Trigger %s cannot deliver: %s", route.id, self._config_error)
        try:
            self.signing_keys = [
                signing_key(self.dispatcher.unseal(s)) for s in route.delivery.signing_secrets
            ]
        except (SealError, ValueError) as error:
            self.signing_keys = []
            self._config_error = f"signing secrets: {error}"
            log.error("Trigger %s cannot deliver: %s", route.id, self._config_error)
        self._load_credentials(route)
        # The URLs as written, against this process's destination policy (the
        # operator checked them with its own; names are checked again on connect).
        guard = self.dispatcher.guard
        self.refusal = guard.check_url(route.subscriber_url)
        sink = route.delivery.dead_letter_url
        self.sink_refusal = guard.check_url(sink) if sink is not None else None
        self.timeout = route.delivery.timeout
        self.lease_ms = int((route.delivery.timeout + RECLAIM_MARGIN) * 1000)
        self.local_limit = max(1, min(route.delivery.concurrency, self.dispatcher.max_in_flight))
        self.refill = max(1, min(self.dispatcher.batch, self.local_limit) // 2)
        self.generation = route.generation
        self._wake.set()

    def _keep_replaced_counts(self, counts: FilterCounts) -> None:
        if not counts.checked:
            return
        if self._replaced_counts is not None:
            self._replaced_counts[1].checked += counts.checked
            self._replaced_counts[1].failed += counts.failed
        else:
            self._replaced_counts = (self.generation, counts)

    def nudge(self) -> None:
        """Look now."""
        self._wake.set()

    def quiet(self) -> bool:
        """Whether publishing can wait: nothing fetched or settled here since the last
        publish, which changed nothing either, and either the Trigger is at rest or
        that publish was under QUIET_PUBLISH ago. (Idle Triggers then cost no Redis
        call per publish interval.)"""
        published = self.published
        if self.active or published is None:
            return False
        since = time.monotonic()
        # A failing filter's window must roll over in Redis for FilterErrors to clear.
        filter_quiet = since - self.filter_failed_at > 2 * self.dispatcher.filter_span
        if published.at_rest() and filter_quiet:
            return True
        return since - self.published_at < QUIET_PUBLISH

    def show(self, published: Published | None) -> None:
        """The published state as metrics; the ages from now."""
        metrics = self.metrics
        if metrics is None or published is None:
            return
        metrics.lag.set(published.lag)
        metrics.dead_letters.set(published.dlq_size)
        metrics.expired.set(published.expired)
        metrics.set_state(published.state)
        metrics.backlog.set(published.lag + published.pending)
        metrics.delayed.set(published.delayed)
        now = time.time()
        # Not due yet is not late: a Trigger whose events all wait for their delay
        # shows no age, though an unread one may still be lost to retention.
        oldest, expires = published.oldest_ms, published.expires_ms
        metrics.oldest_age.set(max(0.0, now - oldest / 1000) if oldest else 0)
        metrics.time_to_expiry.set(expires / 1000 - now if expires else math.inf)

    async def publish(self, retention_max_age: float) -> Published:
        """Publish the Trigger's state and the filter's counts since the last publish
        (a replaced filter's first, under its own generation); counts that could not
        be published are kept for the next time."""
        active, self.active = self.active, False
        # The operator reads a report with filter errors in its window often: only the
        # first errors after a quiet window are news.
        quiet_for = time.monotonic() - self.filter_failed_at
        filter_was_quiet = quiet_for > 2 * self.dispatcher.filter_span
        try:
            published, filter_failed = await self._publish(retention_max_age)
            if (
                self.news_owed
                or (filter_failed and filter_was_quiet)
                or news_for_status(self.published, published)
            ):
                self.news_owed = True  # until announced: a failed PUBLISH is made again
                await self.redis.publish(keys.REPORT_NEWS, self.route.id)
                self.news_owed = False
        except BaseException:
            self.active = active
            raise
        # A change (lag growing while paused, say) keeps it publishing every interval;
        # the first publish has nothing to compare with (10,000 Triggers starting
        # would all publish twice).
        self.active = self.published is not None and published != self.published
        self.published, self.published_at = published, time.monotonic()
        return published

    async def _publish(self, retention_max_age: float) -> tuple[Published, bool]:
        """The state published, and whether the filter failed on events since the
        last publish."""
        if self._replaced_counts is not None:
            generation, counts = self._replaced_counts
            self._replaced_counts = None
        else:
            generation, counts = self.generation, self.filter.take_counts()
        if counts.failed:
            self.filter_failed_at = time.monotonic()
        try:
            published = await self.backoff.publish(
                retention_max_age,
                counts,
                generation=generation,
                filter_span=self.dispatcher.filter_span,
            )
            return published, bool(counts.failed)
        except BaseException:
            if generation == self.generation:
                self.filter.add_counts(counts)
            else:
                self._keep_replaced_counts(counts)
            raise

    def _load_credentials(self, route: Route) -> None:
        """delivery.auth, headersFrom and tls, unsealed. The values are never
        logged: an error names the part that failed, not what it holds."""
        delivery = route.delivery
        self.headers = dict(delivery.headers)
        self.tls: ssl.SSLContext | None = None
        if (delivery.secret_headers, delivery.tls) == self._credentials_spec:
            self.headers.update(self._opened_headers)
            self.tls = self._opened_tls
            return
        try:
            opened = {
                name: self.dispatcher.unseal(v) for name, v in delivery.secret_headers.items()
            }
            tls = None
            if delivery.tls is not None:
                ca, cert, key = (
                    self.dispatcher.unseal(v) if v else None
                    for v in (delivery.tls.ca, delivery.tls.cert, delivery.tls.key)
                )
                tls = client_context(ca_pem=ca, cert_pem=cert, key_pem=key)
        except (SealError, TLSConfigError) as error:
            self._config_error = f"delivery credentials: {error}"
            log.error("Trigger %s cannot deliver: %s", route.id, self._config_error)
            return
        # A new context means new connections: a rotated client certificate is
        # presented from the next attempt on.
        self._credentials_spec = (delivery.secret_headers, delivery.tls)
        self._opened_headers, self._opened_tls = opened, tls
        self.headers.update(opened)
        self.tls = tls

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"trigger {self.route.id}")
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"flush {self.route.id}")

    async def stop(self, grace: float) -> None:
        """Stop fetching, let in-flight deliveries finish within `grace`, settle them."""
        self.stopping = True
        self._wake.set()
        if self._task is not None:
            # The loop may be in the middle of a Backoff probe, which can take the
            # Trigger's whole timeout: it gets the grace period, then is cancelled
            # (the probed event's retry simply comes due again).
            done, _ = await asyncio.wait({self._task}, timeout=grace)
            if not done:
                await cancel({self._task})
        if self.in_flight:
            _, late = await asyncio.wait(self.in_flight, timeout=grace)
            if late:
                log.warning(
                    "Trigger %s: %d deliveries still running after the %gs grace period; "
                    "they stay pending and another dispatcher will redeliver them",
                    self.route.id,
                    len(late),
                    grace,
                )
                await cancel(late)
        if self._flusher is not None:
            self._flush_wake.set()
            # Bounded: with Redis unreachable the flusher would retry forever; what it
            # could not settle stays pending in Redis and is redelivered by another.
            done, _ = await asyncio.wait({self._flusher}, timeout=grace + 5)
            if not done:
                log.warning("Trigger %s: could not settle the last outcomes", self.route.id)
                await cancel({self._flusher})

    async def forget_idle_consumers(self) -> None:
        """Delete consumers of this group that hold nothing and have been idle for
        CONSUMER_IDLE_FORGET (restarted pods get new names; the old ones would pile up)."""
        for consumer in await self.redis.xinfo_consumers(self.route.stream, self.route.group):
            name = text(consumer["name"])
            idle_ms = int(consumer.get("idle", 0))
            if (
                int(consumer["pending"]) == 0
                and idle_ms > CONSUMER_IDLE_FORGET * 1000
                and name != self.dispatcher.consumer
            ):
                # XGROUP DELCONSUMER drops a consumer's pending entries too: only empty ones.
                await self.redis.xgroup_delconsumer(self.route.stream, self.route.group, name)

    async def ensure_group(self) -> None:
        route = self.route
        if await groups.ensure_group(self.redis, route.stream, route.group, route.cursor_start):
            log.info("Trigger %s: consumer group created", self.route.id)

    # --- the fetch loop -----------------------------------------------------------------

    async def _run(self) -> None:
        next_reclaim = 0.0
        group_ready = False
        while not self.stopping:
            # Cleared here, not when sleeping: a wake-up that comes during this
            # round's fetch (a hand-back announced, a route change) must cut the
            # sleep after it short, or the worker would rest through it.
            self._wake.clear()
            try:
                if not group_ready:
                    async with self.dispatcher.starting:
                        await self.ensure_group()
                    group_ready = True
                if self.route.paused or self._config_error:
                    await self._sleep(IDLE_REST)  # until the route changes (update)
                    continue
                limit = self.local_limit if self.ramp is None else self.ramp
                free = limit - len(self.in_flight)
                # Fetch in batches: waking for every freed slot would make many tiny
                # round trips, each paying the per-call overhead.
                if free <= 0 or (self.in_flight and free < min(self.refill, limit)):
                    self.room_bound = True
                    await self._sleep(1.0)
                    continue
                reclaim_ms = 0
                if time.monotonic() >= next_reclaim:
                    reclaim_ms = self.lease_ms
                    next_reclaim = time.monotonic() + RECLAIM_EVERY
                fetched = await self.cursor.fetch(
                    min(free, self.dispatcher.batch), self.lease_ms, reclaim_ms
                )
                self.room_bound = fetched.status is not FetchStatus.EMPTY
                if fetched.aside:
                    # Set aside until due, nothing to deliver: the delayed count moved,
                    # and a Trigger at rest would not publish it otherwise.
                    self.active = True
                if fetched.status is FetchStatus.OK:
                    self.idle_block = IDLE_BLOCK
                    self.active = self.fetched = True
                    self.dispatcher.retention_due.add(self.source_id)
                    for entry in fetched.entries:
                        self._start(self._deliver(entry))
                elif fetched.status is FetchStatus.BACKOFF:
                    # Whoever recovers it, this replica comes back slowly: a backlog
                    # at full concurrency would flatten a subscriber just back up.
                    self.ramp = 1
                    self.active = True
                    await self._probe()
                elif fetched.status is FetchStatus.LIMITED:
                    await self._sleep(min(fetched.wait_ms / 1000, IDLE_BLOCK))
                elif fetched.status is FetchStatus.MORE:
                    continue  # read on: later entries may be of other keys
                else:
                    await self._wait_for_entries(fetched)
            except (RedisError, OSError) as error:
                log.warning("Trigger %s: Redis: %s; retrying in 1s", self.route.id, error)
                group_ready = False
                await self._sleep(1.0)
            except Exception:
                # A bug must not silently stop a Trigger: say so, and keep going.
                log.exception("Trigger %s: unexpected error; retrying in 1s", self.route.id)
                await self._sleep(1.0)

    def _room(self, passed: int) -> int:
        """How many deliveries a settle may start here: the room left (a task that
        just finished may not have left `in_flight` yet: its callback runs next), and
        at least the `passed` slots of settled ordered events for their keys' next
        ones (the fetch loop may have refilled the room already, and a hot key would
        then wait a fetch cycle per event; the Trigger's concurrency limit still holds)."""
        if self.stopping or self.route.paused or self._config_error:
            return 0
        limit = self.local_limit if self.ramp is None else self.ramp
        return max(passed, limit - sum(not task.done() for task in self.in_flight))

    def _start(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine)
        self.in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Trigger %s: delivery task failed", self.route.id, exc_info=task.exception())
        # Wake the fetch loop only when a batch worth of slots is free: waking it
        # for every finished delivery costs more than the delivery's own bookkeeping.
        if self.room_bound and len(self.in_flight) <= self.local_limit - self.refill:
            self._wake.set()
        if self.stopping:
            self._flush_wake.set()  # the flusher exits once nothing is in flight

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake early for a stop, a route change or a free slot (also one
        since the round began: its loop clears `_wake`)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._wake.wait()

    async def _wait_for_entries(self, fetched: Fetched) -> None:
        """Block until the stream grows past what we saw, a retry comes due, or a
        wake-up. The process's one StreamWaker watches the stream for us (waker.py)."""
        if fetched.leased:
            self.idle_block = IDLE_BLOCK
        else:
            self.idle_block = IDLE_REST * random.uniform(1 - REST_JITTER, 1 + REST_JITTER)
        block = self.idle_block
        if fetched.due_in_ms >= 0:
            block = min(block, max(0.001, fetched.due_in_ms / 1000))
        with self.dispatcher.waker.waiting_for(self.route.stream, fetched.last_id, self._wake):
            await self._sleep(block)

    # --- one delivery -------------------------------------------------------------------

    async def _deliver(self, entry: Entry) -> None:
        done = await self._attempt(entry, probe=False)
        self.done.append(done)
        self._flush_wake.set()

    async def _attempt(self, entry: Entry, *, probe: bool) -> Done:
        route = self.route
        delivery = route.delivery
        event = stored_event(entry)
        if isinstance(event, Done):
            return event
        try:
            if not self.filter(event):
                return Done(Outcome(Op.OK, entry), Verdict.FILTERED)
        except FilterFailed as failure:
            return self._filter_failed(entry, event, failure)
        age = time.time() - entry.due_ms(int(route.delay * 1000)) / 1000
        if age > delivery.max_age:
            message = f"maxAge ({delivery.max_age:g}s) passed before delivery"
            log.warning(
                "Trigger %s: event %s dead-lettered unsent: %s",
                route.id,
                event.get("id"),
                message,
                extra=event_fields(
                    event, source=f"{route.namespace}/{route.source}", trigger=route.id
                ),
            )
            return Done(
                Outcome(Op.DEAD, entry, attempts=entry.attempts, message=message),
                Verdict.EXPIRED,
                None,
                event,
                ended=time.time(),
            )
        unsent = None
        try:
            request = build_request(
                event,
                entry.event_json,
                format=delivery.format,
                headers=self.headers,
                signing_keys=self.signing_keys,
            )
        except RequestError as error:  # never sendable: dead-lettered, saying why
            request, unsent = Request({}, b""), unsendable(error)
        tracer = self.dispatcher.tracer
        span = None
        if tracer is not None:
            # A probe or a reclaimed entry does not own its attempt number (see tracing).
            counted = not probe and entry.origin is not Origin.RECLAIMED
            span = tracer.start_attempt(
                route,
                event,
                entry.id,
                entry.attempts + 1,
                counted=counted,
                consumer=self.dispatcher.consumer,
                headers=request.headers,
            )
        if self.refusal is not None:
            result = Result(None, 0.0, refused(self.refusal))
        elif unsent is not None:
            result = Result(None, 0.0, unsent)
        else:
            result = await send(
                self.dispatcher.client,
                route.subscriber_url,
                request,
                self.timeout,
                self.tls,
            )
        ended = time.time()
        done = self._decide(entry, event, result, age, probe=probe)
        done.result, done.ended = result, ended
        if self.metrics is not None:
            self.metrics.attempt_seconds.observe(result.seconds)
            if result.failure is not None and result.failure.kind == "destination":
                self.metrics.refused(result.failure.rule).inc()
            latency = max(0.0, ended - entry.due_ms(0) / 1000)
            if entry.attempts == 0 and not probe:
                self.metrics.latency_first.observe(latency)
            if result.failure is None:
                self.metrics.latency_final.observe(latency)
        if span is not None:
            assert tracer is not None
            failed = result.failure
            tracer.end_attempt(
                span,
                status=result.status,
                outcome=done.verdict.value,
                error_type=None if failed is None else str(failed.status or failed.kind),
                message=None if failed is None else failed.message,
                retry_in=done.outcome.delay_ms / 1000 if done.verdict is Verdict.RETRIED else None,
            )
        if result.failure is not None or log.isEnabledFor(logging.DEBUG):
            self._log_attempt(entry, event, result, done, probe=probe)
        hook = self.dispatcher.on_attempt
        if hook is not None:
            hook(route, event, result, done.outcome.op)
        return done

    def _filter_failed(self, entry: Entry, event: dict[str, Any], failure: FilterFailed) -> Done:
        """Dead-letter an event the filter expression failed on (docs/filters.md): kept,
        counted and visible, for `tidings replay` once the expression is fixed."""
        if self.metrics is not None:
            self.metrics.filter_errors[failure.reason].inc()
        message = f"filter error ({failure.reason}): spec.filter.expression: {failure.message}"
        outcome = Outcome(Op.DEAD, entry, attempts=entry.attempts, message=message)
        return Done(outcome, Verdict.FILTER_FAILED, None, event)

    def _log_attempt(
        self, entry: Entry, event: dict[str, Any], result: Result, done: Done, *, probe: bool
    ) -> None:
        """One line per failed attempt (per delivery at DEBUG), with the event's
        trigger, source, event_id and trace_id as fields of the JSON log."""
        route = self.route
        fields = event_fields(event, source=f"{route.namespace}/{route.source}", trigger=route.id)
        fields["attempt"] = entry.attempts + 1
        fields["outcome"] = done.verdict.value
        what = "probe" if probe else f"attempt {entry.attempts + 1}"
        failure = result.failure
        if failure is None:
            log.debug(
                "Trigger %s: event %s delivered (%s, HTTP %s)",
                route.id,
                event.get("id"),
                what,
                result.status,
                extra=fields,
            )
        elif done.verdict is Verdict.RETRIED:
            delay = f"; retry in {done.outcome.delay_ms / 1000:g}s" if not probe else ""
            log.info(
                "Trigger %s: event %s %s failed: %s%s",
                route.id,
                event.get("id"),
                what,
                failure.message,
                delay,
                extra=fields,
            )
        else:
            log.warning(
                "Trigger %s: event %s dead-lettered after %s: %s",
                route.id,
                event.get("id"),
                what,
                done.outcome.message,
                extra=fields,
            )

    def _decide(
        self, entry: Entry, event: dict[str, Any], result: Result, age: float, *, probe: bool
    ) -> Done:
        failure = result.failure
        if failure is None:
            return Done(Outcome(Op.OK, entry), Verdict.DELIVERED, None, event)
        delivery = self.route.delivery
        status = str(failure.status or "")
        attempts = entry.attempts + 1
        if probe and is_retryable(delivery.retry.retry_on, failure) and age < delivery.max_age:
            # A probe in Backoff does not spend the event's attempts.
            return Done(
                Outcome(Op.RETRY, entry, attempts=entry.attempts), Verdict.RETRIED, failure, event
            )
        decision = decide(
            delivery.retry, failure, attempts=attempts, age=age, max_age=delivery.max_age
        )
        if decision.retry:
            delay_ms = int(decision.delay * 1000)
            outcome = Outcome(Op.RETRY, entry, delay_ms=delay_ms, attempts=attempts)
            return Done(outcome, Verdict.RETRIED, failure, event)
        message = f"{decision.reason}: {failure.message}"
        if failure.kind == "destination":
            message = failure.message  # it names the reason already
        outcome = Outcome(Op.DEAD, entry, attempts=attempts, status=status, message=message)
        answered = failure.kind == "status" and not is_retryable(delivery.retry.retry_on, failure)
        verdict = Verdict.DEAD_ANSWERED if answered else Verdict.DEAD_FAILED
        return Done(outcome, verdict, failure, event)

    # --- settling -----------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._flush_wake.wait()
            # Let a few more deliveries finish: one settle call per ~ms, not per answer;
            # unless none is left running (one event of a key at a time, or a trickle).
            if len(self.in_flight) > len(self.done):
                await asyncio.sleep(FLUSH_DELAY)
            self._flush_wake.clear()
            if self.done:
                batch, self.done = self.done, []
                try:
                    await self._settle(batch)
                except (RedisError, OSError) as error:
                    # Keep the outcomes; settle them once Redis answers again.
                    level = logging.ERROR if isinstance(error, ResponseError) else logging.WARNING
                    log.log(
                        level, "Trigger %s: settling failed (%s); retrying", self.route.id, error
                    )
                    self.done = batch + self.done
                    await asyncio.sleep(0.5)
                    self._flush_wake.set()
                    continue
            if self.stopping and not self.in_flight and not self.done:
                return

    async def _settle(self, batch: list[Done], *, probe: bool = False) -> None:
        self.active = True
        counts = tally(batch)
        last_failure = counts.last_failure
        note = None
        if last_failure is not None:
            note = FailureNote(
                now_rfc3339(), str(last_failure.status or ""), last_failure.message[:500]
            )
        replica = self.dispatcher.replica
        settled = await self.cursor.settle(
            [d.outcome for d in batch],
            refunds=counts.filtered,
            answered=counts.answered,
            failed=counts.failed,
            failure=note,
            logged=[r for r in (attempt_record(d, replica) for d in batch) if r],
            hand_on=self._room(counts.ordered) if not probe and counts.ordered else 0,
            lease_ms=self.lease_ms,
        )
        failures, down = settled.failures, settled.down
        # The next event of a key settled here starts now: no fetch round trip, and
        # no wait for the fetch loop to wake (ordering.py).
        for entry in settled.started:
            self._start(self._deliver(entry))
        if counts.retried or settled.released:
            # A retry may be due before the fetch loop's idle block ends, and a
            # settled ordered event may have made the next one of its key due now.
            self._wake.set()
        if self.metrics is not None:
            self.metrics.delivered.inc(counts.delivered)
            self.metrics.filtered.inc(counts.filtered)
            if counts.retried:
                self.metrics.retried.inc(counts.retried)
                self.metrics.retries.inc(counts.retried)
            if counts.dead_lettered:
                self.metrics.dead_lettered.inc(counts.dead_lettered)
            if counts.unreadable:
                self.metrics.unreadable.inc(counts.unreadable)
        if counts.dead_lettered and self.route.delivery.dead_letter_url:
            for done in batch:
                if done.outcome.op is Op.DEAD and done.event is not None:
                    self._start(self._to_sink(done))
        # Grows while most attempts are answered (a flaky subscriber must not pin it low).
        if self.ramp is not None and not probe and counts.answered >= max(1, counts.failed):
            self.ramp *= 2
            if self.ramp >= self.local_limit:
                self.ramp = None
            self._wake.set()
        if not probe and down and await self.backoff.enter():
            log.warning(
                "Trigger %s: the subscriber looks down (%d failed attempts in a row, "
                "last: %s); entering Backoff, probing it from now on",
                self.route.id,
                failures,
                note.message if note else "",
            )

    async def _to_sink(self, done: Done) -> None:
        url = self.route.delivery.dead_letter_url
        assert url is not None and done.event is not None
        if self.sink_refusal is not None:
            log.warning(
                "Trigger %s: dead-letter sink %s not allowed (%s); the event stays in the "
                "DLQ stream",
                self.route.id,
                url,
                self.sink_refusal.message,
            )
            return
        request = deadletter.sink_request(
            done.event,
            done.outcome.entry.event_json,
            format=self.route.delivery.format,
            signing_keys=self.signing_keys,
            attempts=done.outcome.attempts,
            status=done.outcome.status,
            error=done.outcome.message,
        )
        await deadletter.send_to_sink(self.dispatcher.client, url, request, self.timeout)

    # --- Backoff ------------------------------------------------------------------------

    async def _probe(self) -> None:
        """In Backoff: probe with the head event when it is our turn, else wait."""
        self._wake.clear()
        claim = await self.backoff.claim_probe(self.timeout + RECLAIM_MARGIN)
        if claim < 0:
            return  # another replica recovered the Trigger
        if claim > 0:
            await self._sleep(min(IDLE_BLOCK, max(0.01, claim / 1000)))
            return
        # Head events the filter drops or that are past maxAge are settled on
        # the way; the first real answer (or failure) decides.
        for _ in range(self.dispatcher.batch):
            if self.stopping:
                return
            self._wake.clear()
            fetched = await self.cursor.fetch(1, self.lease_ms, probe=True)
            if fetched.status is FetchStatus.LIMITED:
                await self._sleep(min(fetched.wait_ms / 1000, IDLE_BLOCK))
                continue
            if fetched.status is FetchStatus.MORE:
                continue
            if not fetched.entries:
                if fetched.due_in_ms >= 0:
                    # The head event is a retry not due yet (Backoff began before
                    # its time): probe with it when it is; within this claim, or at
                    # the next one.
                    if fetched.due_in_ms > self.lease_ms:
                        return
                    await self._sleep(max(0.01, fetched.due_in_ms / 1000))
                    continue
                # Nothing left to deliver: no reason to stay in Backoff.
                await self.backoff.recover()
                return
            done = await self._attempt(fetched.entries[0], probe=True)
            if done.verdict is not Verdict.RETRIED:
                await self._settle([done], probe=True)
                if done.verdict in ANSWERED:
                    due = await self.backoff.recover()
                    log.warning(
                        "Trigger %s: subscriber answered a probe; leaving Backoff, "
                        "%d retries due now",
                        self.route.id,
                        due,
                    )
                    return
                continue
            interval = await self.backoff.probe_failed()
            delay_ms = int(interval * 1000)
            retry = Outcome(
                Op.RETRY, done.outcome.entry, delay_ms=delay_ms, attempts=done.outcome.attempts
            )
            retried = replace(done, outcome=retry, verdict=Verdict.RETRIED)
            await self._settle([retried], probe=True)
            log.info(
                "Trigger %s: probe failed (%s); next probe in %gs",
                self.route.id,
                done.failure.message if done.failure else "",
                interval,
            )
            return


class Dispatcher:
    """All Triggers of the routing table, delivered by this process."""

    def __init__(
        self,
        redis: Redis,
        watcher: TableWatcher,
        *,
        consumer: str | None = None,
        sealer: Sealer | None = None,
        registry: CollectorRegistry | None = None,
        batch: int = 100,
        max_in_flight: int = 512,
        publish_interval: float = 1.0,
        retention_interval: float = 10.0,
        filter_span: float = FILTER_SPAN,
        replay_interval: float = 1.0,
        on_attempt: AttemptHook | None = None,
        destinations: DestinationPolicy = CLUSTER,
        resolver: AbstractResolver | None = None,
    ) -> None:
        """`destinations` is the destination policy every attempt is checked
        against (default: a cluster's, loopback refused); `resolver` resolves
        subscriber names (default: aiohttp's; tests map names themselves)."""
        self.redis = redis
        self.watcher = watcher
        self.consumer = consumer or default_consumer_name()
        self.sealer = sealer
        self.metrics = DispatchMetrics(registry) if registry is not None else None
        self.batch = batch
        self.max_in_flight = max_in_flight
        self.publish_interval = publish_interval
        self.retention_interval = retention_interval
        self.filter_span = filter_span
        self.on_attempt = on_attempt
        self.replica = replica_name()
        # None unless OTEL_* turned tracing on (tidings.api.tracing.setup).
        self.tracer = tracing.tracer()
        self.guard = Guard(destinations, resolver)
        self.workers: dict[str, TriggerWorker] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._client: Client | None = None
        self._opened: OpenedSecrets | None = None
        self._stopping = False
        self._next_cleanup = time.monotonic() + CONSUMER_CLEANUP_EVERY
        self.replays = Replays(redis, self.consumer)
        self.waker = StreamWaker(redis)
        self.replay_interval = replay_interval
        # Retention: sources whose Triggers fetched since their last pass, and when
        # each other source next has something to trim by age (monotonic).
        self.retention_due: set[str] = set()
        self.starting = asyncio.Semaphore(STARTING_AT_ONCE)
        self._retention_next: dict[str, float] = {}

    @property
    def client(self) -> Client:
        assert self._client is not None, "Dispatcher.start() first"
        return self._client

    def unseal(self, sealed: str) -> str:
        if self.sealer is None:
            raise SealError("no seal key configured: set TIDINGS_SEAL_KEY_FILE or TIDINGS_SEAL_KEY")
        if self._opened is None:
            self._opened = OpenedSecrets(self.sealer)
        return self._opened.unseal(sealed)

    async def start(self) -> None:
        # No pool limit: each Trigger's own concurrency bounds its connections, and a
        # shared cap would let one stalled subscriber starve every other Trigger.
        self._client = Client(self.guard)
        self.waker.start()
        self.watcher.on_change(self.apply)
        self.watcher.on_wake(self.wake)
        self.watcher.on_resubscribe(self.wake_all)
        if self.watcher.loaded.is_set():
            await self.apply(self.watcher.current)
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="dispatch-publish"),
            asyncio.create_task(self._retention_loop(), name="dispatch-retention"),
            asyncio.create_task(self._replay_loop(), name="dispatch-replays"),
        ]
        log.info("dispatcher %s started", self.consumer)

    async def apply(self, table: RoutingTable) -> None:
        """Start, update and stop workers to match the routing table."""
        if self._stopping:
            return
        for route_id, route in table.routes.items():
            worker = self.workers.get(route_id)
            if worker is None:
                worker = self.workers[route_id] = TriggerWorker(self, route)
                worker.start()
            elif (worker.route.stream, worker.route.group) != (route.stream, route.group):
                # Moved to another source: a new cursor, not an update of this one.
                asyncio.create_task(worker.stop(grace=worker.timeout))  # noqa: RUF006
                worker = self.workers[route_id] = TriggerWorker(self, route)
                worker.start()
            elif worker.route != route:
                worker.update(route)
        for route_id in list(self.workers):
            if route_id not in table.routes:
                worker = self.workers.pop(route_id)
                asyncio.create_task(worker.stop(grace=worker.timeout))  # noqa: RUF006
                if self.metrics is not None:
                    self.metrics.forget(route_id)

    async def stop(self, grace: float = 30.0) -> None:
        """Drain: in-flight deliveries get up to `grace` seconds, then settle."""
        self._stopping = True
        await cancel(set(self._tasks))
        await self.replays.stop()
        await asyncio.gather(*(w.stop(grace) for w in self.workers.values()))
        await self.waker.stop()
        if self._client is not None:
            await self._client.close()
        with contextlib.suppress(RedisError, OSError):
            await heartbeat.leave(self.redis, self.consumer)
        log.info("dispatcher %s stopped", self.consumer)

    def wake(self, trigger_id: str) -> None:
        """Another process made retries of this Trigger due (keys.TRIGGER_WAKE)."""
        worker = self.workers.get(trigger_id)
        if worker is not None:
            worker.nudge()

    def wake_all(self) -> None:
        """The wake channel was (re)subscribed: announcements may have been missed."""
        for worker in self.workers.values():
            worker.nudge()

    async def _publish_loop(self) -> None:
        next_beat = 0.0
        while True:
            if time.monotonic() >= next_beat:
                try:
                    await heartbeat.beat(self.redis, self.consumer)
                    next_beat = time.monotonic() + heartbeat.BEAT_EVERY
                except (RedisError, OSError) as error:
                    log.debug("heartbeat failed: %s", error)
            sources = self.watcher.current.sources
            for worker in list(self.workers.values()):
                if worker.quiet():
                    if worker.published is not None and (
                        worker.published.oldest_ms or worker.published.expires_ms
                    ):
                        worker.show(worker.published)  # the ages move on without Redis
                    continue
                route = worker.route
                source = sources.get(keys.source_id(route.namespace, route.source))
                try:
                    published = await worker.publish(
                        source.retention_max_age if source is not None else 0.0
                    )
                except (RedisError, OSError) as error:
                    log.debug("publishing state of %s failed: %s", worker.route.id, error)
                    continue
                worker.show(published)
            if time.monotonic() >= self._next_cleanup:
                self._next_cleanup = time.monotonic() + CONSUMER_CLEANUP_EVERY
                for worker in list(self.workers.values()):
                    # A group nobody fetched from since the last cleanup gained no
                    # consumers (this process's fetch registers its own).
                    if not worker.fetched:
                        continue
                    worker.fetched = False
                    try:
                        await worker.forget_idle_consumers()
                    except (RedisError, OSError) as error:
                        log.debug("consumer cleanup of %s failed: %s", worker.route.id, error)
            await asyncio.sleep(self.publish_interval)

    async def _replay_loop(self) -> None:
        """Run the Replays of the Triggers this process routes (replays.py)."""
        while True:
            await asyncio.sleep(self.replay_interval)
            try:
                await self.replays.sync(self.watcher.current.routes)
            except (RedisError, OSError) as error:
                log.debug("looking for Replays failed: %s", error)

    def _retention_wanted(self, source_id: str, now: float, unsettled: set[str]) -> bool:
        if source_id in self.retention_due or source_id in unsettled:
            self.retention_due.discard(source_id)
            return True
        return now >= self._retention_next.get(source_id, 0.0)

    async def _retention_loop(self) -> None:
        version = -1
        seen: tuple[RoutingTable, dict[str, list[Route]]] | None = None
        while True:
            await asyncio.sleep(self.retention_interval)
            table = self.watcher.current
            if table.version != version:
                # The sources whose Triggers or limits changed look at once; one
                # Trigger applied must not cost a pass over every source.
                version = table.version
                by_source = routes_by_source(table)
                if seen is None:
                    self._retention_next.clear()
                else:
                    for source_id in changed_sources(seen[0], seen[1], table, by_source):
                        self._retention_next.pop(source_id, None)
                seen = (table, by_source)
            assert seen is not None
            by_source = seen[1]
            # Sources with a Trigger not at rest (lagging, paused, in Backoff) may grow
            # past maxEvents with nothing fetched here: trimmed every interval.
            unsettled = {
                w.source_id
                for w in self.workers.values()
                if w.published is None or not w.published.at_rest()
            }
            for source in table.sources.values():
                if not self._retention_wanted(source.id, time.monotonic(), unsettled):
                    continue
                routes = by_source.get(source.id, [])
                try:
                    kept = await retention.trim(self.redis, source, routes)
                except (RedisError, OSError) as error:
                    log.debug("retention of %s failed: %s", source.id, error)
                    continue
                trimmed = kept.trimmed
                for trigger, count in kept.lost.items():
                    log.warning(
                        "Trigger %s: %d events fell out of %s's retention before delivery",
                        trigger,
                        count,
                        source.id,
                    )
                    self._changed(trigger)
                    route = table.routes.get(trigger)
                    if route is None:  # withdrawn: no worker publishes its new count
                        with contextlib.suppress(RedisError, OSError):
                            await self.redis.publish(keys.REPORT_NEWS, trigger)
                    elif route.delivery.ordering_key:
                        # An ordering key an expired entry held passed on, due now:
                        # whichever replica rests on it looks.
                        with contextlib.suppress(RedisError, OSError):
                            await self.redis.publish(keys.TRIGGER_WAKE, trigger)
                if trimmed:
                    log.debug("retention trimmed %d entries of %s", trimmed, source.id)
                try:
                    old = await retention.trim_dead_letters(self.redis, routes)
                except (RedisError, OSError) as error:
                    log.debug("dead-letter retention of %s failed: %s", source.id, error)
                    continue
                for trigger, count in old.lost.items():
                    log.info(
                        "Trigger %s: %d dead letters past their max age dropped", trigger, count
                    )
                    self._changed(trigger)
                self._retention_next[source.id] = self._next_retention(
                    retention.next_due_ms(kept, old)
                )

    def _changed(self, trigger_id: str) -> None:
        """Retention changed a Trigger's counts: publish its state next time, and so
        announce it (a Trigger withdrawn from the table has no worker here: its count
        is announced by the retention pass)."""
        worker = self.workers.get(trigger_id)
        if worker is not None:
            worker.active = True

    @staticmethod
    def _next_retention(due_ms: int) -> float:
        """A monotonic time for the next pass: when the oldest entry comes of age
        (a pass then may be held back by a Trigger's hold: then every interval),
        and no later than RETENTION_IDLE_EVERY from now."""
        now = time.monotonic()
        if not due_ms:
            return now + RETENTION_IDLE_EVERY
        return now + min(max(0.0, due_ms / 1000 - time.time()), RETENTION_IDLE_EVERY)
