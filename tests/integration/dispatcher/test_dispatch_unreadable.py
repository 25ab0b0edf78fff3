"""A stream entry that holds no CloudEvent is dead-lettered at once, never sent,
and counted as unreadable: not as expired, and not as an attempt that failed."""

from __future__ import annotations

from dispatch_harness import Plane, Subscriber, wait_until
from prometheus_client import CollectorRegistry

from tidings.api import keys
from tidings.dispatcher import deadletter


async def test_an_unreadable_stored_event_is_dead_lettered_and_counted_as_unreadable(
    plane: Plane, subscriber: Subscriber
) -> None:
    registry = CollectorRegistry()
    await plane.add_source()
    await plane.dispatcher(registry=registry, publish_interval=0.2)
    route = await plane.add_trigger("t", subscriber.url)
    await plane.redis.xadd(plane.stream(), {keys.FIELD_EVENT: "not json", keys.FIELD_TIME: "0"})
    await plane.publish(1)
    labels = {"trigger": route.id}

    def value(name: str, **extra: str) -> float:
        return registry.get_sample_value(name, {**labels, **extra}) or 0.0

    await wait_until(lambda: value("tidings_deliveries_total", outcome="delivered") == 1, 10, "1")
    await wait_until(lambda: value("tidings_deliveries_total", outcome="unreadable") == 1, 5, "1")
    assert value("tidings_deliveries_total", outcome="dead_lettered") == 0
    assert subscriber.ids() == ["e-0"]
    letters = await deadletter.read(plane.redis, route.namespace, route.source, route.name)
    assert len(letters) == 1
    assert letters[0].error.startswith("stored event is unreadable")
    assert letters[0].attempts == 0
    state = await plane.state(route)
    assert state.get(keys.STATE_FAILURES, "0") == "0"
    assert state.get(keys.STATE_EXPIRED, "0") == "0"
