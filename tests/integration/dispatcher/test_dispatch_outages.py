"""Guarantee 5 and isolation: long outages put a Trigger in Backoff instead of
burning attempts; one failing subscriber holds back only its own Trigger."""

from __future__ import annotations

import asyncio
import itertools
import time

from aiohttp import web
from dispatch_harness import Plane, Subscriber, wait_until

from tidings.api import keys
from tidings.dispatcher import deadletter

# Without Backoff these would exhaust 6 attempts in ~6 s and dead-letter everything.
SHORT_RETRIES = {"maxAttempts": 6, "initialDelay": "200ms", "maxDelay": "2s", "jitter": 0}


class Outage:
    """503 until `until` (time.time()), then 200."""

    def __init__(self, seconds: float) -> None:
        self.until = time.time() + seconds

    def __call__(self, request: web.Request) -> tuple[int, dict[str, str], float]:
        return (503 if time.time() < self.until else 200), {}, 0.0


async def test_a_30s_outage_delivers_everything_after_and_dead_letters_nothing(
    plane: Plane, subscriber: Subscriber
) -> None:
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url, delivery={"retry": SHORT_RETRIES})
    outage = Outage(30)
    subscriber.behaviour = outage
    ids = await plane.publish(100, prefix="before")
    await wait_until(lambda: state_is(plane, route, "Backoff"), 10, "Backoff entered")
    before_backoff = len(subscriber.attempts)
    state = await plane.state(route)
    assert state[keys.STATE_LAST_FAILURE_STATUS] == "503"
    # Events keep arriving during the outage; the backlog waits in the stream.
    for batch in range(5):
        ids += await plane.publish(20, prefix=f"during{batch}")
        await asyncio.sleep(4)
    attempts_during = len(subscriber.attempts) - before_backoff
    await wait_until(lambda: time.time() > outage.until, 40, "outage over")
    await wait_until(lambda: set(subscriber.ids()) >= set(ids), 60, "all 200 delivered after")
    assert await deadletter.read(plane.redis, route.namespace, route.source, route.name) == []
    await wait_until(lambda: state_is(plane, route, "Delivering"), 5, "Delivering again")
    # Backoff means probing, not hammering: a few dozen attempts in the ~29 s after
    # the first window (1 s of retries) said "down", not thousands.
    assert attempts_during < 100


async def test_backoff_probes_at_growing_intervals(plane: Plane, subscriber: Subscriber) -> None:
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger(
        "t",
        subscriber.url,
        delivery={"retry": {**SHORT_RETRIES, "initialDelay": "100ms", "maxDelay": "800ms"}},
    )
    subscriber.behaviour = Outage(8)
    await plane.publish(10)
    await wait_until(lambda: state_is(plane, route, "Backoff"), 10, "Backoff entered")
    entered = time.time()
    await wait_until(lambda: subscriber.received, 20, "delivered after the outage")
    probes = [a.at for a in subscriber.attempts if entered <= a.at]
    gaps = [b - a for a, b in itertools.pairwise(probes) if b - a > 0.05]
    assert len(gaps) >= 3, "probes happened"
    assert gaps[0] < 0.5 < max(gaps)  # the interval grew
    assert max(gaps) <= 0.8 + 0.5  # capped at maxDelay
    assert len(probes) < 30  # not a retry storm
    await wait_until(lambda: len(set(subscriber.ids())) >= 10, 10, "the backlog drained")


async def test_a_timing_out_subscriber_does_not_stall_another_trigger(
    plane: Plane, subscriber: Subscriber
) -> None:
    stuck = await Subscriber().start()
    try:
        stuck.behaviour = lambda request: (200, {}, 2.5)
        await plane.add_source()
        await plane.dispatcher()
        await plane.add_trigger("stuck", stuck.url, delivery={"timeout": "1s"})
        await plane.add_trigger("healthy", subscriber.url)
        started = time.monotonic()
        ids = await plane.publish(500)
        await wait_until(lambda: len(subscriber.received) >= 500, 10, "healthy got all 500")
        assert time.monotonic() - started < 5
        assert sorted(subscriber.ids()) == sorted(ids)
    finally:
        await stuck.stop()


async def state_is(plane: Plane, route: object, state: str) -> bool:
    return (await plane.state(route)).get(keys.STATE_STATE) == state  # type: ignore[arg-type]
