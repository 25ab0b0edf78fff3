"""Guarantee 6: SIGKILL loses nothing, SIGTERM drains, a slow delivery is not duplicated."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

from aiohttp import web
from dispatch_harness import Plane, Subscriber, wait_until

from tidings.dispatcher import deadletter


def slow(seconds: float):  # type: ignore[no-untyped-def]
    def behaviour(request: web.Request) -> tuple[int, dict[str, str], float]:
        return 200, {}, seconds

    return behaviour


async def test_sigkill_in_the_middle_of_5000_deliveries_loses_none(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = slow(3.0)
    await plane.add_source()
    first = plane.spawn("first", "--max-in-flight", "5000")
    route = await plane.add_trigger(
        "t", subscriber.url, delivery={"concurrency": 5000, "timeout": "10s"}
    )
    ids = await plane.publish(5000)

    async def all_read() -> bool:
        pending = await plane.redis.xpending(route.stream, route.group)
        return int(pending["pending"]) >= 3000

    # Thousands read and unanswered at the kill (the loopback subscriber in this
    # process cannot hold all 5,000 open at once reliably); the rest still unread.
    await wait_until(all_read, 30, "the first dispatcher has 3000+ events in flight")
    await wait_until(lambda: subscriber.in_flight >= 100, 30, "deliveries in flight")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert len(subscriber.received) < 5000  # killed mid-way

    plane.spawn("second", "--max-in-flight", "5000")
    await wait_until(
        lambda: set(subscriber.ids()) >= set(ids), 90, "all 5000 delivered by the second"
    )

    async def settled() -> bool:
        return int((await plane.redis.xpending(route.stream, route.group))["pending"]) == 0

    await wait_until(settled, 30, "nothing left pending")
    assert await deadletter.read(plane.redis, route.namespace, route.source, route.name) == []


async def test_sigterm_drains_in_flight_deliveries_without_duplicates(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = slow(1.5)
    await plane.add_source()
    first = plane.spawn("first", "--grace", "10")
    route = await plane.add_trigger("t", subscriber.url, delivery={"concurrency": 50})
    ids = await plane.publish(300)
    await wait_until(lambda: subscriber.in_flight >= 50, 20, "50 deliveries in flight")
    first.send_signal(signal.SIGTERM)
    returncode = await asyncio.to_thread(first.wait, 15)
    assert returncode == 0
    # Everything it had started was delivered and acknowledged before it exited.
    pending = await plane.redis.xpending(route.stream, route.group)
    assert int(pending["pending"]) == 0
    drained = len(subscriber.received)
    assert drained >= 50

    plane.spawn("second")
    await wait_until(lambda: len(subscriber.received) >= 300, 60, "the rest delivered")
    counts = Counter(subscriber.ids())
    assert sorted(counts) == sorted(ids)
    assert max(counts.values()) == 1  # drained, so no event was delivered twice


async def test_a_slow_but_alive_delivery_is_not_duplicated_by_another_dispatcher(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = slow(2.0)
    await plane.add_source()
    await plane.dispatcher()
    await plane.dispatcher()
    await plane.add_trigger("t", subscriber.url, delivery={"timeout": "3s"})
    await plane.publish(20)
    await wait_until(lambda: len(subscriber.received) >= 20, 20, "20 deliveries")
    await asyncio.sleep(2.0)  # reclaim checks run every second
    assert len(subscriber.attempts) == 20
