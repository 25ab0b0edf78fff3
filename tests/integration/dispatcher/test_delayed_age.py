"""The oldest undelivered event's age counts an event from when it became due: a
delayed event (delivery.delay, deliverafter) waiting for its time is scheduled, not
late — counted in `tidings_delayed_events`, not in the age (which the
TidingsOldestUndeliveredTooOld alert watches) — and once due and undelivered it
counts from its due time, not from when it was stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from dispatch_harness import Plane, Subscriber, wait_until
from prometheus_client import CollectorRegistry

from tidings.api import keys
from tidings.api.events import CloudEvent, encode
from tidings.api.routes import Route
from tidings.dispatcher.backoff_state import BackoffState
from tidings.dispatcher.cursor import Cursor

MINUTE = 60_000  # ms


def down(request: web.Request) -> tuple[int, dict[str, str], float]:
    return 503, {}, 0.0


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


async def store(plane: Plane, event_id: str, stored_ms: int, seq: int = 0, **ext: str) -> None:
    """XADD an event as ingest stored it at `stored_ms` (stream id and all)."""
    event = CloudEvent(event_id, "/t", "t", extensions=dict(ext))
    fields = encode(event, stored_ms)
    await plane.redis.xadd(plane.stream(), fields, id=f"{stored_ms}-{seq}")  # type: ignore[arg-type]


class Gauges:
    def __init__(self, registry: CollectorRegistry, route: Route) -> None:
        self.registry, self.route = registry, route

    def __call__(self, name: str) -> float | None:
        return self.registry.get_sample_value(name, {"trigger": self.route.id})

    def age(self) -> float:
        return self("tidings_oldest_undelivered_age_seconds") or 0.0


async def start(plane: Plane, subscriber: Subscriber, *, failing: bool, **delivery: Any) -> Gauges:
    """A dispatcher publishing every 0.2 s and a Trigger "t" with `delivery`; its
    subscriber answers 503 when `failing`."""
    if failing:
        subscriber.behaviour = down
    registry = CollectorRegistry()
    await plane.add_source()
    await plane.dispatcher(registry=registry, publish_interval=0.2)
    return Gauges(registry, await plane.add_trigger("t", subscriber.url, delivery=delivery))


def retrying(
    plane: Plane, gauges: Gauges, route: Route, retries: int, delayed: int
) -> Callable[[], Awaitable[bool]]:
    """Published: `retries` retrying (the backlog) and `delayed` set aside."""

    async def check() -> bool:
        state = await plane.state(route)
        return gauges("tidings_backlog_events") == retries and state.get(keys.STATE_DELAYED) == str(
            delayed
        )

    return check


async def test_events_waiting_for_a_two_hour_delay_are_not_late(
    plane: Plane, subscriber: Subscriber
) -> None:
    gauges = await start(plane, subscriber, failing=False, delay="2h")
    route = gauges.route
    now = int(time.time() * 1000)
    # Stored 90 minutes ago: due in 30 minutes. And three stored now.
    await store(plane, "early", now - 90 * MINUTE)
    await plane.publish(3)

    async def published() -> bool:
        return (
            gauges("tidings_trigger_lag") == 0
            and (await plane.state(route)).get(keys.STATE_DELAYED) == "4"
        )

    await wait_until(published, 10, "4 delayed published")
    await asyncio.sleep(0.5)  # a publish or two later: the gauges are set after the write
    assert gauges.age() == 0  # not 90 minutes: nothing is late
    assert gauges("tidings_delayed_events") == 4
    assert gauges("tidings_time_to_expiry_seconds") == float("inf")
    assert gauges("tidings_trigger_lag") == 0
    state = await plane.state(route)
    assert (state[keys.STATE_OLDEST], state[keys.STATE_DELAYED]) == ("0", "4")
    assert subscriber.received == []


async def test_a_delayed_event_due_and_undelivered_counts_from_its_due_time(
    plane: Plane, subscriber: Subscriber
) -> None:
    gauges = await start(plane, subscriber, failing=True, delay="2h", retry={"initialDelay": "1h"})
    route = gauges.route
    now = int(time.time() * 1000)
    # Stored 130 minutes ago: due 10 minutes ago, tried once and retrying in an hour.
    await store(plane, "due", now - 130 * MINUTE)
    await store(plane, "early", now - 90 * MINUTE)  # due in 30 minutes
    await plane.publish(2)

    await wait_until(lambda: len(subscriber.attempts) == 1, 10, "the due event's attempt")
    assert [a.id for a in subscriber.attempts] == ["due"]

    await wait_until(retrying(plane, gauges, route, 1, 3), 10, "3 delayed, 1 retrying")
    assert 600 <= gauges.age() < 620  # 10 minutes, not 130
    assert gauges("tidings_delayed_events") == 3
    expiry = gauges("tidings_time_to_expiry_seconds") or 0.0
    assert abs(expiry - (72 * 3600 - gauges.age())) < 5  # maxAge (72h) from its due time
    state = await plane.state(route)
    assert abs(int(state[keys.STATE_OLDEST]) - (now - 10 * MINUTE)) < 1000


async def test_deliverafter_events_not_due_hide_no_late_event_behind_them(
    plane: Plane, subscriber: Subscriber
) -> None:
    gauges = await start(plane, subscriber, failing=True, retry={"initialDelay": "1h"})
    route = gauges.route
    now = int(time.time() * 1000)
    # Stored two hours ago for five minutes ago: late by 5 minutes, not by 2 hours.
    await store(plane, "reminder", now - 120 * MINUTE, deliverafter=rfc3339(now - 5 * MINUTE))
    # 40 stored 100 minutes ago for an hour from now: scheduled (more than the
    # publish script looks at in one walk).
    for seq in range(40):
        await store(
            plane, f"later-{seq}", now - 100 * MINUTE, seq, deliverafter=rfc3339(now + 60 * MINUTE)
        )
    # Stored 20 minutes ago, no deliverafter: the oldest undelivered, 20 minutes late.
    await store(plane, "plain", now - 20 * MINUTE)

    await wait_until(lambda: len(subscriber.attempts) == 2, 10, "the two due events' attempts")
    assert sorted(a.id for a in subscriber.attempts) == ["plain", "reminder"]

    await wait_until(retrying(plane, gauges, route, 2, 40), 10, "40 delayed, 2 retrying")
    assert 1200 <= gauges.age() < 1220  # "plain": 20 minutes, not "reminder"'s stored 2 h
    assert gauges("tidings_delayed_events") == 40


async def test_max_age_counts_from_the_due_time_the_fetch_uses(
    plane: Plane, subscriber: Subscriber
) -> None:
    """With both deliverafter and delivery.delay an event is due at the later of its
    deliverafter and its time stored + the delay (cursor_fetch.lua), and maxAge
    counts from that same time, not from deliverafter + the delay."""
    gauges = await start(plane, subscriber, failing=False, delay="2h", maxAge="30m")
    route = gauges.route
    now = int(time.time() * 1000)
    # Stored 5 hours ago (+ 2h: 3 hours ago), deliverafter later than that: due then.
    await store(plane, "late", now - 300 * MINUTE, 0, deliverafter=rfc3339(now - 60 * MINUTE))
    await store(plane, "fresh", now - 300 * MINUTE, 1, deliverafter=rfc3339(now - 10 * MINUTE))

    dlq = keys.dead_letters(route.namespace, route.source, route.name)

    async def settled() -> bool:
        return bool(subscriber.received) and int(await plane.redis.xlen(dlq)) == 1

    await wait_until(settled, 10, "one delivered, one dead-lettered")
    assert [r.id for r in subscriber.received] == ["fresh"]  # due 10 minutes ago
    [(_, fields)] = await plane.redis.xrange(dlq)
    text = {k.decode(): v.decode() for k, v in fields.items()}
    assert "late" in text.get("event", "")  # due an hour ago: past maxAge (30m)
    assert "maxAge" in str(text)


async def test_a_delayed_event_due_and_not_fetched_is_forecast_lost_to_retention(
    plane: Plane, subscriber: Subscriber
) -> None:
    """Once due, a delayed event no fetch has taken (its Trigger in Backoff) no longer
    holds retention back (retention_trim.lua): the loss forecast counts the
    source's retention from its time stored, as for a retry."""
    await plane.add_source(maxAge="1h")
    route = await plane.add_trigger("t", subscriber.url, wait=False, delivery={"delay": "1s"})
    await plane.redis.xgroup_create(route.stream, route.group, id="0", mkstream=True)
    stored = int(time.time() * 1000)
    await store(plane, "soon", stored)
    assert (await Cursor(plane.redis, route, "a").fetch(1, 60_000)).entries == []  # set aside
    await asyncio.sleep(1.2)  # due, not fetched
    published = await BackoffState(plane.redis, route).publish(retention_max_age=3600.0)
    assert published.oldest_ms == stored + 1000
    assert published.expires_ms == stored + 3_600_000  # not its due time + maxAge (72h)


async def test_events_set_aside_are_published_though_the_trigger_is_at_rest(
    plane: Plane, subscriber: Subscriber
) -> None:
    """A Trigger whose events all wait for their delay is at rest (nothing late), and
    an idle Trigger at rest skips its publishes; events set aside are a change all
    the same: the delayed count follows them."""
    gauges = await start(plane, subscriber, failing=False, delay="2h")
    route = gauges.route

    async def delayed(count: int) -> bool:
        return (await plane.state(route)).get(keys.STATE_DELAYED) == str(count)

    await plane.publish(1, prefix="first")
    await wait_until(lambda: delayed(1), 10, "1 delayed published")
    await asyncio.sleep(1.0)  # at rest: publishes are skipped from here on
    await plane.publish(3, prefix="then")
    await wait_until(lambda: delayed(4), 5, "4 delayed published")
    assert subscriber.received == []
