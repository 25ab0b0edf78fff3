"""S3 event notification records and poll observations -> CloudEvents.

The notification bodies in s3_notifications/ are as documented by each store
family (AWS's event message structure, MinIO's bucket notification guide, Ceph
RGW's event record) or, for Versity Gateway, recorded from v1.8.0's webhook.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.api.s3events import (
    CREATED_TYPE,
    DELETED_TYPE,
    KeyFilter,
    NotificationError,
    ObjectVersion,
    created_event,
    deleted_event,
    diff,
    events_from_notification,
)

RECORDED = Path(__file__).parent / "s3_notifications"
BOTH = KeyFilter(events=frozenset({"created", "deleted"}))


def body(name: str) -> bytes:
    return (RECORDED / name).read_bytes()


def test_aws_records_become_created_and_deleted_with_url_decoded_keys() -> None:
    got = events_from_notification(body("aws.json"), bucket="uploads", wanted=BOTH)
    created, deleted = got.events
    assert created.type == CREATED_TYPE
    assert created.source == "s3://uploads"
    assert created.subject == "incoming/Happy Face(1).csv"
    assert created.time == "1970-01-01T00:00:00.000Z"
    assert created.data == {
        "bucket": "uploads",
        "key": "incoming/Happy Face(1).csv",
        "size": 1024,
        "etag": "d41d8cd98f00b204e9800998ecf8427e",
        "versionId": "096fKKXTRTtl3on89fVO.nfljtsv6qko",
        "eventName": "ObjectCreated:Put",
    }
    assert deleted.type == DELETED_TYPE
    assert deleted.subject == "incoming/old.csv"
    assert deleted.data["size"] == 0 and deleted.data["etag"] == ""


def test_minio_names_lose_the_s3_prefix_and_keep_the_content_type() -> None:
    (event,) = events_from_notification(body("minio.json"), bucket="uploads", wanted=BOTH).events
    assert event.subject == "incoming/my photo.csv"
    assert event.data["eventName"] == "ObjectCreated:Put"
    assert event.data["contentType"] == "text/csv"
    assert event.data["versionId"] is None
    assert event.time == "2019-09-10T17:41:54.000Z"


def test_ceph_keys_are_taken_as_sent_and_string_sizes_become_numbers() -> None:
    created, expired = events_from_notification(
        body("ceph.json"), bucket="uploads", wanted=BOTH
    ).events
    assert created.subject == "incoming/a+b.csv"
    assert created.data["size"] == 1024
    assert created.data["versionId"] is None  # "" on an unversioned bucket
    assert created.time == "2019-11-22T13:47:35.124Z"
    assert expired.type == DELETED_TYPE  # lifecycle expiration removes the object
    assert expired.data["eventName"] == "ObjectLifecycle:Expiration:Current"


def test_versity_keys_are_raw_and_etag_quotes_are_dropped() -> None:
    (created,) = events_from_notification(
        body("versity_created.json"), bucket="uploads", wanted=BOTH
    ).events
    (deleted,) = events_from_notification(
        body("versity_deleted.json"), bucket="uploads", wanted=BOTH
    ).events
    assert created.subject == "incoming/my photo+1.csv"
    assert created.data["etag"] == "5d41402abc4b2a76b9719d911017c592"
    assert created.data["size"] == 5
    assert deleted.type == DELETED_TYPE
    assert deleted.data["etag"] == ""


def test_a_test_event_has_no_records() -> None:
    got = events_from_notification(body("versity_test_event.json"), bucket="x", wanted=BOTH)
    assert got.events == [] and got.ignored == 0


def test_other_buckets_keys_and_unwanted_changes_are_ignored() -> None:
    only_csv_created = KeyFilter(prefix="incoming/", suffix=".csv")
    got = events_from_notification(body("aws.json"), bucket="uploads", wanted=only_csv_created)
    assert [e.type for e in got.events] == [CREATED_TYPE]
    assert got.ignored == 1
    other = events_from_notification(body("aws.json"), bucket="elsewhere", wanted=BOTH)
    assert other.events == [] and other.ignored == 2
    prefixed = KeyFilter(prefix="archive/", events=frozenset({"created", "deleted"}))
    assert (
        events_from_notification(body("aws.json"), bucket="uploads", wanted=prefixed).ignored == 2
    )


def test_the_same_record_always_has_the_same_id_and_two_puts_differ() -> None:
    first = events_from_notification(body("minio.json"), bucket="uploads", wanted=BOTH).events[0]
    again = events_from_notification(body("minio.json"), bucket="uploads", wanted=BOTH).events[0]
    assert first.id == again.id
    second_put = body("minio.json").replace(b"15C32494527B46C5", b"15C32494527B46C6")
    other = events_from_notification(second_put, bucket="uploads", wanted=BOTH).events[0]
    assert other.id != first.id


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"not json", "body"),
        (b"[1]", "body"),
        (b"{}", "Records"),
        (b'{"Records": {}}', "Records"),
        (b'{"Records": [1]}', "Records[0]"),
        (b'{"Records": [{"eventName": "ObjectCreated:Put"}]}', "Records[0].s3.bucket.name"),
        (
            b'{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"},'
            b' "object": {"key": "k", "size": "big"}}}]}',
            "Records[0].s3.object.size",
        ),
    ],
)
def test_a_malformed_notification_names_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(NotificationError, match=field.replace("[", r"\[").replace("]", r"\]")):
        events_from_notification(raw, bucket="b", wanted=BOTH)


def test_accessed_and_restored_records_are_not_object_changes() -> None:
    raw = body("minio.json").replace(b"s3:ObjectCreated:Put", b"s3:ObjectAccessed:Get")
    got = events_from_notification(raw, bucket="uploads", wanted=BOTH)
    assert got.events == [] and got.ignored == 1


V1 = ObjectVersion("a.csv", "e1", 3, "2026-01-01T00:00:00.000Z")
V2 = ObjectVersion("a.csv", "e2", 4, "2026-01-01T00:00:05.000Z")
B = ObjectVersion("b.csv", "eb", 1, "2026-01-01T00:00:00.000Z")


def test_diff_finds_new_changed_and_vanished_keys() -> None:
    known = {"a.csv": V1.stored(), "b.csv": B.stored()}
    assert diff(known, {"a.csv": V1, "b.csv": B}) == []
    changes = diff(known, {"a.csv": V2, "c.csv": B})
    assert [(c.key, c.old, c.new) for c in changes] == [
        ("a.csv", V1, V2),
        ("c.csv", None, B),
        ("b.csv", B, None),
    ]


def test_an_overwrite_with_the_same_bytes_is_a_new_version() -> None:
    same_bytes_later = ObjectVersion("a.csv", "e1", 3, "2026-01-01T00:00:09.000Z")
    assert len(diff({"a.csv": V1.stored()}, {"a.csv": same_bytes_later})) == 1


def test_poll_events_use_last_modified_and_stable_ids() -> None:
    created = created_event("up", V1)
    assert created.time == V1.last_modified
    assert created.data["eventName"] == "ObjectCreated:*"
    assert created.id == created_event("up", V1).id != created_event("up", V2).id
    deleted = deleted_event("up", V1, "2026-02-02T00:00:00.000Z")
    assert deleted.time == "2026-02-02T00:00:00.000Z"
    assert deleted.data["eventName"] == "ObjectRemoved:*"
    assert deleted.id == deleted_event("up", V1, "2030-01-01T00:00:00.000Z").id
    assert ObjectVersion.from_stored("a.csv", V1.stored()) == V1
