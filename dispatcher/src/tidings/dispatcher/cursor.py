"""A Trigger's cursor in Redis: what to deliver next, and what an outcome changes.

Two Lua scripts do all of a Trigger's hot-path bookkeeping, one round trip each,
on keys of one source only (one hash tag, so they run on Redis Cluster too):

`fetch` takes what may start now, in this order:
  1. scheduled retries that are due (the retry ZSET, scored by due time ms);
     their score moves to now + lease, so if this dispatcher dies mid-attempt
     the retry comes due again after the lease, with its attempt count intact;
  2. entries another consumer left pending for longer than the Trigger's
     timeout plus a margin (XAUTOCLAIM), when asked to reclaim: the holder
     died, and a slow-but-alive delivery is not duplicated;
  3. new entries (XREADGROUP ... '>'), which acquire or park on their
     ordering key (ordering.py);
all bounded by the cluster-wide concurrency leases and rate tokens (limits.py).
A Trigger in Backoff gets nothing: it only probes (backoff_state.py).

`settle` applies a batch of outcomes atomically per entry:
  ok      delivered (or filtered out): XACK, drop retry bookkeeping, release the key
          (the key's next event is leased and returned, to start without a fetch)
  retry   XACK, schedule in the retry ZSET with the attempt count (the entry
          leaves the PEL; the retry ZSET owns it, and `held` keeps retention off it)
  dead    XACK, drop bookkeeping, XADD to the DLQ stream (deadletter.py)
and releases leases, refunds tokens of filtered-out events, and keeps the
consecutive-failure count and last failure the Backoff state machine reads.
A due retry may be a dead letter handed back by `tidings replay`: it is
delivered from its copy in the replay HASH, which ok/dead drop (deadletter.py).

The scripts are tidings/api/lua/cursor_fetch.lua and cursor_settle.lua; every
time in them is Redis's clock (TIME), so replicas with skewed clocks share
leases, rate tokens and due times correctly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from tidings.api import attempts, keys, scripts
from tidings.api.attempts import Attempt
from tidings.api.routes import Route
from tidings.api.text import text
from tidings.dispatcher import ordering
from tidings.dispatcher.limits import Limits


def script_keys(route: Route) -> list[str]:
    """The KEYS of both scripts, in the order lua/_cursor_keys.lua names them."""
    return cursor_keys(route.stream, route.namespace, route.source, route.name)


def cursor_keys(stream: str, ns: str, source: str, name: str) -> list[str]:
    """script_keys of Trigger `name` on `source`'s `stream`, route or not."""
    return [
        stream,
        keys.retries(ns, source, name),
        keys.attempts(ns, source, name),
        keys.in_flight(ns, source, name),
        keys.rate_bucket(ns, source, name),
        keys.ordering(ns, source, name),
        keys.parked(ns, source, name),
        keys.held(ns, source, name),
        keys.dead_letters(ns, source, name),
        keys.trigger_state(ns, source, name),
        keys.replays(ns, source, name),
        keys.delayed(ns, source, name),
        keys.replay_owners(ns, source, name),
        keys.replay_runs(ns, source, name),
        keys.attempt_log(ns, source, name),
        keys.replay_dead_letters(ns, source, name),
        keys.replay_leased(ns, source, name),
        keys.delayed_held(ns, source, name),
    ]


class Origin(StrEnum):
    """Where a fetched entry came from (the scripts' one-letter codes)."""

    RETRY = "r"  # a scheduled retry that came due
    RECLAIMED = "c"  # pending at a consumer that died (XAUTOCLAIM)
    NEW = "n"  # read for the first time (XREADGROUP >)


class FetchStatus(StrEnum):
    OK = "ok"  # entries to deliver
    LIMITED = "limited"  # the concurrency or rate limit allows none now
    EMPTY = "empty"  # nothing to deliver
    MORE = "more"  # nothing to start yet: what was read waits (its key, its delay); read on
    BACKOFF = "backoff"  # the Trigger is in Backoff: probe instead


class Op(StrEnum):
    """What settling does with an entry (cursor_settle.lua)."""

    OK = "ok"  # delivered, or filtered out
    RETRY = "retry"  # scheduled for another attempt
    DEAD = "dead"  # dead-lettered


@dataclass(slots=True)
class Entry:
    """One entry to deliver. `attempts`: attempts made before this one."""

    origin: Origin
    id: str
    event_json: bytes
    stored_ms: int  # when ingest stored it
    after_ms: int  # its deliverafter (0: none)
    attempts: int
    order_key: str  # "" when unordered, else "k" + key (as the scripts pass it)

    def due_ms(self, delay_ms: int) -> int:
        """When it became due, as cursor_fetch.lua and backoff_publish.lua decide it
        (their due_of): its deliverafter or its time stored + the Trigger's delay,
        whichever is later. maxAge counts from it."""
        return max(self.after_ms, self.stored_ms + delay_ms)


@dataclass(slots=True)
class Fetched:
    status: FetchStatus
    entries: list[Entry]
    wait_ms: int = 0  # limited: when tokens are expected
    last_id: str = "0-0"  # empty: the stream's newest id, to block on
    due_in_ms: int = -1  # empty: ms until the next retry comes due (-1: none)
    leased: int = 0  # empty: entries leased to any consumer (another's may be abandoned)
    aside: int = 0  # empty, more: entries set aside now (delayed, parked): state changed


