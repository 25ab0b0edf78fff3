"""Triggers at rest cost nothing per Trigger: no look, no state write, no trim,
until an event (or an announcement) wakes them; a live dispatcher's heartbeat
stands in for the state writes (issue 17, item 4)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from dispatch_harness import Plane, Subscriber, wait_until
from redis.asyncio import Redis

from tidings.api import heartbeat, keys
from tidings.api.routes import Route
from tidings.api.text import text
from tidings.dispatcher.engine import TriggerWorker

TRIGGERS = 20
WATCH = 6.0  # seconds of watching Redis's command stream


async def commands_about(redis_url: str, namespace: str, seconds: float) -> list[str]:
    """Every command Redis executed for `namespace` during `seconds` (MONITOR),
    except the process's one blocking XREAD that waits for all idle streams."""
    seen: list[str] = []
    client = Redis.from_url(redis_url)
    try:
        async with client.monitor() as monitor:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    async for entry in monitor.listen():
                        command = str(entry.get("command", ""))
                        if namespace in command and not command.upper().startswith("XREAD "):
                            seen.append(command[:160])
    finally:
        await client.aclose()
    return seen


async def trigger_at_rest(plane: Plane, subscriber: Subscriber) -> tuple[Route, TriggerWorker, str]:
    """One Trigger "t" that delivered one event and rests: its route, its worker,
    and the stream id of that event (to hand back)."""
    await plane.add_source()
    dispatcher = await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url)
    await plane.publish(1)
    await wait_until(lambda: len(subscriber.received) >= 1, 10, "the first event")
    worker = dispatcher.workers[route.id]
    await wait_until(lambda: worker.idle_block > 60, 30, "the worker at rest")
    (entry_id, _), *_ = await plane.redis.xrange(plane.stream(), count=1)
    return route, worker, text(entry_id)


async def test_triggers_at_rest_make_no_redis_calls_until_an_event_comes(
    plane: Plane, subscriber: Subscriber
) -> None:
    await plane.add_source()
    dispatcher = await plane.dispatcher(retention_interval=0.2)
    routes = [await plane.add_trigger(f"t{i}", subscriber.url) for i in range(TRIGGERS)]
    await plane.publish(1)
    await wait_until(lambda: len(subscriber.received) >= TRIGGERS, 20, "the first event, to all")

    async def all_at_rest() -> bool:
        workers = [dispatcher.workers[r.id] for r in routes]
        return all(w.published is not None and w.published.at_rest() and w.quiet() for w in workers)

    await wait_until(all_at_rest, 20, "every Trigger's state published at rest")
    await asyncio.sleep(1.0)  # the looks right after the delivery back off
    seen = await commands_about(plane.redis_url, plane.namespace, WATCH)
    assert seen == [], f"{len(seen)} Redis calls by {TRIGGERS} Triggers at rest: {seen[:10]}"

    # An event still wakes them at once, without a look of their own.
    started = time.monotonic()
    await plane.publish(1, prefix="late")
    await wait_until(lambda: len(subscriber.received) >= 2 * TRIGGERS, 10, "the late event, to all")
    assert time.monotonic() - started < 5.0

    # Their state is not rewritten, and the dispatcher's heartbeat vouches for it.
    newest = await heartbeat.newest(plane.redis)
    assert newest is not None and time.time() * 1000 - newest < (heartbeat.BEAT_EVERY + 5) * 1000
    assert await plane.redis.zscore(keys.DISPATCHERS, dispatcher.consumer) is not None
    await dispatcher.stop(grace=1.0)
    assert await plane.redis.zscore(keys.DISPATCHERS, dispatcher.consumer) is None


async def test_a_wake_announcement_reaches_a_trigger_at_rest(
    plane: Plane, subscriber: Subscriber
) -> None:
    """A retry another process made due (a hand-back) is announced; the Trigger at
    rest fetches it at once instead of after its safety-net look."""
    route, _, entry_id = await trigger_at_rest(plane, subscriber)
    # As a hand-back does (deadletter.hand_back): due now in the retry ZSET, announced.
    await plane.redis.zadd(keys.retries(plane.namespace, "src", "t"), {entry_id: 0})
    await plane.redis.publish(keys.TRIGGER_WAKE, route.id)
    await wait_until(lambda: len(subscriber.received) >= 2, 3, "the handed-back event")


