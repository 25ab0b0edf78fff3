"""Ingest for objectStore sources in notify mode, on a real Redis: S3 event
notifications in, one CloudEvent per wanted record, stored before 202."""

from __future__ import annotations

from pathlib import Path

import pytest
from ingest_harness import IngestUnderTest

from tidings.api.s3events import CREATED_TYPE

pytestmark = pytest.mark.integration

RECORDED = Path(__file__).resolve().parents[2] / "unit" / "api" / "s3_notifications"


async def notify_source(ingest: IngestUnderTest, **store: object) -> None:
    await ingest.add_source(
        "up",
        objectStore={
            "endpoint": "http://s3:7070",
            "bucket": "uploads",
            "mode": "notify",
            "auth": {"tokenSecretRef": {"name": "up-token", "key": "token"}},
            **store,
        },
    )


async def test_a_notification_with_the_token_in_the_query_is_stored_once(
    ingest: IngestUnderTest,
) -> None:
    await notify_source(ingest)
    body = (RECORDED / "versity_created.json").read_bytes()
    url = ingest.url("up") + "?token=t0ken"
    first = await ingest.client.post(url, data=body)
    assert first.status == 202
    answer = await first.json()
    assert len(answer["accepted"]) == 1 and answer["ignored"] == 0
    again = await ingest.client.post(url, data=body)  # a store's resend
    assert (await again.json())["duplicates"] == answer["accepted"]
    [event] = await ingest.stored("up")
    assert (event.type, event.subject, event.source) == (
        CREATED_TYPE,
        "incoming/my photo+1.csv",
        "s3://uploads",
    )


async def test_records_the_source_does_not_want_are_ignored_and_not_stored(
    ingest: IngestUnderTest,
) -> None:
    await notify_source(ingest, prefix="elsewhere/")
    body = (RECORDED / "versity_created.json").read_bytes()
    response = await ingest.client.post(ingest.url("up") + "?token=t0ken", data=body)
    assert response.status == 202
    assert await response.json() == {"accepted": [], "duplicates": [], "ignored": 1}
    assert await ingest.stored("up") == []


async def test_a_body_that_is_no_notification_is_400_and_stores_nothing(
    ingest: IngestUnderTest,
) -> None:
    await notify_source(ingest)
    response = await ingest.client.post(
        ingest.url("up"), json={"hello": "world"}, headers={"Authorization": "Bearer t0ken"}
    )
    assert response.status == 400
    assert "Records: missing" in (await response.json())["error"]
    assert await ingest.stored("up") == []


async def test_a_wrong_token_in_the_query_is_403(ingest: IngestUnderTest) -> None:
    await notify_source(ingest)
    body = (RECORDED / "versity_created.json").read_bytes()
    response = await ingest.client.post(ingest.url("up") + "?token=nope", data=body)
    assert response.status == 403
    assert await ingest.stored("up") == []
