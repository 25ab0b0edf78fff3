"""W3C trace context passes through Tidings with tracing off (the default):
ingest stores the producer's traceparent with the event, and every delivery
carries it to the subscriber."""

from __future__ import annotations

import json

import aiohttp
from dispatch_harness import Plane, Subscriber, dead_letters, ingest_ready, wait_until

from tidings.api import keys
from tidings.api.events import CloudEvent, decode
from tidings.cli.redis_server import free_port

TRACE = "0af7651916cd43dd8448eb211c80319c"
PRODUCER_SPAN = "b7ad6b7169203331"


async def test_with_tracing_off_the_stored_context_reaches_the_subscriber(
    plane: Plane, subscriber: Subscriber
) -> None:
    await plane.add_source()
    await plane.dispatcher()  # this process: tracing was never set up
    await plane.add_trigger("t", subscriber.url, delivery={"format": "data"})
    parent = f"00-{TRACE}-{PRODUCER_SPAN}-01"
    await plane.publish_events(
        [
            CloudEvent(
                id="plain",
                source="/shop",
                type="com.shop.x",
                data={},
                extensions={"traceparent": parent, "tracestate": "shop=1"},
            )
        ]
    )
    await wait_until(lambda: subscriber.received, 20, "delivered")
    headers = subscriber.received[0].headers
    assert headers["traceparent"] == parent
    assert headers["tracestate"] == "shop=1"


async def test_ingest_with_tracing_off_stores_the_producers_context(plane: Plane) -> None:
    """Binary mode takes the traceparent header; a malformed one is not stored."""
    port = free_port()
    await plane.add_source()
    plane.spawn("plain", "--listen", f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    headers = {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-source": "/shop",
        "ce-type": "com.shop.x",
    }
    async with aiohttp.ClientSession() as http:
        await ingest_ready(http, base)
        for event_id, traceparent in (("good", f"00-{TRACE}-{PRODUCER_SPAN}-01"), ("bad", "x")):
            async with http.post(
                f"{base}/sources/{plane.namespace}/src",
                data=b"{}",
                headers={**headers, "ce-id": event_id, "traceparent": traceparent},
            ) as response:
                assert response.status == 202, await response.text()
    stored = {}
    for _, fields in await plane.redis.xrange(keys.stream(plane.namespace, "src")):
        event, _ = decode(fields)
        stored[event.id] = event.extensions
    assert stored["good"]["traceparent"] == f"00-{TRACE}-{PRODUCER_SPAN}-01"
    assert "traceparent" not in stored["bad"]


async def test_ingest_drops_a_tracestate_that_could_never_be_delivered(plane: Plane) -> None:
    """A structured event's tracestate with a line break or a control character
    (JSON lets both in) is not stored; the event and its traceparent are. (A lone
    surrogate is refused with the whole event: 400, "not valid Unicode".)"""
    port = free_port()
    await plane.add_source()
    plane.spawn("plain", "--listen", f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    parent = f"00-{TRACE}-{PRODUCER_SPAN}-01"
    async with aiohttp.ClientSession() as http:
        await ingest_ready(http, base)
        for event_id, state in (("control", "shop=\x01"), ("newline", "shop=1\r\nX: y")):
            event = {"specversion": "1.0", "id": event_id, "source": "/shop"}
            event |= {"type": "com.shop.x", "traceparent": parent, "tracestate": state}
            body = json.dumps({**event, "data": {"n": 1}})
            async with http.post(
                f"{base}/sources/{plane.namespace}/src",
                data=body.encode(),
                headers={"Content-Type": "application/cloudevents+json"},
            ) as response:
                assert response.status == 202, await response.text()
    stored = {}
    for _, fields in await plane.redis.xrange(keys.stream(plane.namespace, "src")):
        event, _ = decode(fields)
        stored[event.id] = event
    assert sorted(stored) == ["control", "newline"]
    for event in stored.values():
        assert event.extensions["traceparent"] == parent
        assert "tracestate" not in event.extensions and event.data == {"n": 1}


async def test_an_event_whose_request_cannot_be_encoded_is_dead_lettered_at_once(
    plane: Plane, subscriber: Subscriber
) -> None:
    """A lone surrogate in a stored tracestate (JSON accepts "\\ud800") can never be
    sent, as a ce- attribute (binary) or a header (structured): the event is
    dead-lettered on its first attempt, saying why, and the next is delivered."""
    await plane.add_source()
    await plane.dispatcher()
    binary = await plane.add_trigger("b", subscriber.url)
    structured = await plane.add_trigger("s", subscriber.url, delivery={"format": "structured"})
    await plane.publish_events(
        [
            CloudEvent(
                id=event_id,
                source="/shop",
                type="com.shop.x",
                data={},
                extensions={"traceparent": f"00-{TRACE}-{PRODUCER_SPAN}-01", "tracestate": state},
            )
            for event_id, state in (("unsendable", "shop=\ud800"), ("fine", "shop=1"))
        ]
    )
    for route, where in ((binary, "attribute"), (structured, "header")):
        letters = await dead_letters(plane, route, 1)
        assert [letter.event["id"] for letter in letters] == ["unsendable"]
        assert letters[0].attempts == 1
        assert letters[0].error.startswith(
            f"the request can never be sent: RequestError: {where} 'tracestate': "
        ), letters[0].error
        assert (await plane.redis.xpending(route.stream, route.group))["pending"] == 0
    await wait_until(lambda: subscriber.ids() == ["fine", "fine"], 20, "the next event delivered")