async def test_an_announcement_during_a_look_is_not_lost(
    plane: Plane, subscriber: Subscriber
) -> None:
    """A hand-back announced while the worker's look is on its way to Redis (the look
    saw nothing yet) still cuts the rest that follows short."""
    _, worker, entry_id = await trigger_at_rest(plane, subscriber)
    look = worker.cursor.fetch
    announced = asyncio.Event()

    async def look_then_announce(*args: Any, **kwargs: Any) -> Any:
        fetched = await look(*args, **kwargs)
        if not announced.is_set():
            # The hand-back lands, and its announcement arrives, just after this
            # look read the (still empty) retry ZSET.
            announced.set()
            await plane.redis.zadd(keys.retries(plane.namespace, "src", "t"), {entry_id: 0})
            worker.nudge()
        return fetched

    worker.cursor.fetch = look_then_announce  # type: ignore[method-assign]
    worker.nudge()  # look now
    await wait_until(lambda: announced.is_set(), 5, "a look")
    await wait_until(lambda: len(subscriber.received) >= 2, 3, "the handed-back event")


async def test_news_for_status_is_announced_and_rest_is_not(
    plane: Plane, subscriber: Subscriber
) -> None:
    """The operator reads a report at rest only now and then: the dispatcher
    announces (keys.REPORT_NEWS) when its Trigger leaves rest, and says nothing
    while it delivers and rests."""
    listener = Redis.from_url(plane.redis_url)
    announced: list[str] = []

    async def listen() -> None:
        async with listener.pubsub() as pubsub:
            await pubsub.subscribe(keys.REPORT_NEWS)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    announced.append(text(message.get("data")))

    listening = asyncio.create_task(listen())
    try:
        route, worker, _ = await trigger_at_rest(plane, subscriber)
        await wait_until(lambda: worker.quiet(), 10, "its state published at rest")
        before = list(announced)
        await asyncio.sleep(2.0)
        assert announced == before, "a Trigger at rest has no news"

        subscriber.behaviour = lambda request: (503, {}, 0.0)
        await plane.publish(1, prefix="failing")
        await wait_until(lambda: route.id in announced[len(before) :], 10, "news: a retry")
        await wait_until(
            lambda: worker.published is not None and not worker.published.at_rest(),
            5,
            "its state published off rest",
        )
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await listener.aclose()


async def test_the_first_report_is_announced_once_even_at_rest(
    plane: Plane, subscriber: Subscriber
) -> None:
    """The operator rests on a Trigger no dispatcher has reported yet (it would read
    thousands of missing reports every few seconds): the first report, though at rest
    with no event ever sent, is announced; a second dispatcher's is not."""
    listener = Redis.from_url(plane.redis_url)
    announced: list[str] = []
    subscribed = asyncio.Event()

    async def listen() -> None:
        async with listener.pubsub() as pubsub:
            await pubsub.subscribe(keys.REPORT_NEWS)
            subscribed.set()
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    announced.append(text(message.get("data")))

    listening = asyncio.create_task(listen())
    try:
        await subscribed.wait()
        await plane.add_source()
        one = await plane.dispatcher(consumer="one")
        route = await plane.add_trigger("t", subscriber.url)
        await wait_until(
            lambda: route.id in one.workers and one.workers[route.id].published is not None,
            10,
            "its first report",
        )
        first = one.workers[route.id].published
        assert first is not None and first.at_rest() and first.first
        await wait_until(lambda: route.id in announced, 5, "news of the first report")
        # Another replica starting on the same Trigger: its first publish is not the
        # Trigger's first report, and at rest it is no news.
        two = await plane.dispatcher(consumer="two")
        await wait_until(
            lambda: route.id in two.workers and two.workers[route.id].published is not None,
            10,
            "the second replica's report",
        )
        second = two.workers[route.id].published
        assert second is not None and not second.first
        await asyncio.sleep(1.0)
        assert announced.count(route.id) == 1, announced
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await listener.aclose()
