"""An ordered Trigger's next event of a key starts from the settle that releases the
key (cursor_settle.lua): leased to the settling replica, in order, within the
limits, never in Backoff; otherwise it is left due for any replica's fetch."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

import pytest
from aiohttp import web
from dispatch_harness import Plane, Subscriber, wait_until

from tidings.api import keys
from tidings.api.events import CloudEvent
from tidings.api.routes import Route
from tidings.dispatcher.backoff_state import BackoffState
from tidings.dispatcher.cursor import Cursor, Entry, Fetched, Op, Origin, Outcome

LEASE_MS = 300
ORDERED = {"ordering": {"key": "event.subject"}}


def ids(entries: list[Entry]) -> list[str]:
    return [json.loads(e.event_json)["id"] for e in entries]


async def ordered_trigger(plane: Plane, url: str, **delivery: Any) -> Route:
    await plane.add_source()
    route = await plane.add_trigger("t", url, wait=False, delivery={**ORDERED, **delivery})
    await plane.redis.xgroup_create(route.stream, route.group, id="0", mkstream=True)
    return route


async def test_settling_a_key_starts_its_next_event_here_in_order_across_replicas(
    plane: Plane, subscriber: Subscriber
) -> None:
    route = await ordered_trigger(plane, subscriber.url)
    await plane.publish(4, subject="k")
    a, b = Cursor(plane.redis, route, "a"), Cursor(plane.redis, route, "b")
    fetched = await a.fetch(10, LEASE_MS)
    assert ids(fetched.entries) == ["e-0"]  # e-1..e-3 wait behind it
    assert (await b.fetch(10, LEASE_MS)).entries == []

    settled = await a.settle([Outcome(Op.OK, fetched.entries[0])], hand_on=10, lease_ms=LEASE_MS)
    assert ids(settled.started) == ["e-1"]
    assert (settled.started[0].origin, settled.started[0].order_key) == (Origin.RETRY, "kk")
    assert settled.released == 0
    assert (await b.fetch(10, LEASE_MS)).entries == []  # e-1 is leased to a

    # a dies holding e-1: once its lease runs out, b goes on from e-1, in order.
    await asyncio.sleep(LEASE_MS / 1000 + 0.2)
    fetched = await b.fetch(10, LEASE_MS)
    assert ids(fetched.entries) == ["e-1"]
    settled = await b.settle([Outcome(Op.OK, fetched.entries[0])], hand_on=10, lease_ms=LEASE_MS)
    assert ids(settled.started) == ["e-2"]
    # A dead letter releases its key too, and hands it on.
    dead = Outcome(Op.DEAD, settled.started[0], attempts=1, message="refused")
    settled = await b.settle([dead], hand_on=10, lease_ms=LEASE_MS)
    assert ids(settled.started) == ["e-3"]
    settled = await b.settle([Outcome(Op.OK, settled.started[0])], hand_on=10, lease_ms=LEASE_MS)
    assert (settled.started, settled.released) == ([], 0)
    ordering = keys.ordering(route.namespace, route.source, route.name)
    parked = keys.parked(route.namespace, route.source, route.name)
    assert await plane.redis.hlen(ordering) == 0
    assert await plane.redis.zcard(parked) == 0
    assert int((await plane.redis.xpending(route.stream, route.group))["pending"]) == 0


async def test_with_no_room_here_the_next_event_is_left_due_for_a_fetch(
    plane: Plane, subscriber: Subscriber
) -> None:
    route = await ordered_trigger(plane, subscriber.url)
    await plane.publish(2, subject="k")
    fetched = await Cursor(plane.redis, route, "a").fetch(10, LEASE_MS)
    settled = await Cursor(plane.redis, route, "a").settle(
        [Outcome(Op.OK, fetched.entries[0])], hand_on=0, lease_ms=LEASE_MS
    )
    assert (settled.started, settled.released) == ([], 1)
    assert ids((await Cursor(plane.redis, route, "b").fetch(10, LEASE_MS)).entries) == ["e-1"]


async def test_the_rate_limit_holds_for_the_next_event_of_a_key(
    plane: Plane, subscriber: Subscriber
) -> None:
    route = await ordered_trigger(plane, subscriber.url, rateLimit={"perSecond": 0.01, "burst": 2})
    await plane.publish(2, subject="k")
    a, b = Cursor(plane.redis, route, "a"), Cursor(plane.redis, route, "b")
    fetched = await a.fetch(10, LEASE_MS)
    assert ids(fetched.entries) == ["e-0"]  # e-1 waits behind it
    await plane.publish(1, subject="j", prefix="j")
    assert ids((await b.fetch(10, LEASE_MS)).entries) == ["j-0"]  # the last token
    settled = await a.settle([Outcome(Op.OK, fetched.entries[0])], hand_on=10, lease_ms=LEASE_MS)
    assert (settled.started, settled.released) == ([], 1)
    assert (await b.fetch(10, LEASE_MS)).entries == []  # e-1 is due, and waits for a token


async def test_a_trigger_in_backoff_hands_nothing_on(plane: Plane, subscriber: Subscriber) -> None:
    route = await ordered_trigger(plane, subscriber.url)
    await plane.publish(2, subject="k")
    cursor = Cursor(plane.redis, route, "a")
    fetched = await cursor.fetch(10, LEASE_MS)
    assert await BackoffState(plane.redis, route).enter()
    settled = await cursor.settle([Outcome(Op.OK, fetched.entries[0])], hand_on=10, lease_ms=0)
    assert (settled.started, settled.released) == ([], 1)


async def test_two_dispatchers_deliver_each_next_event_from_the_settle_in_order(
    plane: Plane, subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every fetch is recorded: after the first event of each key, none should carry
    # that key's events; the settles start them.
    fetched_ids: list[str] = []
    real_fetch = Cursor.fetch

    async def recording_fetch(self: Cursor, *args: Any, **kwargs: Any) -> Fetched:
        fetched = await real_fetch(self, *args, **kwargs)
        fetched_ids.extend(ids(fetched.entries))
        return fetched

    monkeypatch.setattr(Cursor, "fetch", recording_fetch)

    def behaviour(request: web.Request) -> tuple[int, dict[str, str], float]:
        return 200, {}, 0.005

    subscriber.behaviour = behaviour
    await plane.add_source()
    await plane.dispatcher()
    await plane.dispatcher()
    await plane.add_trigger("t", subscriber.url, delivery=ORDERED)
    events = [
        CloudEvent(id=f"{k}-{i}", source="/test", type="t", subject=k, data={"i": i})
        for i in range(20)
        for k in ("a", "b", "c")
    ]
    await plane.publish_events(events)
    await wait_until(lambda: len(subscriber.received) >= 60, 30, "60 deliveries")
    per_key: dict[str, list[int]] = defaultdict(list)
    for received in subscriber.received:
        key, index = received.id.split("-")
        per_key[key].append(int(index))
    assert per_key == {k: list(range(20)) for k in ("a", "b", "c")}
    assert sorted(fetched_ids) == ["a-0", "b-0", "c-0"]


async def test_a_hot_key_longer_than_a_batch_is_read_on_and_delivered_in_order(
    plane: Plane, subscriber: Subscriber
) -> None:
    # Each read of 10 parks behind the key's head; the worker reads on (status
    # "more") rather than waiting for new entries that never come.
    await plane.add_source()
    await plane.dispatcher(batch=10)
    await plane.add_trigger("t", subscriber.url, delivery=ORDERED)
    await plane.publish(50, subject="k")
    await wait_until(lambda: len(subscriber.received) >= 50, 30, "50 deliveries")
    assert subscriber.ids() == [f"e-{i}" for i in range(50)]
