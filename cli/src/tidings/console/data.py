"""The Redis reads behind the console's pages: delivery state, the attempt log,
dead letters, one event and where it went. Read-only; bounded (a page never
walks a whole stream)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from tidings.api import attempts as attempt_log
from tidings.api import keys
from tidings.api.attempts import Attempt
from tidings.api.routes import Route
from tidings.api.text import text
from tidings.dispatcher import deadletter
from tidings.dispatcher.deadletter import DeadLetter

# How much of a payload a page shows; the rest is cut with a note.
PAYLOAD_CAP = 64 * 1024
# The overview's charts: one bar per this many minutes over the last hour.
CHART_MINUTES = 60
CHART_BUCKET = 5
# Bounds on what one page reads.
ATTEMPTS_SCAN = 2000
STATS_SCAN = 20_000
EVENT_SCAN = 20_000
DLQ_SCAN = 5_000
REPLAY_PAGE = 500


def _int(value: str) -> int:
    try:
        return int(float(value))
    except ValueError:
        return 0


async def recent_attempts(
    redis: Redis, route: Route, *, failed_only: bool = False, count: int = 50
) -> list[Attempt]:
    """The newest attempts, newest first (failed ones only: among the last ATTEMPTS_SCAN)."""
    key = keys.attempt_log(route.namespace, route.source, route.name)
    raw: list[tuple[Any, dict[Any, Any]]] = await redis.xrevrange(
        key, count=ATTEMPTS_SCAN if failed_only else count
    )  # type: ignore[assignment]
    attempts = [attempt_log.decode(i, f) for i, f in raw]
    if failed_only:
        attempts = [a for a in attempts if a.outcome.failed]
    return attempts[:count]


@dataclass(frozen=True)
class Rates:
    """Deliveries and failed attempts per CHART_BUCKET minutes, oldest first."""

    delivered: list[int]
    failed: list[int]

    @property
    def per_minute(self) -> tuple[float, float]:
        minutes = CHART_MINUTES
        return sum(self.delivered) / minutes, sum(self.failed) / minutes


async def rates(redis: Redis, route: Route, now_ms: int | None = None) -> Rates:
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    start = now_ms - CHART_MINUTES * 60_000
    buckets = CHART_MINUTES // CHART_BUCKET
    delivered, failed = [0] * buckets, [0] * buckets
    key = keys.attempt_log(route.namespace, route.source, route.name)
    raw: list[tuple[Any, dict[Any, Any]]] = await redis.xrevrange(
        key, max="+", min=str(start), count=STATS_SCAN
    )  # type: ignore[assignment]
    for log_id, fields in raw:
        attempt = attempt_log.decode(log_id, fields)
        index = min(buckets - 1, max(0, (attempt.time_ms - start) // (CHART_BUCKET * 60_000)))
        if attempt.outcome.failed:
            failed[index] += 1
        else:
            delivered[index] += 1
    return Rates(delivered, failed)


# --- delivery state and dead letters ----------------------------------------------------


@dataclass(frozen=True)
class DeliveryState:
    state: str = ""
    lag: int = 0
    retries: int = 0
    dead_lettered: int = 0
    failures: int = 0
    last_failure_time: str = ""
    last_failure_status: str = ""
    last_failure_message: str = ""
    dead_letters: int = 0  # in the DLQ now
    oldest_dead_letter_ms: int = 0
    # When the oldest undelivered event became due (stored, or its delay ended).
    oldest_undelivered_ms: int = 0
    delayed: int = 0  # delayed events not due yet: scheduled, not late
    expires_at_ms: int = 0  # when it hits maxAge or the source's retention

    def expires_in(self, now_ms: int | None = None) -> float | None:
        """Seconds until the oldest undelivered event expires (None: nothing waits)."""
        if not self.expires_at_ms:
            return None
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        return max(0.0, (self.expires_at_ms - now_ms) / 1000)


async def delivery_state(redis: Redis, route: Route) -> DeliveryState:
    ns, source, name = route.namespace, route.source, route.name
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.trigger_state(ns, source, name))
        pipe.xlen(keys.dead_letters(ns, source, name))
        pipe.xrange(keys.dead_letters(ns, source, name), count=1)
        raw, dlq_len, oldest = await pipe.execute()
    f = {text(k): text(v) for k, v in raw.items()}
    oldest_ms = 0
    if oldest:
        oldest_ms = _int(text(oldest[0][0]).partition("-")[0])
    return DeliveryState(
        state=("Paused" if route.paused else f.get(keys.STATE_STATE, "")) or "Delivering",
        lag=_int(f.get(keys.STATE_LAG, "0")),
        retries=_int(f.get(keys.STATE_RETRIES, "0")),
        dead_lettered=_int(f.get(keys.STATE_DEAD_LETTERED, "0")),
        failures=_int(f.get(keys.STATE_FAILURES, "0")),
        last_failure_time=f.get(keys.STATE_LAST_FAILURE_TIME, ""),
        last_failure_status=f.get(keys.STATE_LAST_FAILURE_STATUS, ""),
        last_failure_message=f.get(keys.STATE_LAST_FAILURE_MESSAGE, ""),
        dead_letters=int(dlq_len or 0),
        oldest_dead_letter_ms=oldest_ms,
        oldest_undelivered_ms=_int(f.get(keys.STATE_OLDEST, "0")),
        delayed=_int(f.get(keys.STATE_DELAYED, "0")),
        expires_at_ms=_int(f.get(keys.STATE_EXPIRES, "0")),
    )


def dead_letter_expiry_seconds(
    state: DeliveryState, route: Route, now_ms: int | None = None
) -> float | None:
    """Seconds until the oldest dead letter ages out of the DLQ (its maxAge)."""
    if not state.oldest_dead_letter_ms:
        return None
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    expires = state.oldest_dead_letter_ms + route.delivery.dead_letter_max_age * 1000
    return max(0.0, (expires - now_ms) / 1000)


@dataclass(frozen=True)
class DeadLetterPage:
    items: list[DeadLetter]
    total: int
    older: str | None  # the cursor of the next (older) page


async def dead_letter_page(
    redis: Redis, route: Route, *, before: str | None = None, count: int = 20
) -> DeadLetterPage:
    """Newest first; `before` (exclusive) pages to older ones."""
    key = keys.dead_letters(route.namespace, route.source, route.name)
    top = f"({before}" if before else "+"
    raw: list[tuple[Any, dict[Any, Any]]] = await redis.xrevrange(
        key, max=top, min="-", count=count + 1
    )  # type: ignore[assignment]
    total = int(await redis.xlen(key))
    items = [deadletter._dead_letter(i, f) for i, f in raw[:count]]
    older = items[-1].dlq_id if len(raw) > count and items else None
    return DeadLetterPage(items, total, older)


async def replay_dead_letters(redis: Redis, route: Route, ids: list[str] | None) -> tuple[int, int]:
    """Hand these dead letters (None: every one there is now) back to their
    Trigger, as `tidings replay` does; returns (replayed, kept: no copy of their
    event left). Ids already gone (replayed meanwhile, trimmed) are skipped."""
    if ids is not None:
        return await deadletter.hand_back(redis, route, ids)
    key = keys.dead_letters(route.namespace, route.source, route.name)
    newest: list[tuple[Any, Any]] = await redis.xrevrange(key, count=1)  # type: ignore[assignment]
    if not newest:
        return 0, 0
    # Up to the newest now: one that fails again is dead-lettered anew, after it.
    end, start = text(newest[0][0]), "-"
    moved = kept = 0
    while True:
        page: list[tuple[Any, Any]] = await redis.xrange(key, min=start, max=end, count=REPLAY_PAGE)  # type: ignore[assignment]
        if not page:
            return moved, kept
        m, k = await deadletter.hand_back(redis, route, [text(i) for i, _ in page])
        moved, kept = moved + m, kept + k
        start = f"({text(page[-1][0])}"


# --- one event, and where it went -------------------------------------------------------


@dataclass(frozen=True)
class FoundEvent:
    stream_id: str
    ingested_ms: int
    event: dict[str, Any]
    from_dead_letter: bool = False  # the source's copy was trimmed; this one is the DLQ's


async def find_event(
    redis: Redis, namespace: str, source: str, event_id: str, routes: list[Route]
) -> FoundEvent | None:
    """The event with this CloudEvent id: through the source's event index (one
    ZSCORE, tidings.api.attempts), else among its newest EVENT_SCAN entries (events
    stored before the index existed), else in its Triggers' dead letters."""
    key = keys.stream(namespace, source)
    ms = await redis.zscore(keys.event_index(namespace, source), event_id)
    if ms is not None:
        raw: list[tuple[Any, dict[Any, Any]]] = await redis.xrange(
            key, min=f"{int(ms)}-0", max=f"{int(ms)}-18446744073709551615"
        )  # type: ignore[assignment]
        found = _match(raw, event_id)
        if found is not None:
            return found
    last = "+"
    scanned = 0
    while scanned < EVENT_SCAN:
        raw = await redis.xrevrange(key, max=last, min="-", count=1000)  # type: ignore[assignment]
        if not raw:
            break
        found = _match(raw, event_id)
        if found is not None:
            return found
        scanned += len(raw)
        last = f"({text(raw[-1][0])}"
    for route in routes:
        for dead in await deadletter.read(redis, namespace, source, route.name, count=DLQ_SCAN):
            if dead.event.get("id") == event_id:
                return FoundEvent(dead.stream_id, dead.time_ms, dead.event, from_dead_letter=True)
    return None


