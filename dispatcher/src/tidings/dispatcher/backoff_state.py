"""A Trigger's delivery state (DESIGN.md guarantee 5) and what it publishes.

    Delivering --(the subscriber looks down, all replicas together)--> Backoff
    Backoff    --(a probe is answered)--> Delivering, every scheduled retry due now,
                                          the local fetch size ramping up (slow start)

Down, per Trigger (`delivery.backoff`; decided in cursor_settle.lua, Redis's
clock): for a whole `window`, either nothing but failures (at least `minAttempts`
in a row), or at least `failureRatio` of the window's attempts (at least
`minAttempts` of them). The window defaults to twice retry.initialDelay, so it
holds the retries of the first attempts it saw fail: a subscriber that fails
every first attempt and answers every retry is flaky, not down, and keeps
being delivered to at full speed with retries; one that is down enters Backoff
after a window (2 s with the default retry policy). `window: 0s` is the old
rule: `minAttempts` failures in a row.

In Backoff no replica pulls new events or works through retries (cursor.py's
fetch returns nothing). One replica at a time probes the subscriber with the
Trigger's head event (its earliest scheduled retry, else the next unread
event), at intervals that double from the retry policy's initialDelay up to
its maxDelay, capped at `delivery.backoff.maxProbeInterval`. A failed probe does not count as an
attempt: an outage of days dead-letters nothing until an event's maxAge. The
first answered probe ends Backoff and the backlog drains at full speed.

The state lives in the Trigger's state HASH (keys.trigger_state, fields
keys.STATE_*), which is also what the operator reads for `status.delivery`:
state, lag, deadLettered, expired, lastFailure. `publish` refreshes lag and
counts there every second or so. The scripts are tidings/api/lua/backoff_*.lua;
their times are Redis's clock (TIME), except `updated`, the publisher's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from tidings.api import keys, scripts
from tidings.api.routes import Route
from tidings.api.text import text
from tidings.dispatcher.filtering import FilterCounts

# The span of the filter window (two spans: the current and the one before), seconds.
FILTER_SPAN = 60.0


@dataclass(frozen=True)
class Published:
    state: str
    lag: int
    pending: int
    retries: int
    parked: int
    dlq_size: int
    dead_lettered: int
    expired: int
    # When the oldest undelivered event became due (stored, or a delayed event's due
    # time); 0: none. An event not due yet is not undelivered: it is in `delayed`.
    oldest_ms: int
    expires_ms: int  # when it will hit maxAge or the source's retention; 0: none
    delayed: int = 0  # delayed events not due yet (deliverafter, delivery.delay)
    # The Trigger's first report: no dispatcher had published one before. Not part of
    # the state (two reports that differ only in this are the same report).
    first: bool = field(default=False, compare=False)

    def at_rest(self) -> bool:
        """Delivering with nothing waiting: the state stays true until an event comes
        (which wakes the Trigger), so it need not be rewritten meanwhile."""
        return self.state == keys.DELIVERING and not (
            self.lag or self.pending or self.retries or self.parked or self.oldest_ms
        )


def news_for_status(before: Published | None, after: Published) -> bool:
    """Whether the operator should read this report now (keys.REPORT_NEWS): it reads
    a report at rest only now and then (tidings.operator.health.Reading.at_rest), so
    whatever status would show differently is announced — leaving rest, delayed
    events set aside or all come due, a state change, new dead letters or
    expiries. A report still busy needs no news: the operator looks at those often.
    The Trigger's first report is news too: until there is one, the operator looks
    only now and then (a Trigger no dispatcher has taken up yet)."""
    if after.first:
        return True
    if before is None:
        return not after.at_rest() or after.delayed > 0
    if (before.state, before.dead_lettered, before.expired) != (
        after.state,
        after.dead_lettered,
        after.expired,
    ):
        return True
    if (before.delayed > 0) != (after.delayed > 0):
        return True
    return before.at_rest() and not after.at_rest()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class BackoffState:
    """The state machine's Redis side for one Trigger."""

    def __init__(self, redis: Redis, route: Route) -> None:
        self.redis = redis
        self.update(route)

    def update(self, route: Route) -> None:
        self.route = route
        ns, source, name = route.namespace, route.source, route.name
        self.state_key = keys.trigger_state(ns, source, name)
        self.retry_key = keys.retries(ns, source, name)
        self.parked_key = keys.parked(ns, source, name)
        self.dlq_key = keys.dead_letters(ns, source, name)
        self.held_key = keys.held(ns, source, name)
        self.delayed_key = keys.delayed(ns, source, name)
        retry = route.delivery.retry
        self.first_interval = max(0.1, retry.initial_delay)
        probe_max = route.delivery.backoff_max_probe_interval
        self.max_interval = max(self.first_interval, min(retry.max_delay, probe_max))

    async def enter(self) -> bool:
        """Into Backoff; False when it already was (another replica was first)."""
        entered = await scripts.BACKOFF_ENTER(
            self.redis, keys=[self.state_key], args=[_ms(self.first_interval)]
        )
        return bool(int(entered))

    async def claim_probe(self, lease_seconds: float) -> int:
        """-1 not in Backoff; 0 probe now; else ms until the next probe is due."""
        return int(
            await scripts.BACKOFF_CLAIM(
                self.redis, keys=[self.state_key], args=[_ms(lease_seconds)]
            )
        )

    async def probe_failed(self) -> float:
        interval = await scripts.BACKOFF_PROBE_FAILED(
            self.redis,
            keys=[self.state_key],
            args=[_ms(self.first_interval), _ms(self.max_interval)],
        )
        return float(interval) / 1000

    async def recover(self) -> int:
        return int(
            await scripts.BACKOFF_RECOVER(
                self.redis, keys=[self.state_key, self.retry_key, self.delayed_key]
            )
        )

    async def publish(
        self,
        retention_max_age: float = 0.0,
        filtered: FilterCounts | None = None,
        *,
        generation: int = 0,
        filter_span: float = FILTER_SPAN,
    ) -> Published:
        """Refresh the state HASH; `retention_max_age` (seconds) is the source's;
        `filtered` adds the filter expression's counts since the last publish, of the
        route `generation` they were taken under."""
        counts = filtered or FilterCounts()
        raw: list[Any] = await scripts.BACKOFF_PUBLISH(
            self.redis,
            keys=[
                self.route.stream,
                self.state_key,
                self.retry_key,
                self.parked_key,
                self.dlq_key,
                self.held_key,
                self.delayed_key,
            ],
            args=[
                self.route.group,
                "1" if self.route.paused else "0",
                int(time.time() * 1000),
                int(self.route.delivery.max_age * 1000),
                int(retention_max_age * 1000),
                generation,
                counts.checked,
                counts.failed,
                counts.last_time,
                counts.last_reason,
                counts.last_message,
                _ms(filter_span),
                int(self.route.delay * 1000),
            ],
        )
        numbers = [int(v) for v in raw[1:11]]
        return Published(
            text(raw[0]),
            lag=numbers[0],
            pending=numbers[1],
            retries=numbers[2],
            parked=numbers[3],
            dlq_size=numbers[4],
            dead_lettered=numbers[5],
            expired=numbers[6],
            oldest_ms=numbers[7],
            expires_ms=numbers[8],
            delayed=numbers[9],
            first=int(raw[11]) == 1,
        )