@dataclass(slots=True)
class Outcome:
    op: Op
    entry: Entry
    delay_ms: int = 0  # retry: when, from now
    attempts: int = 0  # retry: the count to store; dead: the attempts made
    status: str = ""  # dead: the last HTTP status, "" for network/timeout
    message: str = ""  # dead: the reason and the last error


@dataclass(slots=True)
class Settled:
    failures: int  # consecutive failed attempts, across replicas
    down: bool  # the subscriber now looks down (delivery.backoff's rule)
    started: list[Entry]  # next of their ordering key, leased here: deliver them now
    released: int  # more entries passed their key and due now, for a fetch


@dataclass(slots=True)
class FailureNote:
    time: str
    status: str
    message: str


class Cursor:
    """The fetch/settle scripts bound to one Redis client and one Trigger."""

    def __init__(self, redis: Redis, route: Route, consumer: str) -> None:
        self.redis = redis
        self.consumer = consumer
        self.update(route)

    def update(self, route: Route) -> None:
        self.route = route
        self.keys = script_keys(route)
        self.limits = Limits.of(route.delivery)
        self.order_path = ordering.path_of(route.delivery.ordering_key)

    async def fetch(
        self, want: int, lease_ms: int, reclaim_idle_ms: int = 0, *, probe: bool = False
    ) -> Fetched:
        status, info, raw = await scripts.CURSOR_FETCH(
            self.redis,
            keys=self.keys,
            args=[
                self.route.group,
                self.consumer,
                want,
                lease_ms,
                self.limits.concurrency,
                self.limits.rate,
                self.limits.burst,
                reclaim_idle_ms,
                self.order_path,
                "1" if probe else "0",
                int(self.route.delay * 1000),
                self.route.delivery.dead_letter_max_events,
            ],
        )
        status = FetchStatus(text(status))
        if status is FetchStatus.OK:
            return Fetched(status, [_entry(item) for item in raw])
        if status is FetchStatus.LIMITED:
            return Fetched(status, [], wait_ms=int(info))
        if status is FetchStatus.EMPTY:
            return Fetched(
                status,
                [],
                last_id=text(info[0]),
                due_in_ms=int(float(info[1])),
                leased=int(info[2]),
                aside=int(info[3]),
            )
        if status is FetchStatus.MORE:
            return Fetched(status, [], aside=int(info))
        return Fetched(status, [])

    async def settle(
        self,
        outcomes: list[Outcome],
        *,
        refunds: int = 0,
        answered: int = 0,
        failed: int = 0,
        failure: FailureNote | None = None,
        logged: list[Attempt] | None = None,
        hand_on: int = 0,
        lease_ms: int = 0,
    ) -> Settled:
        """Apply outcomes and append `logged` to the attempt log, in one script call.
        Up to `hand_on` entries an outcome passed its ordering key to come back
        leased for `lease_ms`, to start at once (as fetch would return them)."""
        delivery = self.route.delivery
        args: list[Any] = [
            self.route.group,
            self.consumer,
            self.route.delivery.dead_letter_max_events,
            self.limits.burst if self.limits.rate else 0,
            refunds,
            answered,
            failed,
            failure.time if failure else "",
            failure.status if failure else "",
            failure.message if failure else "",
            self.route.id,
            int(delivery.window * 1000),
            delivery.backoff_min_attempts,
            delivery.backoff_failure_ratio,
            delivery.attempt_log_max_entries,
            int(delivery.attempt_log_max_age * 1000),
            attempts.pack(logged or []),
            " ".join(o.entry.id for o in outcomes if _plain_ack(o)),
            hand_on,
            lease_ms,
            self.limits.concurrency,
            self.limits.rate,
        ]
        for o in outcomes:
            if _plain_ack(o):
                continue
            args += [
                o.op,
                o.entry.id,
                o.entry.origin,
                o.entry.order_key,
                o.delay_ms,
                o.attempts,
                o.status,
                o.message,
            ]
        failures, down, started, released = await scripts.CURSOR_SETTLE(
            self.redis, keys=self.keys, args=args
        )
        return Settled(int(failures), bool(int(down)), [_entry(item) for item in started], released)


def _plain_ack(outcome: Outcome) -> bool:
    """A new entry delivered without an ordering key: only XACK and the lease."""
    entry = outcome.entry
    return outcome.op is Op.OK and entry.origin is Origin.NEW and not entry.order_key


# Per entry on the hot path: a dict lookup, bytes or str, costs less than Origin(text(o)).
_ORIGINS: dict[bytes | str, Origin] = {
    **{o.value: o for o in Origin},
    **{o.value.encode(): o for o in Origin},
}
_FIELD_EVENT = (keys.FIELD_EVENT.encode(), keys.FIELD_EVENT)
_FIELD_TIME = (keys.FIELD_TIME.encode(), keys.FIELD_TIME)
_FIELD_DUE = (keys.FIELD_DUE.encode(), keys.FIELD_DUE)


def _entry(item: list[Any]) -> Entry:
    origin, stream_id, fields, attempts, key = item
    event_json = b"{}"
    ingested = due = 0
    for i in range(0, len(fields), 2):
        name = fields[i]
        if name in _FIELD_EVENT:
            value = fields[i + 1]
            event_json = value if isinstance(value, bytes) else str(value).encode()
        elif name in _FIELD_TIME:
            ingested = int(fields[i + 1])
        elif name in _FIELD_DUE:
            due = int(fields[i + 1])
    return Entry(
        origin=_ORIGINS[origin],
        id=text(stream_id),
        event_json=event_json,
        stored_ms=ingested,
        after_ms=due,
        attempts=int(attempts),
        order_key=text(key),
    )
