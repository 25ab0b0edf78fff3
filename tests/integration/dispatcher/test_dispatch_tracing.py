"""Traces through a real `tidings dispatcher` into a real Jaeger (hack/jaeger.sh):
the producer's traceparent is continued by the ingest span, every delivery
attempt is a CLIENT span of the same trace, retries are linked, and the
subscriber receives the attempt's traceparent. With tracing off the context
still passes through."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import aiohttp
import pytest
from dispatch_harness import Plane, Subscriber, ingest_ready, wait_until

from jaeger_client import Jaeger
from tidings.api.events import decode
from tidings.cli.redis_server import free_port

pytestmark = pytest.mark.timeout(120)

PRODUCER_SPAN = "b7ad6b7169203331"
SPAN_KIND_PRODUCER, SPAN_KIND_CLIENT = 4, 3


def kind(span: dict[str, Any]) -> int:
    value = span["kind"]
    if isinstance(value, int):
        return value
    return {"SPAN_KIND_CLIENT": 3, "SPAN_KIND_PRODUCER": 4}.get(value, 0)


def span_hex(value: str) -> str:
    """Jaeger's API may give ids as hex or as base64 (OTLP JSON's bytes)."""
    if len(value) in (16, 32) and all(c in "0123456789abcdef" for c in value.lower()):
        return value.lower()
    return base64.b64decode(value).hex()


async def test_an_event_with_a_traceparent_is_one_trace_from_ingest_to_the_last_attempt(
    plane: Plane, subscriber: Subscriber, jaeger: Jaeger
) -> None:
    trace_id = uuid.uuid4().hex  # Jaeger keeps every run's spans: a fresh trace each time
    calls = {"n": 0}

    def fail_once(request: Any) -> tuple[int, dict[str, str], float]:
        calls["n"] += 1
        return (503, {}, 0.0) if calls["n"] == 1 else (200, {}, 0.0)

    subscriber.behaviour = fail_once
    port = free_port()
    await plane.add_source()
    service = f"tidings-test-{plane.namespace}"
    process = plane.spawn(
        "traced",
        "--listen",
        f"127.0.0.1:{port}",
        "--log-format",
        "json",
        env=jaeger.exporting_env(service),
    )
    route = await plane.add_trigger(
        "mailer",
        subscriber.url,
        wait=False,
        delivery={"retry": {"initialDelay": "200ms", "jitter": 0}},
    )
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        await ingest_ready(http, base)
        await wait_until(lambda: plane.has_group(route), 60, "the Trigger's group exists")
        async with http.post(
            f"{base}/sources/{plane.namespace}/src",
            data=b'{"order": 42}',
            headers={
                "Content-Type": "application/json",
                "ce-specversion": "1.0",
                "ce-id": "order-42",
                "ce-source": "/shop",
                "ce-type": "com.shop.order.created",
                "traceparent": f"00-{trace_id}-{PRODUCER_SPAN}-01",
                "tracestate": "shop=1",
            },
        ) as response:
            assert response.status == 202, await response.text()
    await wait_until(lambda: subscriber.received, 30, "delivered after one failure")
    attempts = subscriber.attempts_of("order-42")
    assert len(attempts) == 2

    # The stored event carries the ingest span's context, in the producer's trace.
    [(_, fields)] = await plane.redis.xrange(plane.stream())
    stored, _ = decode(fields)
    stored_parent = stored.extensions["traceparent"]
    assert stored_parent.startswith(f"00-{trace_id}-") and stored_parent.endswith("-01")
    assert stored.extensions["tracestate"] == "shop=1"
    ingest_span = stored_parent.split("-")[2]
    assert ingest_span != PRODUCER_SPAN

    # Each attempt got a traceparent of its own span in the same trace; binary mode
    # also carries the stored (ingest) context as the CloudEvents extension.
    sent_spans = []
    for attempt in attempts:
        version, trace, span, flags = attempt.headers["traceparent"].split("-")
        assert (version, trace, flags) == ("00", trace_id, "01")
        assert attempt.headers["tracestate"] == "shop=1"
        assert attempt.headers["ce-traceparent"] == stored_parent
        sent_spans.append(span)
    assert len(set(sent_spans)) == 2 and ingest_span not in sent_spans

    spans = await jaeger.spans(trace_id, 3)
    by_id = {span_hex(s["spanId"]): s for s in spans}
    send = by_id[ingest_span]
    assert send["name"] == f"send {plane.namespace}/src"
    assert kind(send) == SPAN_KIND_PRODUCER
    assert span_hex(send["parentSpanId"]) == PRODUCER_SPAN
    assert send["serviceName"] == service
    assert send["attributes"]["messaging.system"] == "tidings"
    assert send["attributes"]["messaging.destination.name"] == f"{plane.namespace}/src"
    assert send["attributes"]["messaging.operation.type"] == "send"
    assert send["attributes"]["cloudevents.event_id"] == "order-42"
    assert send["attributes"]["cloudevents.event_type"] == "com.shop.order.created"

    first, second = by_id[sent_spans[0]], by_id[sent_spans[1]]
    for number, span in ((1, first), (2, second)):
        assert span["name"] == f"deliver {route.id}"
        assert kind(span) == SPAN_KIND_CLIENT
        assert span_hex(span["parentSpanId"]) == ingest_span
        attributes = span["attributes"]
        assert attributes["tidings.attempt"] == number
        assert attributes["tidings.trigger"] == route.id
        assert attributes["tidings.source"] == f"{plane.namespace}/src"
        assert attributes["messaging.system"] == "tidings"
        assert attributes["messaging.destination.name"] == f"{plane.namespace}/src"
        assert attributes["messaging.destination.subscription.name"] == route.id
        assert attributes["messaging.message.id"] == "order-42"
        assert attributes["cloudevents.event_type"] == "com.shop.order.created"
        assert attributes["http.request.method"] == "POST"
        assert attributes["url.full"] == subscriber.url
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["server.port"] == subscriber.port
    assert first["attributes"]["http.response.status_code"] == 503
    assert first["attributes"]["tidings.outcome"] == "retried"
    assert first["attributes"]["error.type"] == "503"
    assert first["status"].get("code") in (2, "STATUS_CODE_ERROR")
    assert first["attributes"]["tidings.retry.delay_seconds"] == pytest.approx(0.2, abs=0.05)
    assert second["attributes"]["http.response.status_code"] == 200
    assert second["attributes"]["tidings.outcome"] == "delivered"
    # The retry is linked to the attempt before it.
    [link] = second["links"]
    assert span_hex(link["traceId"]) == trace_id
    assert span_hex(link["spanId"]) == sent_spans[0]
    assert link["attributes"]["tidings.attempt"] == 1
    assert not first.get("links")

    # The dispatcher's JSON log names the failed attempt with the event's fields.
    process.terminate()
    process.wait(30)
    lines = []
    for text in plane.log_path("traced").read_text().splitlines():
        if text.startswith("{"):
            lines.append(json.loads(text))
    failed = [line for line in lines if line.get("event_id") == "order-42"]
    assert failed, "no log line carries event_id order-42"
    assert failed[0]["trigger"] == route.id
    assert failed[0]["source"] == f"{plane.namespace}/src"
    assert failed[0]["trace_id"] == trace_id
    assert failed[0]["attempt"] == 1 and failed[0]["outcome"] == "retried"


async def test_each_event_of_a_batch_continues_its_own_trace(
    plane: Plane, subscriber: Subscriber, jaeger: Jaeger
) -> None:
    port = free_port()
    await plane.add_source()
    plane.spawn(
        "batch",
        "--listen",
        f"127.0.0.1:{port}",
        env=jaeger.exporting_env(f"tidings-test-{plane.namespace}"),
    )
    route = await plane.add_trigger("t", subscriber.url, wait=False, delivery={"format": "data"})
    traces = [uuid.uuid4().hex, uuid.uuid4().hex]
    batch = [
        {
            "specversion": "1.0",
            "id": f"b-{n}",
            "source": "/shop",
            "type": "com.shop.x",
            "data": {"n": n},
            "traceparent": f"00-{trace}-{'3' * 16}-01",
        }
        for n, trace in enumerate(traces)
    ]
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        await ingest_ready(http, base)
        await wait_until(lambda: plane.has_group(route), 60, "the Trigger's group exists")
        async with http.post(
            f"{base}/sources/{plane.namespace}/src",
            data=json.dumps(batch),
            headers={"Content-Type": "application/cloudevents-batch+json"},
        ) as response:
            assert response.status == 202, await response.text()
    await wait_until(lambda: len(subscriber.received) == 2, 30, "both delivered")
    for n, trace in enumerate(traces):
        # `data` format too: the subscriber gets only the data, and the traceparent header.
        [received] = [r for r in subscriber.received if r.id == f"b-{n}"]
        assert received.headers["traceparent"].split("-")[1] == trace
        assert json.loads(received.body) == {"n": n}
        spans = await jaeger.spans(trace, 2)
        names = sorted(s["name"] for s in spans)
        assert names == [f"deliver {plane.namespace}/t", f"send {plane.namespace}/src"]
        send = next(s for s in spans if s["name"].startswith("send"))
        assert span_hex(send["parentSpanId"]) == "3" * 16
