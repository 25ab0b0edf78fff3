"""The four ways to POST events, each read back from the real stream."""

from __future__ import annotations

import json
import uuid

from ingest_harness import AUTH, IngestUnderTest

from tidings.dispatcher.ingest import DEFAULT_TYPE


async def test_binary_mode_maps_ce_headers_to_attributes_and_parses_json_data(
    ingest: IngestUnderTest,
) -> None:
    await ingest.add_source("orders")
    response = await ingest.client.post(
        ingest.url("orders"),
        data=json.dumps({"total": 42}),
        headers={
            **AUTH,
            "ce-specversion": "1.0",
            "ce-id": "order-1",
            "ce-source": "/shop/checkout",
            "ce-type": "com.shop.order.created",
            "ce-subject": "orders/1",
            "ce-time": "2024-05-01T12:00:00Z",
            "ce-tenant": "acme%20corp",  # percent-encoded, as the HTTP binding says
            "Content-Type": "application/json",
        },
    )
    assert response.status == 202, await response.text()
    assert await response.json() == {"accepted": ["order-1"], "duplicates": []}
    [event] = await ingest.stored("orders")
    assert (event.id, event.source, event.type) == (
        "order-1",
        "/shop/checkout",
        "com.shop.order.created",
    )
    assert event.subject == "orders/1"
    assert event.time == "2024-05-01T12:00:00Z"
    assert event.data == {"total": 42}
    assert event.datacontenttype == "application/json"
    assert event.extensions == {"tenant": "acme corp"}


async def test_binary_mode_keeps_non_json_bodies_as_bytes(ingest: IngestUnderTest) -> None:
    await ingest.add_source("files")
    response = await ingest.client.post(
        ingest.url("files"),
        data=b"\x00\x01binary",
        headers={
            **AUTH,
            "ce-specversion": "1.0",
            "ce-id": "f-1",
            "ce-source": "scanner",
            "ce-type": "com.example.blob",
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status == 202, await response.text()
    [event] = await ingest.stored("files")
    assert event.data == b"\x00\x01binary"
    assert event.datacontenttype == "application/octet-stream"


async def test_structured_mode_stores_the_event_as_sent(ingest: IngestUnderTest) -> None:
    await ingest.add_source("orders")
    body = {
        "specversion": "1.0",
        "id": "s-1",
        "source": "/shop",
        "type": "com.shop.paid",
        "datacontenttype": "application/json",
        "data": {"amount": 5},
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }
    response = await ingest.client.post(
        ingest.url("orders"),
        data=json.dumps(body),
        headers={**AUTH, "Content-Type": "application/cloudevents+json; charset=utf-8"},
    )
    assert response.status == 202, await response.text()
    [event] = await ingest.stored("orders")
    assert event.to_structured() == body


async def test_batch_mode_stores_every_event_in_order(ingest: IngestUnderTest) -> None:
    await ingest.add_source("orders")
    batch = [
        {"specversion": "1.0", "id": f"b-{i}", "source": "/shop", "type": "t", "data": i}
        for i in range(250)  # more than one script chunk
    ]
    response = await ingest.client.post(
        ingest.url("orders"),
        data=json.dumps(batch),
        headers={**AUTH, "Content-Type": "application/cloudevents-batch+json"},
    )
    assert response.status == 202, await response.text()
    assert (await response.json())["accepted"] == [f"b-{i}" for i in range(250)]
    assert [e.data for e in await ingest.stored("orders")] == list(range(250))


async def test_plain_json_is_wrapped_with_a_generated_id_and_the_source_path(
    ingest: IngestUnderTest,
) -> None:
    source = await ingest.add_source("hooks")
    response = await ingest.client.post(ingest.url("hooks"), json={"hello": "world"}, headers=AUTH)
    assert response.status == 202, await response.text()
    [generated] = (await response.json())["accepted"]
    [event] = await ingest.stored("hooks")
    assert event.id == generated and uuid.UUID(generated)
    assert event.type == DEFAULT_TYPE
    assert event.source == source.api_path
    assert event.data == {"hello": "world"}
    assert event.time is not None


async def test_plain_json_takes_type_and_subject_from_the_query_and_id_from_idempotency_key(
    ingest: IngestUnderTest,
) -> None:
    await ingest.add_source("hooks")
    for _ in range(2):
        response = await ingest.client.post(
            ingest.url("hooks") + "?type=com.example.signup&subject=users/7",
            json=[1, 2, 3],
            headers={**AUTH, "Idempotency-Key": "signup-7"},
        )
        assert response.status == 202, await response.text()
    [event] = await ingest.stored("hooks")  # the retry with the same key was deduplicated
    assert (event.id, event.type, event.subject, event.data) == (
        "signup-7",
        "com.example.signup",
        "users/7",
        [1, 2, 3],
    )