def _match(raw: list[tuple[Any, dict[Any, Any]]], event_id: str) -> FoundEvent | None:
    for entry_id, fields in raw:
        f = {text(k): text(v) for k, v in fields.items()}
        event = _json(f.get(keys.FIELD_EVENT, ""))
        if event.get("id") == event_id:
            return FoundEvent(text(entry_id), _int(f.get(keys.FIELD_TIME, "0")), event)
    return None


def _json(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def pretty_payload(event: dict[str, Any]) -> tuple[str, bool]:
    """The event as indented JSON, cut at PAYLOAD_CAP characters; (text, was cut)."""
    rendered = json.dumps(event, indent=2, ensure_ascii=False, sort_keys=False)
    if len(rendered) > PAYLOAD_CAP:
        return rendered[:PAYLOAD_CAP], True
    return rendered, False


@dataclass(frozen=True)
class RecentEvent:
    stream_id: str
    ingested_ms: int
    id: str
    type: str
    subject: str


async def recent_events(
    redis: Redis, namespace: str, source: str, count: int = 10
) -> list[RecentEvent]:
    """The source's newest events, newest first."""
    raw: list[tuple[Any, dict[Any, Any]]] = await redis.xrevrange(
        keys.stream(namespace, source), count=count
    )  # type: ignore[assignment]
    out = []
    for entry_id, fields in raw:
        f = {text(k): text(v) for k, v in fields.items()}
        event = _json(f.get(keys.FIELD_EVENT, ""))
        out.append(
            RecentEvent(
                text(entry_id),
                _int(f.get(keys.FIELD_TIME, "0")),
                str(event.get("id", "")),
                str(event.get("type", "")),
                str(event.get("subject", "")),
            )
        )
    return out
