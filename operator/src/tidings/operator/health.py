"""Delivery health: the data plane's per-Trigger report, read for status.

Dispatchers publish a HASH per Trigger (`tidings.api.keys.trigger_state`, fields
`keys.STATE_*`): state (Delivering | Backoff | Paused), lag, delayed events not
due yet, dead-lettered and expired counters, the last failure, the oldest
undelivered event's due time, and when they last wrote it. The operator
reads it on a timer (seldom at rest: dispatchers announce news, `follow_news`)
and surfaces it in `status.delivery` and the STATE / LAG
columns — but only when it changed meaningfully (`settle`), so a busy Trigger
whose lag wobbles costs no API writes: a state change is written at once; new
dead letters, expiries or a different failure within seconds; lag only when it
moved by half (and at least 10) and not more often than every 30 s.

A Trigger no dispatcher has reported on has no reading (Delivering=Unknown,
NoReport); a report older than the staleness limit is shown as it was, with
Delivering=Unknown, ReportStale.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, cast, get_args

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.api import heartbeat, keys
from tidings.api.text import text
from tidings.api.types import DeliveryState, DeliveryStatus, LastFailure, LastFilterError

# How often settled values may change (seconds since the last delivery write).
COUNTERS_INTERVAL = 5.0
LAG_INTERVAL = 30.0
FAILURE_TIME_INTERVAL = 60.0
# Lag changes smaller than this (absolute, and relative to the last written lag) are noise.
LAG_MIN_CHANGE = 10
LAG_RELATIVE_CHANGE = 0.5
# The oldest undelivered event shows in status once it is this old (seconds): younger,
# it is a healthy Trigger's in-flight event, and would churn status for nothing.
OLDEST_SHOWN_AFTER = 60.0

STATES: tuple[str, ...] = get_args(DeliveryState)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reading:
    """One Trigger's delivery report, as the data plane wrote it."""

    state: DeliveryState | None = None
    lag: int | None = None
    dead_lettered: int | None = None
    expired: int | None = None
    failure_time: str | None = None
    failure_status: int | None = None
    failure_message: str | None = None
    updated_ms: int | None = None  # when a dispatcher last wrote it
    filter_errors: int | None = None  # events the filter expression failed on, ever
    filter_error_time: str | None = None
    filter_error_reason: str | None = None
    filter_error_message: str | None = None
    # The filter window (keys.STATE_FILTER_SPAN_*, _PREVIOUS_*): not status fields.
    filter_recent_checked: int | None = None
    filter_recent_errors: int | None = None
    # Not status fields either: what tells a report at rest (`at_rest`).
    pending: int | None = None  # entries being delivered right now
    oldest_ms: int | None = None  # the oldest undelivered event's due time, however young

    def at_rest(self) -> bool:
        """Delivering with nothing waiting, in flight, delayed or failing its filter
        lately: what a dispatcher calls at rest (backoff_state.Published.at_rest), so
        whatever moves it off is announced (keys.REPORT_NEWS)."""
        return (
            self.state == "Delivering"
            and not (self.lag or self.pending or self.delayed)
            and not (self.oldest_ms or self.oldest_undelivered)
            and not self.filter_recent_errors
        )

    def filter_failing(self) -> bool | None:
        """Whether the filter expression failed on most events of its recent window
        (None when no dispatcher reported a window yet)."""
        checked, errors = self.filter_recent_checked, self.filter_recent_errors
        if checked is None or errors is None:
            return None
        return errors > 0 and 2 * errors > checked

    # RFC 3339: when the oldest undelivered event became due (a delayed one when its
    # delay ended), once that is OLDEST_SHOWN_AFTER ago.
    oldest_undelivered: str | None = None
    expires_at: str | None = None  # RFC 3339: when that event hits maxAge or retention
    delayed: int | None = None  # delayed events not due yet; None: none

    def as_status(self) -> DeliveryStatus:
        """The `status.delivery` object (without lastFailure when none is recorded)."""
        failure = LastFailure(
            time=self.failure_time, status=self.failure_status, message=self.failure_message
        )
        return DeliveryStatus(
            state=self.state,
            lag=self.lag,
            dead_lettered=self.dead_lettered,
            expired=self.expired,
            last_failure=failure if failure != LastFailure() else None,
            filter_errors=self.filter_errors or None,
            last_filter_error=(
                LastFilterError(
                    time=self.filter_error_time,
                    reason=self.filter_error_reason,
                    message=self.filter_error_message,
                )
                if self.filter_error_message
                else None
            ),
            delayed=self.delayed,
            oldest_undelivered=self.oldest_undelivered,
            expires_at=self.expires_at,
        )

    def failure_summary(self) -> str:
        """The last failure in a few words, without its time (it goes in a message)."""
        parts = []
        if self.failure_status is not None:
            parts.append(f"HTTP {self.failure_status}")
        if self.failure_message:
            parts.append(self.failure_message[:200])
        return ": ".join(parts) if parts else "no failure recorded"


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def parse(raw: Mapping[Any, Any]) -> Reading | None:
    """A Reading from the state HASH (bytes or str keys); None when it is empty."""
    if not raw:
        return None
    fields = {text(k): text(v) for k, v in raw.items()}
    state = fields.get(keys.STATE_STATE)
    oldest_ms, expires_ms = (
        _int(fields.get(keys.STATE_OLDEST)),
        _int(fields.get(keys.STATE_EXPIRES)),
    )
    updated_ms = _int(fields.get(keys.STATE_UPDATED))
    shown = bool(oldest_ms and updated_ms and updated_ms - oldest_ms >= OLDEST_SHOWN_AFTER * 1000)
    return Reading(
        state=cast(DeliveryState, state) if state in STATES else None,
        lag=_int(fields.get(keys.STATE_LAG)),
        dead_lettered=_int(fields.get(keys.STATE_DEAD_LETTERED)),
        expired=_int(fields.get(keys.STATE_EXPIRED)),
        failure_time=fields.get(keys.STATE_LAST_FAILURE_TIME) or None,
        failure_status=_int(fields.get(keys.STATE_LAST_FAILURE_STATUS)),
        failure_message=fields.get(keys.STATE_LAST_FAILURE_MESSAGE) or None,
        updated_ms=updated_ms,
        oldest_undelivered=_rfc3339(oldest_ms) if shown and oldest_ms else None,
        expires_at=_rfc3339(expires_ms) if shown and expires_ms else None,
        delayed=_int(fields.get(keys.STATE_DELAYED)) or None,
        filter_errors=_int(fields.get(keys.STATE_FILTER_ERRORS)),
        filter_error_time=fields.get(keys.STATE_FILTER_LAST_TIME) or None,
        filter_error_reason=fields.get(keys.STATE_FILTER_LAST_REASON) or None,
        filter_error_message=fields.get(keys.STATE_FILTER_LAST_MESSAGE) or None,
        filter_recent_checked=_sum(
            fields, keys.STATE_FILTER_SPAN_CHECKED, keys.STATE_FILTER_PREVIOUS_CHECKED
        ),
        filter_recent_errors=_sum(
            fields, keys.STATE_FILTER_SPAN_ERRORS, keys.STATE_FILTER_PREVIOUS_ERRORS
        ),
        pending=_int(fields.get(keys.STATE_PENDING)),
        oldest_ms=oldest_ms,
    )


