"""Retention trims by maxEvents / maxAge, never an entry a Trigger still holds,
and counts what falls out undelivered per Trigger."""

from __future__ import annotations

import asyncio

import pytest
from dispatch_harness import Plane, Subscriber, wait_until

from tidings.api import keys, table
from tidings.api.events import CloudEvent
from tidings.api.text import text
from tidings.dispatcher import retention, streams


async def test_retention_never_trims_pending_or_scheduled_entries(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = lambda request: (503, {}, 0.0)
    source = await plane.add_source(maxEvents=50)
    await plane.dispatcher()
    route = await plane.add_trigger(
        "failing",
        subscriber.url,
        delivery={
            "retry": {"initialDelay": "1h", "jitter": 0},
            "backoff": {"minAttempts": 10**6},  # every event gets its first attempt
        },
    )
    await plane.publish(200)
    retries = keys.retries(route.namespace, route.source, route.name)

    async def all_scheduled() -> bool:
        return int(await plane.redis.zcard(retries)) == 200

    await wait_until(all_scheduled, 20, "200 retries scheduled")
    routes = (await table.load(plane.redis)).routes_of(plane.namespace, "src")
    result = await retention.trim(plane.redis, source, routes)
    trimmed, expired = result.trimmed, result.lost
    assert trimmed == 0 and expired == {}
    assert await plane.redis.xlen(plane.stream()) == 200
    for stream_id in await plane.redis.zrange(retries, 0, -1):
        assert await plane.redis.xrange(plane.stream(), stream_id, stream_id)


async def test_unread_events_beyond_max_events_are_trimmed_and_counted(
    plane: Plane, subscriber: Subscriber
) -> None:
    source = await plane.add_source(maxEvents=50)
    await plane.dispatcher()
    route = await plane.add_trigger("paused", subscriber.url, paused=True)
    await plane.publish(200)
    routes = (await table.load(plane.redis)).routes_of(plane.namespace, "src")
    result = await retention.trim(plane.redis, source, routes)
    trimmed, expired = result.trimmed, result.lost
    assert trimmed == 150
    assert expired == {route.id: 150}
    assert await plane.redis.xlen(plane.stream()) == 50
    assert (await plane.state(route))[keys.STATE_EXPIRED] == "150"
    # Once resumed, the Trigger gets what is left: the newest 50.
    await plane.add_trigger("paused", subscriber.url, paused=False, wait=False)
    await wait_until(lambda: len(subscriber.received) >= 50, 10, "50 deliveries")
    assert sorted(subscriber.ids()) == sorted(f"e-{i}" for i in range(150, 200))


async def test_a_source_far_over_max_events_is_trimmed_to_it_in_one_pass(
    plane: Plane, subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One script call trims TRIM_STEP entries; a pass goes on until the stream is
    # back at maxEvents, so a source ingesting more than TRIM_STEP per retention
    # interval does not grow without bound.
    monkeypatch.setattr(retention, "TRIM_STEP", 20)
    source = await plane.add_source(maxEvents=50)
    await plane.dispatcher()
    route = await plane.add_trigger("paused", subscriber.url, paused=True)
    await plane.publish(200)
    routes = (await table.load(plane.redis)).routes_of(plane.namespace, "src")
    result = await retention.trim(plane.redis, source, routes)
    assert (result.trimmed, result.lost) == (150, {route.id: 150})
    assert await plane.redis.xlen(plane.stream()) == 50
    assert (await plane.state(route))[keys.STATE_EXPIRED] == "150"


async def test_every_unread_event_past_max_age_is_counted_as_expired(
    plane: Plane, subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    # maxAge may put the cut far more than TRIM_STEP entries in (a backlog older
    # than maxAge): each call still trims at most TRIM_STEP, so every lost event
    # is counted, none silently.
    monkeypatch.setattr(retention, "TRIM_STEP", 20)
    source = await plane.add_source(maxAge="1ms")
    await plane.dispatcher()
    route = await plane.add_trigger("paused", subscriber.url, paused=True)
    await plane.publish(200)
    await asyncio.sleep(0.01)
    routes = (await table.load(plane.redis)).routes_of(plane.namespace, "src")
    result = await retention.trim(plane.redis, source, routes)
    assert (result.trimmed, result.lost) == (200, {route.id: 200})
    assert await plane.redis.xlen(plane.stream()) == 0
    assert (await plane.state(route))[keys.STATE_EXPIRED] == "200"


async def test_delivered_events_past_max_age_are_trimmed_without_counting(
    plane: Plane, subscriber: Subscriber
) -> None:
    source = await plane.add_source(maxAge="1ms")
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url)
    await plane.publish(30)
    await wait_until(lambda: len(subscriber.received) >= 30, 10, "30 deliveries")

    async def nothing_pending() -> bool:
        return int((await plane.redis.xpending(route.stream, route.group))["pending"]) == 0

    await wait_until(nothing_pending, 5, "all acknowledged")
    routes = (await table.load(plane.redis)).routes_of(plane.namespace, "src")
    result = await retention.trim(plane.redis, source, routes)
    trimmed, expired = result.trimmed, result.lost
    assert trimmed == 30 and expired == {}


async def test_the_event_id_index_is_trimmed_with_the_stream(
    plane: Plane, subscriber: Subscriber
) -> None:
    source = await plane.add_source(maxEvents=10)
    for batch in range(3):  # as ingest stores them (indexed), in three milliseconds
        events = [CloudEvent(f"i-{n}", "/t", "t") for n in range(batch * 10, batch * 10 + 10)]
        await streams.append(plane.redis, source, events)
        await asyncio.sleep(0.005)
    index = keys.event_index(plane.namespace, "src")
    assert await plane.redis.zcard(index) == 30
    trimmed = (await retention.trim(plane.redis, source, [])).trimmed
    assert trimmed == 20 and await plane.redis.xlen(plane.stream()) == 10
    # What the stream no longer holds cannot be found by id; the rest still can. (The
    # index is cut by millisecond: ids that shared the cut's ms would stay, and
    # `tidings trace` then finds no entry and says so.)
    kept = [text(i) for i in await plane.redis.zrange(index, 0, -1)]
    assert sorted(kept) == sorted(f"i-{n}" for n in range(20, 30))


async def test_entries_being_delivered_are_not_trimmed(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = lambda request: (200, {}, 1.5)
    source = await plane.add_source(maxEvents=1, maxAge="1ms")
    await plane.dispatcher()
    route = await plane.add_trigger("slow", subscriber.url)
    await plane.publish(20)

    async def all_pending() -> bool:
        return int((await plane.redis.xpending(route.stream, route.group))["pending"]) == 20

    await wait_until(all_pending, 5, "20 deliveries in flight")
    routes = (await table.load(plane.redis)).routes_of(plane.namespace, "src")
    result = await retention.trim(plane.redis, source, routes)
    assert (result.trimmed, result.lost) == (0, {})
    await wait_until(lambda: len(subscriber.received) >= 20, 10, "20 deliveries")


async def test_a_trim_says_when_its_source_next_has_something_to_trim_by_age(
    plane: Plane, subscriber: Subscriber
) -> None:
    source = await plane.add_source(maxAge="1h")
    route = await plane.add_trigger("t", subscriber.url, wait=False)
    empty = await retention.trim(plane.redis, source, [route])
    assert (empty.trimmed, empty.next_due_ms) == (0, 0)
    await plane.publish(3)
    (first_id, _), *_ = await plane.redis.xrange(plane.stream(), count=1)
    first_ms = int(text(first_id).split("-")[0])
    kept = await retention.trim(plane.redis, source, [route])
    assert (kept.trimmed, kept.next_due_ms) == (0, first_ms + 3_600_000)
    dlq = keys.dead_letters(plane.namespace, "src", "t")
    assert (await retention.trim_dead_letters(plane.redis, [route])).next_due_ms == 0
    await plane.redis.xadd(dlq, {"event": "{}"}, id=f"{first_ms}-0")
    dead = await retention.trim_dead_letters(plane.redis, [route])
    assert dead.next_due_ms == first_ms + int(route.delivery.dead_letter_max_age * 1000)
    assert retention.next_due_ms(kept, dead) == first_ms + 3_600_000


async def test_an_idle_source_is_trimmed_when_its_oldest_entry_comes_of_age(
    plane: Plane, subscriber: Subscriber
) -> None:
    """No Trigger fetches anything after the first events, yet the dispatcher's
    retention pass comes back when they reach maxAge (retention.Trimmed.next_due_ms)."""
    await plane.add_source(maxAge="3s")
    await plane.dispatcher(retention_interval=0.2)
    route = await plane.add_trigger("t", subscriber.url)
    await plane.publish(5)
    await wait_until(lambda: len(subscriber.received) >= 5, 10, "5 deliveries")
    await wait_until(lambda: plane.nothing_pending(route), 10, "all settled")

    async def trimmed() -> bool:
        return int(await plane.redis.xlen(plane.stream())) == 0

    await wait_until(trimmed, 10, "the delivered events trimmed once 3 s old")


async def test_a_source_whose_trigger_is_not_at_rest_is_held_at_max_events(
    plane: Plane, subscriber: Subscriber
) -> None:
    """Nothing is fetched for a paused (or lagging) Trigger, yet its source keeps
    being trimmed every retention interval, not only when its oldest entry ages."""
    await plane.add_source(maxEvents=50)
    dispatcher = await plane.dispatcher(retention_interval=0.2)
    route = await plane.add_trigger("paused", subscriber.url, paused=True)

    async def published() -> bool:
        worker = dispatcher.workers.get(route.id)
        return worker is not None and worker.published is not None

    await wait_until(published, 10, "the paused Trigger's state published")
    await asyncio.sleep(1.0)  # retention passes ran over the empty stream
    await plane.publish(200)

    async def held() -> bool:
        return int(await plane.redis.xlen(plane.stream())) == 50

    await wait_until(held, 10, "the dispatcher's retention pass held the stream at 50")
    assert subscriber.received == []
