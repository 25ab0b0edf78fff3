"""The attempt log: every attempt of a real dispatcher against a real subscriber,
recorded in the Trigger's bounded stream in Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from aiohttp import web
from dispatch_harness import Plane, Subscriber, wait_until

from tidings.api import attempts, keys
from tidings.api.attempts import Attempt, AttemptOutcome
from tidings.api.routes import Route
from tidings.dispatcher.cursor import Cursor

FAST = {"initialDelay": "50ms", "maxDelay": "1s", "jitter": 0}


async def logged(plane: Plane, route: Route, count: int, within: float = 15) -> list[Attempt]:
    key = keys.attempt_log(route.namespace, route.source, route.name)
    found: list[Attempt] = []

    async def enough() -> bool:
        nonlocal found
        found = [attempts.decode(i, f) for i, f in await plane.redis.xrange(key)]
        return len(found) >= count

    await wait_until(enough, within, f"{count} attempts logged")
    return found


def fail_first(times: int, status: int = 503) -> Any:
    seen: dict[str, int] = {}

    def behaviour(request: web.Request) -> tuple[int, dict[str, str], float]:
        event_id = request.headers["webhook-id"]
        seen[event_id] = seen.get(event_id, 0) + 1
        return (status if seen[event_id] <= times else 200), {}, 0.0

    return behaviour


async def test_a_retry_then_a_delivery_are_two_records(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = fail_first(1)
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url, delivery={"retry": FAST})
    before = int(time.time() * 1000)
    await plane.publish(1, type="com.shop.order.created")
    first, second = await logged(plane, route, 2)
    stream_id = (await plane.redis.xrange(route.stream))[0][0].decode()
    for record in (first, second):
        assert (record.event_id, record.type, record.stream_id) == (
            "e-0",
            "com.shop.order.created",
            stream_id,
        )
        assert record.replica  # the pod or host name
        assert record.time_ms >= before
        assert 0 <= record.duration_ms < 5000
    assert (first.attempt, first.outcome, first.status) == (1, AttemptOutcome.RETRY, "503")
    assert first.error.startswith("HTTP 503") and first.body == "nope"
    assert (second.attempt, second.outcome, second.status) == (2, AttemptOutcome.DELIVERED, "200")
    assert second.error == ""
    # Stored -> this attempt: the retry waited at least its 50 ms delay.
    assert second.latency_ms >= first.latency_ms + 40


async def test_refused_expired_and_filtered_events(plane: Plane, subscriber: Subscriber) -> None:
    def behaviour(request: web.Request) -> tuple[int, dict[str, str], float]:
        return (400 if request.headers["webhook-id"].startswith("bad") else 200), {}, 0.0

    subscriber.behaviour = behaviour
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger(
        "t",
        subscriber.url,
        filter={"prefix": {"type": "com.keep"}},
        delivery={"retry": FAST, "maxAge": "1s"},
    )
    await plane.publish(1, prefix="bad", type="com.keep.it")
    await plane.publish(1, prefix="skip", type="com.other")
    # Stored two seconds ago: past maxAge before any attempt.
    from tidings.api.events import CloudEvent, encode

    old = encode(CloudEvent("old-0", "/test", "com.keep.old"), int(time.time() * 1000) - 2000)
    await plane.redis.xadd(route.stream, old)  # type: ignore[arg-type]
    records = await logged(plane, route, 2)
    await asyncio.sleep(0.5)  # nothing else comes: the filtered event made no attempt
    records = await logged(plane, route, 2)
    by_event = {r.event_id: r for r in records}
    assert set(by_event) == {"bad-0", "old-0"}
    refused, expired = by_event["bad-0"], by_event["old-0"]
    assert (refused.outcome, refused.status, refused.attempt) == (AttemptOutcome.REFUSED, "400", 1)
    assert "400 is not in retryOn" in refused.error
    assert (expired.outcome, expired.status, expired.duration_ms) == (AttemptOutcome.EXPIRED, "", 0)
    assert "maxAge" in expired.error and expired.latency_ms >= 2000


async def test_retries_spent_is_dead(plane: Plane, subscriber: Subscriber) -> None:
    subscriber.behaviour = fail_first(100, 500)
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger(
        "t",
        subscriber.url,
        delivery={"retry": {**FAST, "maxAttempts": 3}, "backoff": {"minAttempts": 1000}},
    )
    await plane.publish(1)
    records = await logged(plane, route, 3)
    assert [(r.attempt, r.outcome) for r in records] == [
        (1, AttemptOutcome.RETRY),
        (2, AttemptOutcome.RETRY),
        (3, AttemptOutcome.DEAD),
    ]
    assert records[-1].status == "500" and "HTTP 500" in records[-1].error


async def test_the_log_is_bounded_by_max_entries(plane: Plane, subscriber: Subscriber) -> None:
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger(
        "t", subscriber.url, delivery={"attemptLog": {"maxEntries": 50}}
    )
    await plane.publish(1000)
    await wait_until(lambda: len(subscriber.received) >= 1000, 120, "1000 delivered")
    await wait_until(lambda: plane.nothing_pending(route), 10, "all settled")
    key = keys.attempt_log(route.namespace, route.source, route.name)
    # Approximate trimming drops whole nodes (100 entries each): at most ~150 stay.
    assert 50 <= await plane.redis.xlen(key) <= 200
    newest = attempts.decode(*(await plane.redis.xrevrange(key, count=1))[0])
    assert newest.outcome is AttemptOutcome.DELIVERED


async def test_the_log_is_bounded_by_max_age(plane: Plane, subscriber: Subscriber) -> None:
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url, delivery={"attemptLog": {"maxAge": "1s"}})
    await plane.publish(300, prefix="old")
    # Wait for the deliveries, not the log: under load its oldest nodes may go already.
    await wait_until(lambda: len(subscriber.received) >= 300, 90, "300 delivered")
    await wait_until(lambda: plane.nothing_pending(route), 30, "all settled")
    await asyncio.sleep(1.5)
    await plane.publish(1, prefix="new")
    key = keys.attempt_log(route.namespace, route.source, route.name)

    async def old_gone() -> bool:
        entries = await plane.redis.xrange(key)
        return any(f[b"eventId"] == b"new-0" for _, f in entries) and len(entries) < 300

    # Whole nodes older than a second went; what stays is at most one partial node.
    await wait_until(old_gone, 30, "attempts older than maxAge trimmed")


async def test_any_text_survives_the_script_and_empty_fields_read_back_empty(
    plane: Plane, subscriber: Subscriber
) -> None:
    # A batch's attempts cross to Redis as one JSON argument of the settle script,
    # which Lua's cjson decodes.
    await plane.add_source()
    route = await plane.add_trigger("t", subscriber.url, wait=False)
    awkward = Attempt(
        event_id='id "quoted" \\ back\tslash',
        type="com.shop.ordre.créé",
        stream_id="1700000000000-7",
        attempt=3,
        outcome=AttemptOutcome.RETRY,
        duration_ms=0,
        error="naïve\x00 nul, newline\n, ✓ 🎉",
        body='{"a": [1, "\\u0000"], "b": "\\ud83c"}',
        replica="dispatcher-0",
        latency_ms=2**45,  # past what a Lua number prints without an exponent
    )
    plain = Attempt("e-1", "t", "1700000000000-8", 1, AttemptOutcome.DELIVERED, status="200")
    await Cursor(plane.redis, route, "test").settle([], logged=[awkward, plain])
    key = keys.attempt_log(route.namespace, route.source, route.name)
    entries = await plane.redis.xrange(key)
    back = [attempts.decode(i, f) for i, f in entries]
    assert [dataclasses.replace(b, id="") for b in back] == [awkward, plain]
    # Empty values are not stored at all.
    assert b"error" not in entries[1][1] and b"body" not in entries[1][1]
    assert b"status" not in entries[0][1]
