"""A duplicate (same CloudEvents source + id) within the window is accepted once."""

from __future__ import annotations

import asyncio
import json

from ingest_harness import AUTH, IngestUnderTest

from tidings.api import keys
from tidings.api.events import CloudEvent
from tidings.dispatcher import streams

STRUCTURED = {**AUTH, "Content-Type": "application/cloudevents+json"}
BATCH = {**AUTH, "Content-Type": "application/cloudevents-batch+json"}


def event(id: str, source: str = "/shop", data: object = None) -> dict[str, object]:
    return {"specversion": "1.0", "id": id, "source": source, "type": "t", "data": data}


async def test_the_same_event_posted_twice_is_stored_once_and_answered_202_both_times(
    ingest: IngestUnderTest,
) -> None:
    await ingest.add_source("orders")
    first = await ingest.client.post(
        ingest.url("orders"), data=json.dumps(event("o-1", data=1)), headers=STRUCTURED
    )
    again = await ingest.client.post(
        ingest.url("orders"), data=json.dumps(event("o-1", data=2)), headers=STRUCTURED
    )
    assert first.status == again.status == 202
    assert await first.json() == {"accepted": ["o-1"], "duplicates": []}
    assert await again.json() == {"accepted": [], "duplicates": ["o-1"]}
    assert [e.data for e in await ingest.stored("orders")] == [1]


async def test_the_same_id_from_another_producer_source_is_not_a_duplicate(
    ingest: IngestUnderTest,
) -> None:
    await ingest.add_source("orders")
    batch = [event("1", "/shop/eu"), event("1", "/shop/us")]
    response = await ingest.client.post(ingest.url("orders"), data=json.dumps(batch), headers=BATCH)
    assert (await response.json())["accepted"] == ["1", "1"]
    assert len(await ingest.stored("orders")) == 2


async def test_duplicates_inside_one_batch_are_stored_once(ingest: IngestUnderTest) -> None:
    await ingest.add_source("orders")
    batch = [event("a", data=1), event("b", data=2), event("a", data=3)]
    response = await ingest.client.post(ingest.url("orders"), data=json.dumps(batch), headers=BATCH)
    assert await response.json() == {"accepted": ["a", "b"], "duplicates": ["a"]}
    assert [e.data for e in await ingest.stored("orders")] == [1, 2]


async def test_after_the_window_the_same_id_is_accepted_again(ingest: IngestUnderTest) -> None:
    await ingest.add_source(
        "orders",
        http={
            "auth": {"tokenSecretRef": {"name": "orders-token", "key": "token"}},
            "dedupeWindow": "300ms",
        },
    )
    for _ in range(2):
        response = await ingest.client.post(
            ingest.url("orders"), data=json.dumps(event("o-1")), headers=STRUCTURED
        )
        assert (await response.json())["accepted"] == ["o-1"]
        await asyncio.sleep(0.4)
    assert len(await ingest.stored("orders")) == 2


async def test_append_returns_the_stream_id_of_the_first_copy_for_a_duplicate(
    ingest: IngestUnderTest,
) -> None:
    source = await ingest.add_source("orders")
    one = CloudEvent(id="x", source="/s", type="t")
    first = await streams.append(ingest.redis, source, [one])
    again = await streams.append(ingest.redis, source, [one])
    assert again.events[0].duplicate and not first.events[0].duplicate
    assert again.events[0].stream_id == first.events[0].stream_id
    # The dedupe key expires with the window, so memory does not grow forever.
    ttl = await ingest.redis.pttl(streams.dedupe_key(source, one))
    assert 0 < ttl <= 300_000
    assert await ingest.redis.xlen(keys.stream(ingest.namespace, "orders")) == 1


async def test_concurrent_requests_share_script_calls_and_each_id_is_accepted_once(
    ingest: IngestUnderTest,
) -> None:
    """Requests arriving while an append is on its way gather into the next one
    (streams.Coalescer): every request still gets its own answer, each id is
    accepted by exactly one of the requests that sent it, and fewer script calls
    than requests reach Redis."""
    await ingest.add_source("orders")
    await ingest.redis.config_resetstat()
    ids = [f"c-{n}" for n in range(10)]
    sends = [(id, copy) for copy in range(4) for id in ids]

    async def post(id: str, copy: int) -> dict[str, list[str]]:
        response = await ingest.client.post(
            ingest.url("orders"), data=json.dumps(event(id, data=copy)), headers=STRUCTURED
        )
        assert response.status == 202, await response.text()
        answer: dict[str, list[str]] = await response.json()
        return answer

    answers = await asyncio.gather(*(post(id, copy) for id, copy in sends))
    for (id, _), answer in zip(sends, answers, strict=True):
        assert answer["accepted"] + answer["duplicates"] == [id]
    accepted = sorted(id for answer in answers for id in answer["accepted"])
    assert accepted == sorted(ids)
    assert sorted(e.id for e in await ingest.stored("orders")) == sorted(ids)
    calls = (await ingest.redis.info("commandstats"))["cmdstat_evalsha"]["calls"]
    assert calls < len(sends), f"{calls} script calls for {len(sends)} concurrent requests"
