"""Delayed delivery: events with a deliverafter, and every event of a Trigger with
delivery.delay, are delivered not before their time, in due order, across a
dispatcher killed meanwhile; they do not hold back the events behind them and
count in lag only once due."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from dispatch_harness import Plane, Subscriber, wait_until

from tidings.api import keys
from tidings.api.events import CloudEvent
from tidings.dispatcher import streams


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def event(event_id: str, due: float | None = None) -> CloudEvent:
    extensions = {"deliverafter": rfc3339(due)} if due is not None else {}
    return CloudEvent(id=event_id, source="/test", type="t", data={}, extensions=extensions)


async def test_delayed_events_arrive_on_time_in_due_order_across_a_restart(
    plane: Plane, subscriber: Subscriber
) -> None:
    source = await plane.add_source()
    route = await plane.add_trigger("t", subscriber.url, wait=False)
    first = plane.spawn("first")
    await wait_until(
        lambda: plane.has_group(route), 90, "the group (a process start takes 15 s under load)"
    )
    start = time.time()
    due = {"c": start + 6.0, "a": start + 4.0, "b": start + 5.0}
    # Stored in another order than due; undelayed events behind them.
    await streams.append(plane.redis, source, [event(i, due[i]) for i in ("c", "a", "b")])
    await streams.append(plane.redis, source, [event(f"now-{i}") for i in range(5)])
    await wait_until(lambda: len(subscriber.received) >= 5, 10, "the undelayed events")
    assert sorted(subscriber.ids()) == [f"now-{i}" for i in range(5)]
    assert time.time() - start < 2.5, "the undelayed events waited for the delayed ones"

    async def waiting_without_lag() -> bool:
        state = await plane.state(route)
        return state.get(keys.STATE_LAG) == "0" and state.get(keys.STATE_DELAYED) == "3"

    # Delayed and not due: no lag; the state says how many wait.
    await wait_until(waiting_without_lag, 2.5, "lag 0 and 3 delayed while they wait")

    # SIGKILL: nothing drains. Another dispatcher (in this process, so it starts
    # at once even on a loaded machine) finds the delayed events in Redis.
    first.kill()
    first.wait()
    await plane.dispatcher()
    assert time.time() < due["a"], "restarted too late to check the timing"
    await wait_until(lambda: len(subscriber.received) >= 8, 15, "the delayed events")
    delayed = [r for r in subscriber.received if r.id in due]
    assert [r.id for r in delayed] == ["a", "b", "c"]
    for received in delayed:
        # Not before its time; at most a second late.
        assert received.at >= due[received.id] - 0.05, received.id
        assert received.at <= due[received.id] + 1.0, (received.id, received.at - due[received.id])
        assert received.headers["ce-deliverafter"].startswith(rfc3339(due[received.id])[:19])
    await asyncio.sleep(0.5)
    assert len(subscriber.received) == 8  # each once
    ns, src, name = route.namespace, route.source, route.name
    assert await plane.redis.zcard(keys.retries(ns, src, name)) == 0
    assert await plane.redis.zcard(keys.held(ns, src, name)) == 0
    assert await plane.redis.zcard(keys.delayed(ns, src, name)) == 0
    assert await plane.redis.zcard(keys.delayed_held(ns, src, name)) == 0


async def test_a_trigger_delay_holds_every_event_that_long(
    plane: Plane, subscriber: Subscriber
) -> None:
    source = await plane.add_source()
    base = subscriber.url.rsplit("/", 1)[0]
    await plane.dispatcher()
    await plane.add_trigger("later", f"{base}/later", delivery={"delay": "2s"})
    await plane.add_trigger("at-once", f"{base}/at-once")
    start = time.time()
    await streams.append(plane.redis, source, [event(f"e-{i}") for i in range(3)])
    await wait_until(lambda: len(subscriber.received) >= 6, 10, "both Triggers")
    for received in subscriber.received:
        took = received.at - start
        if received.path.endswith("/later"):
            assert 2.0 - 0.05 <= took <= 3.0, took
        else:
            assert took < 1.5, took
