"""Ingest for objectStore sources in notify mode: S3 notification bodies and
the token in the query (pure functions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from multidict import CIMultiDict

from tidings.api.routes import CompiledIngest, CompiledObjectStore, CompiledSource
from tidings.api.s3events import CREATED_TYPE
from tidings.dispatcher.ingest import IngestError, check_auth, parse_notification

RECORDED = Path(__file__).parents[1] / "api" / "s3_notifications"


def notify_source(**store: object) -> CompiledSource:
    return CompiledSource(
        namespace="media",
        name="uploads",
        kind="objectStore",
        stream="s",
        ingest=CompiledIngest(token_sealed="sesame", token_in_query=True),
        object_store=CompiledObjectStore(bucket="uploads", **store),
        retention_max_age=1,
        retention_max_events=1,
    )


def identity(sealed: str) -> str:
    return sealed


def test_a_versity_notification_becomes_one_created_event() -> None:
    body = (RECORDED / "versity_created.json").read_bytes()
    [event], ignored = parse_notification(notify_source(), body)
    assert (event.type, event.subject, ignored) == (CREATED_TYPE, "incoming/my photo+1.csv", 0)
    assert event.data["etag"] == "5d41402abc4b2a76b9719d911017c592"


def test_records_outside_the_prefix_suffix_or_bucket_are_ignored_not_refused() -> None:
    body = (RECORDED / "versity_created.json").read_bytes()
    assert parse_notification(notify_source(prefix="other/"), body) == ([], 1)
    assert parse_notification(notify_source(suffix=".png"), body) == ([], 1)
    other = notify_source()
    assert other.object_store is not None
    other = other.model_copy(update={"object_store": CompiledObjectStore(bucket="b2")})
    assert parse_notification(other, body) == ([], 1)


def test_a_deletion_is_ignored_unless_the_source_wants_deleted() -> None:
    body = (RECORDED / "versity_deleted.json").read_bytes()
    assert parse_notification(notify_source(), body)[0] == []
    events, _ = parse_notification(notify_source(events=["created", "deleted"]), body)
    assert len(events) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [(b"not json", "body: not JSON"), (b"[]", "body: expected"), (b"{}", "Records: missing")],
)
def test_a_body_that_is_no_notification_is_400_naming_the_problem(body: bytes, field: str) -> None:
    with pytest.raises(IngestError) as refused:
        parse_notification(notify_source(), body)
    assert refused.value.status == 400
    assert field in refused.value.message


def test_the_token_may_come_as_a_query_parameter() -> None:
    ingest = notify_source().ingest
    assert ingest is not None
    check_auth(ingest, CIMultiDict(), None, identity, {"token": "sesame"})
    with pytest.raises(IngestError) as wrong:
        check_auth(ingest, CIMultiDict(), None, identity, {"token": "sesam"})
    assert (wrong.value.status, "token query parameter" in wrong.value.message) == (403, True)
    with pytest.raises(IngestError) as missing:
        check_auth(ingest, CIMultiDict(), None, identity, {})
    assert missing.value.status == 401 and "?token=" in missing.value.message


def test_http_sources_do_not_take_the_token_from_the_query() -> None:
    ingest = CompiledIngest(token_sealed="sesame")
    with pytest.raises(IngestError) as refused:
        check_auth(ingest, CIMultiDict(), None, identity, {"token": "sesame"})
    assert refused.value.status == 401
