"""Delayed delivery on ingest: deliverafter (extension, Tidings-Deliver-After
header, ?deliverAfter=) is stored with the event; over the source's maxDelay
is 400 naming the limit, and nothing of the request is stored."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from ingest_harness import AUTH, IngestUnderTest

from tidings.api import keys

STRUCTURED = {"Content-Type": "application/cloudevents+json", **AUTH}
BATCH = {"Content-Type": "application/cloudevents-batch+json", **AUTH}


def at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def event(event_id: str, **extensions: str) -> dict[str, str]:
    return {"specversion": "1.0", "id": event_id, "source": "/s", "type": "t", **extensions}


async def due_fields(ingest: IngestUnderTest, name: str) -> dict[str, int | None]:
    entries = await ingest.redis.xrange(keys.stream(ingest.namespace, name))
    out: dict[str, int | None] = {}
    for _, fields in entries:
        stored = json.loads(fields[b"e"])
        due = fields.get(keys.FIELD_DUE.encode())
        out[stored["id"]] = int(due) if due is not None else None
    return out


async def test_deliverafter_extension_header_and_query_are_stored(
    ingest: IngestUnderTest,
) -> None:
    await ingest.add_source("orders")
    url = ingest.url("orders")
    later = at(60)
    done = await ingest.client.post(
        url, data=json.dumps(event("ext", deliverafter=later)), headers=STRUCTURED
    )
    assert done.status == 202, await done.text()
    done = await ingest.client.post(
        url,
        data=json.dumps(event("hdr")),
        headers={**STRUCTURED, "Tidings-Deliver-After": "90s"},
    )
    assert done.status == 202, await done.text()
    done = await ingest.client.post(
        url + "?deliverAfter=" + at(120), data=json.dumps(event("qry")), headers=STRUCTURED
    )
    assert done.status == 202, await done.text()
    done = await ingest.client.post(
        url, data=json.dumps(event("past", deliverafter=at(-60))), headers=STRUCTURED
    )
    assert done.status == 202, await done.text()
    now = time.time() * 1000
    due = await due_fields(ingest, "orders")
    assert due["past"] is None  # a time in the past is no delay
    for event_id, seconds in (("ext", 60), ("hdr", 90), ("qry", 120)):
        assert due[event_id] is not None
        assert abs(due[event_id] - (now + seconds * 1000)) < 3000, event_id  # type: ignore[operator]
    stored = {e.id: e for e in await ingest.stored("orders")}
    # The header's delay is written into the event, so the subscriber sees it.
    assert stored["hdr"].extensions["deliverafter"].endswith("Z")
    assert stored["ext"].extensions["deliverafter"] == later


async def test_a_delay_beyond_max_delay_is_400_naming_the_limit_and_stores_nothing(
    ingest: IngestUnderTest,
) -> None:
    await ingest.add_source("orders", {"auth": {"allowAnonymous": True}, "maxDelay": "1h"})
    url = ingest.url("orders")
    batch = [event("a"), event("b", deliverafter=at(2 * 3600))]
    done = await ingest.client.post(url, data=json.dumps(batch), headers=BATCH)
    assert done.status == 400
    message = (await done.json())["error"]
    assert "[1].deliverafter" in message and "maxDelay of 1h" in message, message
    assert "spec.http.maxDelay" in message
    done = await ingest.client.post(
        url, data=json.dumps(event("c")), headers={**STRUCTURED, "Tidings-Deliver-After": "2h"}
    )
    assert done.status == 400
    assert "Tidings-Deliver-After header" in (await done.json())["error"]
    done = await ingest.client.post(
        url + "?deliverAfter=soon", data=json.dumps(event("d")), headers=STRUCTURED
    )
    assert done.status == 400
    assert "deliverAfter query parameter" in (await done.json())["error"]
    done = await ingest.client.post(
        url, data=json.dumps(event("e", deliverafter="tomorrow")), headers=STRUCTURED
    )
    assert done.status == 400
    assert "deliverafter: 'tomorrow' is not an RFC 3339 time" in (await done.json())["error"]
    assert await ingest.stored("orders") == []
    # Within the limit it is accepted.
    done = await ingest.client.post(
        url, data=json.dumps(event("f", deliverafter=at(1800))), headers=STRUCTURED
    )
    assert done.status == 202, await done.text()
