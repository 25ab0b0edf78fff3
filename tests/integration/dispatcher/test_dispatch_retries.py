"""Failures: retries as data in Redis, Retry-After, dead letters, maxAge."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from dispatch_harness import Plane, Subscriber, dead_letters, wait_until

from tidings.api import keys
from tidings.api.events import CloudEvent, encode

FAST = {"initialDelay": "50ms", "maxDelay": "1s", "jitter": 0}


def always(status: int, headers: dict[str, str] | None = None) -> Any:
    def behaviour(request: web.Request) -> tuple[int, dict[str, str], float]:
        return status, headers or {}, 0.0

    return behaviour


def failing_first(times: int, status: int = 503, headers: dict[str, str] | None = None) -> Any:
    seen: dict[str, int] = {}

    def behaviour(request: web.Request) -> tuple[int, dict[str, str], float]:
        event_id = request.headers["webhook-id"]
        seen[event_id] = seen.get(event_id, 0) + 1
        if seen[event_id] <= times:
            return status, headers or {}, 0.0
        return 200, {}, 0.0

    return behaviour


async def test_400_is_dead_lettered_after_one_attempt(plane: Plane, subscriber: Subscriber) -> None:
    subscriber.behaviour = always(400)
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url, delivery={"retry": FAST})
    await plane.publish(1)
    dead = await dead_letters(plane, route, 1)
    await asyncio.sleep(0.5)  # no second attempt comes
    assert len(subscriber.attempts_of("e-0")) == 1
    letter = dead[0]
    assert letter.event["id"] == "e-0" and letter.event["data"] == {"n": 0}
    assert letter.attempts == 1 and letter.status == "400"
    assert "400 is not in retryOn" in letter.error
    assert (await plane.state(route))[keys.STATE_DEAD_LETTERED] == "1"
    assert (await plane.redis.xpending(route.stream, route.group))["pending"] == 0


async def test_retryable_failures_are_retried_until_delivered(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = failing_first(3)
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url, delivery={"retry": FAST})
    await plane.publish(5)
    await wait_until(lambda: len(subscriber.received) >= 5, 10, "5 deliveries after retries")
    assert all(len(subscriber.attempts_of(f"e-{i}")) == 4 for i in range(5))
    await wait_until(lambda: retry_keys_empty(plane, route), 5, "retry bookkeeping cleared")


async def test_max_attempts_dead_letters_with_the_last_status(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = always(503)
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger(
        "t", subscriber.url, delivery={"retry": {**FAST, "maxAttempts": 3}}
    )
    await plane.publish(1)
    letter = (await dead_letters(plane, route, 1))[0]
    assert len(subscriber.attempts_of("e-0")) == 3
    assert letter.attempts == 3 and letter.status == "503"
    assert "maxAttempts (3) reached" in letter.error


async def test_retry_after_is_respected(plane: Plane, subscriber: Subscriber) -> None:
    subscriber.behaviour = failing_first(1, 503, {"Retry-After": "2"})
    await plane.add_source()
    await plane.dispatcher()
    await plane.add_trigger("t", subscriber.url, delivery={"retry": FAST})
    await plane.publish(1)
    await wait_until(lambda: subscriber.received, 10, "delivered after Retry-After")
    first, second = subscriber.attempts_of("e-0")
    assert 2.0 <= second.at - first.at < 3.5


async def test_retry_after_is_capped_by_retry_after_max(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = failing_first(1, 429, {"Retry-After": "3600"})
    await plane.add_source()
    await plane.dispatcher()
    await plane.add_trigger(
        "t", subscriber.url, delivery={"retry": {**FAST, "retryAfterMax": "1s"}}
    )
    await plane.publish(1)
    await wait_until(lambda: subscriber.received, 10, "delivered after the capped wait")
    first, second = subscriber.attempts_of("e-0")
    assert 1.0 <= second.at - first.at < 2.5


async def test_retries_survive_a_dispatcher_restart_with_their_attempt_count(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = always(503)
    await plane.add_source()
    first = await plane.dispatcher()
    route = await plane.add_trigger(
        "t",
        subscriber.url,
        delivery={"retry": {"initialDelay": "1500ms", "jitter": 0, "maxAttempts": 2}},
    )
    await plane.publish(1)
    await wait_until(lambda: subscriber.attempts, 5, "first attempt")
    await first.stop(grace=1)
    retries = keys.retries(route.namespace, route.source, route.name)
    assert await plane.redis.zcard(retries) == 1
    await plane.dispatcher()
    letter = (await dead_letters(plane, route, 1))[0]
    assert letter.attempts == 2  # the count survived: not reset to 1 by the restart
    first_at, second_at = (a.at for a in subscriber.attempts_of("e-0"))
    assert second_at - first_at >= 1.4


async def test_an_event_older_than_max_age_is_dead_lettered_without_an_attempt(
    plane: Plane, subscriber: Subscriber
) -> None:
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url, delivery={"maxAge": "1h"})
    old = CloudEvent(id="old", source="/test", type="t", data={})
    stale_ms = int((time.time() - 7200) * 1000)
    await plane.redis.xadd(plane.stream(), encode(old, stale_ms))  # type: ignore[arg-type]
    letter = (await dead_letters(plane, route, 1))[0]
    assert letter.event["id"] == "old" and "maxAge" in letter.error
    assert subscriber.attempts == []


async def test_dead_letters_go_to_the_dead_letter_sink_too(
    plane: Plane, subscriber: Subscriber
) -> None:
    sink = await Subscriber().start()
    try:
        subscriber.behaviour = always(422)
        await plane.add_source()
        await plane.dispatcher()
        await plane.add_trigger(
            "t", subscriber.url, delivery={"deadLetter": {"uri": sink.url}, "retry": FAST}
        )
        await plane.publish(2)
        await wait_until(lambda: len(sink.received) >= 2, 10, "2 dead letters at the sink")
        assert sorted(sink.ids()) == ["e-0", "e-1"]
        assert sink.received[0].headers["tidings-dead-letter-status"] == "422"
    finally:
        await sink.stop()


async def retry_keys_empty(plane: Plane, route: Any) -> bool:
    ns, source, name = route.namespace, route.source, route.name
    sizes = [
        await plane.redis.zcard(keys.retries(ns, source, name)),
        await plane.redis.hlen(keys.attempts(ns, source, name)),
        await plane.redis.zcard(keys.held(ns, source, name)),
    ]
    return sizes == [0, 0, 0]
