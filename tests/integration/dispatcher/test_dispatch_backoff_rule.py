"""delivery.backoff: Backoff is for a subscriber that is down, not for one that is
flaky. A real dispatcher, real Redis, a real subscriber on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from dispatch_harness import Plane, Subscriber, wait_until

from tidings.api import keys
from tidings.api.routes import Route, default_backoff_window
from tidings.dispatcher import deadletter
from tidings.dispatcher.engine import cancel

# The default window is twice initialDelay, at least 1 s: 1 s here.
QUICK = {"maxAttempts": 12, "initialDelay": "200ms", "maxDelay": "2s", "jitter": 0}


Answer = tuple[int, dict[str, str], float]


def fail_first_attempts() -> Callable[[web.Request], Answer]:
    """503 to the first attempt of every event, 200 to every retry."""
    seen: set[str] = set()

    def behaviour(request: web.Request) -> Answer:
        event_id = request.headers["webhook-id"]
        if event_id in seen:
            return 200, {}, 0.0
        seen.add(event_id)
        return 503, {}, 0.0

    return behaviour


@contextlib.asynccontextmanager
async def states_seen(plane: Plane, route: Route) -> AsyncIterator[set[str]]:
    """Every delivery state the Trigger's HASH showed, sampled every 20 ms."""
    seen: set[str] = set()

    async def watch() -> None:
        while True:
            seen.add((await plane.state(route)).get(keys.STATE_STATE, ""))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(watch())
    try:
        yield seen
    finally:
        # engine.cancel cancels until the task ends: on Python 3.11 a cancel landing
        # inside redis-py's own timeout handling can be swallowed (one await hung
        # this test until pytest's timeout).
        await cancel({task})


async def in_backoff(plane: Plane, route: Route) -> bool:
    return (await plane.state(route)).get(keys.STATE_STATE) == "Backoff"


def test_the_default_window_holds_the_first_retries() -> None:
    assert default_backoff_window(1.0) == 2.0
    assert default_backoff_window(0.1) == 1.0  # a window needs a few samples
    assert default_backoff_window(3600) == 300.0  # a down subscriber still waits <= 5 min


async def test_failing_every_first_attempt_is_flaky_not_down(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = fail_first_attempts()
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url, delivery={"retry": QUICK})
    async with states_seen(plane, route) as seen:
        ids = await plane.publish(1500)
        await wait_until(lambda: set(subscriber.ids()) >= set(ids), 60, "all 1500 delivered")
    # Under the old rule (5 failures in a row) the first batch's 503s put it in Backoff.
    assert "Backoff" not in seen
    assert len(subscriber.attempts) == 3000  # each event: one 503, one 200
    assert await deadletter.read(plane.redis, route.namespace, route.source, route.name) == []


async def test_a_down_subscriber_enters_backoff_after_one_window(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = lambda request: (503, {}, 0.0)
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url, delivery={"retry": QUICK})
    started = time.monotonic()
    await plane.publish(200)
    await wait_until(lambda: in_backoff(plane, route), 15, "Backoff entered")
    # Not before a whole window (1 s) of nothing but failures.
    assert time.monotonic() - started >= 0.9
    state = await plane.state(route)
    assert int(state[keys.STATE_FAILURES]) >= 5


async def test_a_mostly_down_subscriber_enters_backoff_by_the_failure_ratio(
    plane: Plane, subscriber: Subscriber
) -> None:
    # One request in 25 answered: runs of failures keep being broken by an answer,
    # while the window's ratio (0.96) says "down".
    counter = itertools.count()
    subscriber.behaviour = lambda request: (200 if next(counter) % 25 == 0 else 503, {}, 0.0)
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url, delivery={"retry": QUICK})
    await plane.publish(400)
    await wait_until(lambda: in_backoff(plane, route), 20, "Backoff entered")
    state = await plane.state(route)
    assert float(state[keys.STATE_WINDOW_FAILURES]) >= 0.9 * float(
        state[keys.STATE_WINDOW_ATTEMPTS]
    )


async def test_half_failing_at_random_stays_out_of_backoff_under_a_ratio_of_0_9(
    plane: Plane, subscriber: Subscriber
) -> None:
    coin = random.Random(7)
    subscriber.behaviour = lambda request: (503 if coin.random() < 0.5 else 200, {}, 0.0)
    await plane.add_source()
    await plane.dispatcher()
    # 40 attempts: no event runs out of them at 1 in 2 (2^-40), so all are delivered.
    retry = {**QUICK, "maxAttempts": 40, "maxDelay": "400ms"}
    route = await plane.add_trigger("t", subscriber.url, delivery={"retry": retry})
    async with states_seen(plane, route) as seen:
        ids = await plane.publish(1000)
        await wait_until(lambda: set(subscriber.ids()) >= set(ids), 90, "all 1000 delivered")
    assert "Backoff" not in seen


async def test_a_low_volume_outage_still_enters_backoff(
    plane: Plane, subscriber: Subscriber
) -> None:
    # Two events, far fewer attempts than a window needs for the ratio: the run of
    # failures (5 in a row, spanning a window) is what says "down".
    subscriber.behaviour = lambda request: (503, {}, 0.0)
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url, delivery={"retry": QUICK})
    await plane.publish(2)
    await wait_until(lambda: in_backoff(plane, route), 15, "Backoff entered")
    assert len(subscriber.attempts) <= 12  # entered after a few retries, not at maxAttempts


async def test_recovery_ramps_concurrency_up_and_max_probe_interval_caps_probes(
    plane: Plane, subscriber: Subscriber
) -> None:
    down_until = time.time() + 4
    log: list[tuple[float, int]] = []  # (when, requests in flight at its arrival)

    def behaviour(request: web.Request) -> Answer:
        now = time.time()
        log.append((now, subscriber.in_flight))
        return (503, {}, 0.0) if now < down_until else (200, {}, 0.05)

    subscriber.behaviour = behaviour
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger(
        "t",
        subscriber.url,
        delivery={
            "retry": {**QUICK, "maxDelay": "1h"},
            "backoff": {"maxProbeInterval": "600ms"},
            "concurrency": 64,
        },
    )
    ids = await plane.publish(20)
    await wait_until(lambda: in_backoff(plane, route), 15, "Backoff entered")
    entered = time.time()
    ids += await plane.publish(500, prefix="backlog")
    await wait_until(lambda: set(subscriber.ids()) >= set(ids), 60, "all 520 delivered")
    probes = [at for at, _ in log if entered <= at < down_until]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert gaps and max(gaps) <= 0.6 + 0.4  # maxDelay is 1h; the probe cap is 600 ms
    after = [n for at, n in log if at >= down_until]
    # Slow start: the first requests after the probe come one or two at a time,
    # then concurrency doubles up to the Trigger's limit.
    assert max(after[:3]) <= 2, after[:20]
    assert max(after) >= 32, max(after)