def _sum(fields: Mapping[str, str], *names: str) -> int | None:
    """The sum of integer fields, None when the first is absent."""
    if _int(fields.get(names[0])) is None:
        return None
    return sum(_int(fields.get(name)) or 0 for name in names)


def _rfc3339(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_status(delivery: DeliveryStatus | None) -> Reading | None:
    """The Reading last written into status.delivery (to settle against after a restart)."""
    if delivery is None or delivery == DeliveryStatus():
        return None
    failure = delivery.last_failure or LastFailure()
    filter_error = delivery.last_filter_error or LastFilterError()
    return Reading(
        state=delivery.state,
        lag=delivery.lag,
        dead_lettered=delivery.dead_lettered,
        expired=delivery.expired,
        failure_time=failure.time,
        failure_status=failure.status,
        failure_message=failure.message,
        filter_errors=delivery.filter_errors,
        filter_error_time=filter_error.time,
        filter_error_reason=filter_error.reason,
        filter_error_message=filter_error.message,
        delayed=delivery.delayed,
        oldest_undelivered=delivery.oldest_undelivered,
        expires_at=delivery.expires_at,
    )


async def read(redis: Redis, namespace: str, source: str, trigger: str) -> Reading | None:
    """The Trigger's report; written long ago, it is as fresh as the newest
    dispatcher heartbeat (dispatchers leave a Trigger at rest unwritten)."""
    raw = await redis.hgetall(keys.trigger_state(namespace, source, trigger))  # type: ignore[misc]
    reading = parse(raw)
    if reading is not None and reading.updated_ms is not None:
        alive = await _heartbeats.newest(redis)
        if alive is not None and alive > reading.updated_ms:
            reading = replace(reading, updated_ms=alive)
    return reading


class _Heartbeats:
    """The newest dispatcher heartbeat, read at most every CACHE_FOR seconds (the
    operator reads thousands of reports per pass)."""

    CACHE_FOR = 2.0

    def __init__(self) -> None:
        self._read: dict[int, tuple[float, int | None]] = {}  # id(redis) -> (when, value)

    async def newest(self, redis: Redis) -> int | None:
        now = time.monotonic()
        cached = self._read.get(id(redis))
        if cached is not None and now - cached[0] < self.CACHE_FOR:
            return cached[1]
        value = await heartbeat.newest(redis)
        self._read[id(redis)] = (now, value)
        return value


_heartbeats = _Heartbeats()


async def follow_news(
    redis: Redis, news: Callable[[str, str], None], missed: Callable[[], None]
) -> None:
    """Call `news(namespace, trigger)` for each report a dispatcher announces has
    news for status (keys.REPORT_NEWS), and `missed()` each time the subscription is
    made: announcements before it were not heard, whether it was lost meanwhile or
    is made for the first time while the operator has already read some Triggers
    (a Trigger read then, with no report yet, rests until announced). Runs until
    cancelled."""
    lost = False
    while True:
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(keys.REPORT_NEWS)
                lost = False
                missed()
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    namespace, _, trigger = text(message.get("data")).partition("/")
                    if trigger:
                        news(namespace, trigger)
        except (RedisError, OSError) as error:
            if not lost:
                log.warning("report news subscription lost (%s); retrying every 1s", error)
            lost = True
            await asyncio.sleep(1)
        except Exception:  # a bug: keep its traceback, and the subscription going
            log.exception("report news subscription failed; retrying in 1s")
            lost = True
            await asyncio.sleep(1)


def is_stale(reading: Reading | None, now_ms: int, stale_after: float) -> bool:
    if reading is None or reading.updated_ms is None:
        return False
    return now_ms - reading.updated_ms > stale_after * 1000


def _lag_moved(before: int | None, after: int | None) -> bool:
    if before is None or after is None:
        return before != after
    return abs(after - before) >= max(LAG_MIN_CHANGE, LAG_RELATIVE_CHANGE * before)


def settle(previous: Reading | None, fresh: Reading | None, since_write: float) -> Reading | None:
    """What to show: `fresh` when it differs meaningfully from `previous` (what status
    shows now), else `previous`. `since_write` is the time since status.delivery was
    last written (infinite when unknown)."""
    if (
        previous is None
        or fresh is None
        or previous.state != fresh.state
        or previous.filter_failing() != fresh.filter_failing()
    ):
        return fresh
    fresh = replace(fresh, updated_ms=previous.updated_ms)  # not a status field
    if since_write >= COUNTERS_INTERVAL and (
        (previous.dead_lettered, previous.expired) != (fresh.dead_lettered, fresh.expired)
        or (previous.failure_status, previous.failure_message)
        != (fresh.failure_status, fresh.failure_message)
        or (previous.filter_errors, previous.filter_error_message)
        != (fresh.filter_errors, fresh.filter_error_message)
    ):
        return fresh
    if since_write >= FAILURE_TIME_INTERVAL and previous.failure_time != fresh.failure_time:
        return fresh
    if since_write >= LAG_INTERVAL and _lag_moved(previous.lag, fresh.lag):
        return fresh
    # Delayed events: at once when the first is set aside or the last comes due, else
    # at the lag's pace.
    if (previous.delayed is None) != (fresh.delayed is None):
        return fresh
    if since_write >= LAG_INTERVAL and _lag_moved(previous.delayed, fresh.delayed):
        return fresh
    # The loss forecast: at once when it appears or goes, else at the lag's pace.
    if (previous.expires_at is None) != (fresh.expires_at is None):
        return fresh
    if since_write >= LAG_INTERVAL and previous.oldest_undelivered != fresh.oldest_undelivered:
        return fresh
    return previous


@dataclass(frozen=True)
class Transition:
    """A Kubernetes Event to record: type (Normal / Warning), reason, message."""

    type: str
    reason: str
    message: str


def backoff_transition(
    before: str | None, after: str | None, reading: Reading | None
) -> Transition | None:
    """The Event for a move into or out of Backoff, if this is one."""
    if before != "Backoff" and after == "Backoff":
        failure = reading.failure_summary() if reading else "no failure recorded"
        return Transition(
            "Warning",
            "BackoffStarted",
            f"the subscriber keeps failing ({failure}); delivery stopped, probing until it "
            "recovers",
        )
    if before == "Backoff" and after is not None and after != "Backoff":
        if after == "Paused":
            message = "left Backoff: the Trigger is paused"
        else:
            message = "the subscriber recovered; delivering again"
        return Transition("Normal", "BackoffEnded", message)
    return None


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
