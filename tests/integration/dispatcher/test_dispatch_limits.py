"""Concurrency and rate limits hold across dispatchers; ordering per key."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from aiohttp import web
from dispatch_harness import Plane, Subscriber, wait_until

from tidings.api.events import CloudEvent


async def test_concurrency_limit_holds_across_two_dispatchers(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = lambda request: (200, {}, 0.1)
    await plane.add_source()
    await plane.dispatcher()
    await plane.dispatcher()
    await plane.add_trigger("t", subscriber.url, delivery={"concurrency": 5})
    await plane.publish(100)
    await wait_until(lambda: len(subscriber.received) >= 100, 20, "100 deliveries")
    assert subscriber.max_in_flight == 5


async def test_rate_limit_across_two_dispatcher_processes_within_10_percent(
    plane: Plane, subscriber: Subscriber
) -> None:
    await plane.add_source()
    plane.spawn("one")
    plane.spawn("two")
    route = await plane.add_trigger(
        "t", subscriber.url, delivery={"rateLimit": {"perSecond": 40, "burst": 5}}
    )
    await plane.publish(600)
    await asyncio.sleep(2.0)  # both processes are pulling; the burst is spent
    start = len(subscriber.received)
    await asyncio.sleep(6.0)
    rate = (len(subscriber.received) - start) / 6.0
    assert 36 <= rate <= 44, f"{rate:.1f}/s against a limit of 40/s"
    consumers = await plane.redis.xinfo_consumers(route.stream, route.group)
    assert len(consumers) == 2  # both took part


async def test_events_of_one_key_arrive_in_order_and_a_failing_key_blocks_only_itself(
    plane: Plane, subscriber: Subscriber
) -> None:
    failed_once: set[str] = set()

    def behaviour(request: web.Request) -> tuple[int, dict[str, str], float]:
        # The first event of key k1 fails twice: k1 waits, k0/k2/k3 go on.
        event_id = request.headers["webhook-id"]
        if event_id == "k1-0" and len([x for x in failed_once if x.startswith("k1-0")]) < 2:
            failed_once.add(f"k1-0#{len(failed_once)}")
            return 503, {}, 0.0
        return 200, {}, 0.01

    subscriber.behaviour = behaviour
    await plane.add_source()
    await plane.dispatcher()
    await plane.dispatcher()
    await plane.add_trigger(
        "t",
        subscriber.url,
        delivery={
            "ordering": {"key": "event.subject"},
            "retry": {"initialDelay": "500ms", "jitter": 0},
        },
    )
    events = [
        CloudEvent(id=f"k{k}-{i}", source="/test", type="t", subject=f"k{k}", data={"i": i})
        for i in range(25)
        for k in range(4)
    ]
    await plane.publish_events(events)
    await wait_until(lambda: len(subscriber.received) >= 100, 30, "100 deliveries")
    per_key: dict[str, list[int]] = defaultdict(list)
    first_k1 = min(r.at for r in subscriber.received if r.id.startswith("k1-"))
    others_done = max(r.at for r in subscriber.received if not r.id.startswith("k1-"))
    for received in subscriber.received:
        key, index = received.id.split("-")
        per_key[key].append(int(index))
    for key, order in per_key.items():
        assert order == list(range(25)), f"{key} out of order: {order}"
    assert others_done < first_k1 + 0.5  # the other keys did not wait for k1's retries
