"""Delivery end to end: events in a source's stream reach the subscriber in the
Trigger's format, signed, filtered, once per Trigger."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat
from dispatch_harness import Plane, Subscriber, wait_until
from standardwebhooks import Webhook

from tidings.api.routes import Route

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()


async def test_every_event_reaches_the_subscriber_as_a_cloudevent(
    plane: Plane, subscriber: Subscriber
) -> None:
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url)
    ids = await plane.publish(50)
    await wait_until(lambda: len(subscriber.received) >= 50, 10, "50 deliveries")
    assert sorted(subscriber.ids()) == sorted(ids)
    first = subscriber.received[0]
    event = from_http(HTTPMessage(headers=first.headers, body=first.body), JSONFormat())
    assert event.get_attributes()["id"] == first.headers["ce-id"]
    assert event.get_data() == json.loads(first.body)
    await wait_until(lambda: plane.nothing_pending(route), 5, "every delivery acknowledged")


async def test_signatures_verify_with_the_standard_webhooks_package_during_rotation(
    plane: Plane, subscriber: Subscriber
) -> None:
    plane.world.secrets[(plane.namespace, "hook", "secret")] = f"{SECRET} {OLD}"
    await plane.add_source()
    await plane.dispatcher()
    await plane.add_trigger(
        "t",
        subscriber.url,
        delivery={
            "format": "structured",
            "signing": {"secretRef": {"name": "hook", "key": "secret"}},
        },
    )
    await plane.publish(3)
    await wait_until(lambda: len(subscriber.received) >= 3, 10, "3 deliveries")
    for received in subscriber.received:
        for secret in (SECRET, OLD):
            payload = Webhook(secret).verify(received.body, received.headers)
            assert payload["id"] == received.id
        parsed = from_http(HTTPMessage(headers=received.headers, body=received.body), JSONFormat())
        assert parsed.get_attributes()["id"] == received.id


async def test_filter_delivers_only_matching_events_and_acks_the_rest(
    plane: Plane, subscriber: Subscriber
) -> None:
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger(
        "t",
        subscriber.url,
        filter={"types": ["com.example.keep"], "expression": "event.data.n % 2 == 0"},
    )
    await plane.publish(10, type="com.example.keep", prefix="keep")
    await plane.publish(10, type="com.example.drop", prefix="drop")
    await wait_until(lambda: len(subscriber.received) >= 5, 10, "5 matching deliveries")
    await wait_until(lambda: plane.nothing_pending(route), 5, "the dropped ones acknowledged")
    assert sorted(subscriber.ids()) == [f"keep-{i}" for i in (0, 2, 4, 6, 8)]


async def test_every_trigger_gets_every_event_once_from_one_stored_copy(
    plane: Plane, subscriber: Subscriber
) -> None:
    await plane.add_source()
    await plane.dispatcher()
    await plane.add_trigger("a", subscriber.url, delivery={"headers": {"X-Trigger": "a"}})
    await plane.add_trigger("b", subscriber.url, delivery={"headers": {"X-Trigger": "b"}})
    await plane.publish(20)
    await wait_until(lambda: len(subscriber.received) >= 40, 10, "40 deliveries")
    per_trigger = {
        t: sorted(r.id for r in subscriber.received if r.headers["X-Trigger"] == t) for t in "ab"
    }
    assert per_trigger["a"] == per_trigger["b"] and len(per_trigger["a"]) == 20
    assert await plane.redis.xlen(plane.stream()) == 20


async def test_a_new_trigger_receives_events_from_its_creation_on(
    plane: Plane, subscriber: Subscriber
) -> None:
    await plane.add_source()
    await plane.dispatcher()
    await plane.add_trigger("first", subscriber.url, delivery={"headers": {"X-Trigger": "1"}})
    await plane.publish(5, prefix="before")
    await plane.add_trigger("second", subscriber.url, delivery={"headers": {"X-Trigger": "2"}})
    await plane.publish(5, prefix="after")
    await wait_until(lambda: len(subscriber.received) >= 15, 10, "15 deliveries")
    second = sorted(r.id for r in subscriber.received if r.headers["X-Trigger"] == "2")
    assert second == [f"after-{i}" for i in range(5)]


async def test_a_paused_trigger_keeps_its_cursor_and_resumes(
    plane: Plane, subscriber: Subscriber
) -> None:
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url, paused=True)
    await plane.publish(10)
    await wait_until(lambda: state_is(plane, route, "Paused"), 5, "state Paused published")
    await asyncio.sleep(0.5)
    assert subscriber.received == []
    await plane.add_trigger("t", subscriber.url, paused=False)
    await wait_until(lambda: len(subscriber.received) >= 10, 10, "10 deliveries after resume")


async def state_is(plane: Plane, route: Route, state: str) -> bool:
    return (await plane.state(route)).get("state") == state


async def test_idle_consumers_holding_nothing_are_forgotten(
    plane: Plane, subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidings.dispatcher import engine

    monkeypatch.setattr(engine, "CONSUMER_IDLE_FORGET", 0.2)
    await plane.add_source()
    dispatcher = await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url)
    # A pod that restarted under a new name left its consumer behind.
    await plane.redis.xgroup_createconsumer(route.stream, route.group, "old-pod")
    await asyncio.sleep(0.5)
    names = [c["name"] for c in await plane.redis.xinfo_consumers(route.stream, route.group)]
    assert b"old-pod" in names
    await dispatcher.workers[route.id].forget_idle_consumers()
    names = [c["name"] for c in await plane.redis.xinfo_consumers(route.stream, route.group)]
    assert b"old-pod" not in names
