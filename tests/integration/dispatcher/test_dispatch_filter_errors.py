"""A filter expression that fails on an event: an absent field is a no-match,
any other failure dead-letters the event, counted per Trigger and published for
status (docs/filters.md). Real dispatcher, real Redis, real subscriber."""

from __future__ import annotations

from typing import Any

from dispatch_harness import Plane, Subscriber, wait_until
from prometheus_client import CollectorRegistry

from tidings.api import keys, table
from tidings.api.events import CloudEvent
from tidings.api.routes import Route
from tidings.dispatcher import deadletter


def event(event_id: str, data: dict[str, Any]) -> CloudEvent:
    return CloudEvent(id=event_id, source="/test/src", type="com.example.seats", data=data)


def sample(registry: CollectorRegistry, route: Route, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"trigger": route.id, **labels}) or 0.0


async def test_an_absent_field_skips_a_type_error_dead_letters_and_both_are_counted(
    plane: Plane, subscriber: Subscriber
) -> None:
    registry = CollectorRegistry()
    await plane.add_source()
    await plane.dispatcher(registry=registry, publish_interval=0.1)
    route = await plane.add_trigger(
        "seats", subscriber.url, filter={"expression": "event.data.seats > 2"}
    )
    await plane.publish_events(
        [
            event("match", {"seats": 3}),
            event("absent", {"plan": "pro"}),
            event("wrong-type", {"seats": "three"}),
        ]
    )
    await wait_until(lambda: plane.nothing_pending(route), 10, "all three settled")
    await wait_until(
        lambda: sample(registry, route, "tidings_filter_errors_total", reason="type") == 1,
        5,
        "the type error counted",
    )
    assert subscriber.ids() == ["match"]
    assert sample(registry, route, "tidings_deliveries_total", outcome="filtered") == 1
    assert sample(registry, route, "tidings_deliveries_total", outcome="dead_lettered") == 1
    letters = await deadletter.read(plane.redis, route.namespace, route.source, route.name)
    assert [letter.event["id"] for letter in letters] == ["wrong-type"]
    assert letters[0].error.startswith("filter error (type): spec.filter.expression: ")
    assert letters[0].attempts == 0 and letters[0].status == ""

    async def published() -> bool:
        return (await plane.state(route)).get(keys.STATE_FILTER_CHECKED) == "3"

    await wait_until(published, 5, "the filter's counts published")
    state = await plane.state(route)
    assert state[keys.STATE_FILTER_ERRORS] == "1"
    assert state[keys.STATE_FILTER_LAST_REASON] == "type"
    assert "No such overload" in state[keys.STATE_FILTER_LAST_MESSAGE]
    assert state[keys.STATE_FILTER_LAST_TIME].endswith("Z")
    assert state[keys.STATE_DEAD_LETTERED] == "1"


async def test_filter_errors_never_put_the_trigger_in_backoff(
    plane: Plane, subscriber: Subscriber
) -> None:
    await plane.add_source()
    await plane.dispatcher(publish_interval=0.1)
    route = await plane.add_trigger(
        "seats",
        subscriber.url,
        filter={"expression": "int(event.data.seats) > 2"},
        delivery={"backoff": {"minAttempts": 3, "window": "0s"}},
    )
    await plane.publish_events([event(f"bad-{i}", {"seats": "many"}) for i in range(20)])
    await plane.publish_events([event("good", {"seats": "7"})])
    await wait_until(lambda: subscriber.ids() == ["good"], 10, "the good event delivered")
    await wait_until(lambda: plane.nothing_pending(route), 10, "all settled")

    async def counted() -> bool:
        return (await plane.state(route)).get(keys.STATE_FILTER_ERRORS) == "20"

    await wait_until(counted, 5, "20 filter errors published")
    state = await plane.state(route)
    assert state[keys.STATE_STATE] == keys.DELIVERING
    assert state.get(keys.STATE_FAILURES, "0") == "0"  # the subscriber never failed
    assert state[keys.STATE_FILTER_LAST_REASON] == "function"
    # The window the FilterErrors condition reads: most recent evaluations failed.
    recent = int(state[keys.STATE_FILTER_SPAN_ERRORS]) + int(
        state.get(keys.STATE_FILTER_PREVIOUS_ERRORS, "0")
    )
    assert recent == 20


async def test_a_fixed_filter_starts_its_window_afresh_and_replays_what_failed(
    plane: Plane, subscriber: Subscriber
) -> None:
    await plane.add_source()
    await plane.dispatcher(publish_interval=0.1)
    broken = await plane.add_trigger(
        "seats", subscriber.url, filter={"expression": "event.data.seats > 2"}
    )
    await plane.publish_events([event(f"e-{i}", {"seats": str(i)}) for i in range(5)])

    async def failed(count: str) -> bool:
        return (await plane.state(broken)).get(keys.STATE_FILTER_SPAN_ERRORS) == count

    await wait_until(lambda: failed("5"), 10, "five failures in the window")
    assert subscriber.ids() == []

    fixed = broken.model_copy(
        update={
            "generation": broken.generation + 1,
            "filter": broken.filter.model_copy(update={"expression": "int(event.data.seats) > 2"}),
        }
    )
    await table.put_route(plane.redis, fixed)
    await wait_until(lambda: failed("0"), 10, "the window started afresh for the new filter")
    state = await plane.state(fixed)
    assert state[keys.STATE_FILTER_ERRORS] == "5"  # the total stays
    assert state[keys.STATE_FILTER_GENERATION] == str(fixed.generation)

    letters = await deadletter.read(plane.redis, fixed.namespace, fixed.source, fixed.name)
    moved, kept = await deadletter.hand_back(plane.redis, fixed, [d.dlq_id for d in letters])
    assert (moved, kept) == (5, 0)
    # Replayed events meet the fixed filter: 3 and 4 match, 0..2 are filtered out.
    await wait_until(lambda: sorted(subscriber.ids()) == ["e-3", "e-4"], 10, "e-3, e-4")
    await wait_until(lambda: plane.nothing_pending(fixed), 10, "all settled")
    assert await deadletter.read(plane.redis, fixed.namespace, fixed.source, fixed.name) == []
