"""Object-store events: S3 event notification records and poll observations,
both turned into the same CloudEvents (pure functions, no I/O).

Types `dev.tidings.objectstore.object.created` / `.deleted`; `source` is
`s3://BUCKET`; `subject` is the object key; `data` is
`{bucket, key, size, etag, versionId, contentType?, eventName}` (no bodies).

Notify mode: a store POSTs the AWS `{"Records": [...]}` JSON that AWS (via
Lambda/SNS), MinIO, Ceph RGW and Versity Gateway emit. They differ in small
ways this module absorbs:

- `eventName` is `ObjectCreated:Put` (AWS, Ceph, Versity) or
  `s3:ObjectCreated:Put` (MinIO, some Ceph releases); both are accepted, and
  kept in `data.eventName` without the `s3:` prefix.
- keys are URL-encoded by AWS and MinIO (form encoding: `+` is a space); Ceph
  RGW (`eventSource: ceph:s3`) and Versity Gateway (which says `aws:s3`, but
  names its configuration `webhook-global`, `kafka-global`, …) send them as
  they are.
- `size` is a number, or a string (Ceph); the ETag may carry quotes.
- `versionId` is absent, null or "" on unversioned buckets: all become null.

Poll mode sees objects in a listing, not requests: the event time of a
creation is the object's LastModified, of a deletion the time the poll noticed
it; `eventName` is `ObjectCreated:*` / `ObjectRemoved:*` (a listing cannot
tell a PUT from a copy or a multipart upload).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

from tidings.api.events import CloudEvent

CREATED_TYPE = "dev.tidings.objectstore.object.created"
DELETED_TYPE = "dev.tidings.objectstore.object.deleted"
POLL_CREATED = "ObjectCreated:*"
POLL_DELETED = "ObjectRemoved:*"

Kind = Literal["created", "deleted"]

# eventName prefixes (without "s3:") that mean an object appeared or went away.
_CREATED = ("ObjectCreated:",)
_DELETED = ("ObjectRemoved:", "LifecycleExpiration:", "ObjectLifecycle:Expiration:")
# Stores that put the key in the record as it is, not URL-encoded: by eventSource,
# and Versity Gateway by its fixed configurationIds (it claims aws:s3).
_RAW_KEY_SOURCES = frozenset({"ceph:s3"})
_RAW_KEY_CONFIGURATIONS = frozenset(
    {"webhook-global", "kafka-global", "nats-global", "rabbitmq-global"}
)


def _raw_key(record: Mapping[str, Any]) -> bool:
    if record.get("eventSource") in _RAW_KEY_SOURCES:
        return True
    s3 = record.get("s3")
    return isinstance(s3, Mapping) and s3.get("configurationId") in _RAW_KEY_CONFIGURATIONS


class NotificationError(ValueError):
    """A notification body that is not S3 event records; the message names the field."""


@dataclass(frozen=True)
class KeyFilter:
    """Which objects and changes a source wants (spec.objectStore)."""

    prefix: str = ""
    suffix: str = ""
    events: frozenset[str] = frozenset({"created"})

    def wants_key(self, key: str) -> bool:
        return key.startswith(self.prefix) and key.endswith(self.suffix)

    def wants(self, kind: str, key: str) -> bool:
        return kind in self.events and self.wants_key(key)


@dataclass(frozen=True)
class ObjectVersion:
    """An object as a listing shows it. Two listings show the same version
    when etag and lastModified agree (an overwrite with the same bytes still
    moves lastModified)."""

    key: str
    etag: str
    size: int
    last_modified: str  # RFC 3339, UTC
    version_id: str | None = None

    def stored(self) -> str:
        """The value kept per key in Redis (keys.adapter_objects)."""
        return json.dumps(
            [self.etag, self.last_modified, self.size, self.version_id], separators=(",", ":")
        )

    @classmethod
    def from_stored(cls, key: str, value: str) -> ObjectVersion:
        etag, last_modified, size, version_id = json.loads(value)
        return cls(key, str(etag), int(size), str(last_modified), version_id)


def source_uri(bucket: str) -> str:
    return f"s3://{bucket}"


def normalize_etag(etag: Any) -> str:
    return str(etag or "").strip('"')


def rfc3339(moment: datetime) -> str:
    """UTC, milliseconds, `Z`: the same text for the same instant, whatever the store."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_id(*parts: str | int | None) -> str:
    """A stable id: the same change yields the same id on every replica and
    after every restart, so subscribers (and ingest's dedupe window) can drop
    a repeat."""
    digest = hashlib.sha256("\x00".join("" if p is None else str(p) for p in parts).encode())
    return f"s3-{digest.hexdigest()[:32]}"


def object_event(
    kind: Kind,
    *,
    bucket: str,
    key: str,
    size: int,
    etag: str,
    version_id: str | None,
    event_name: str,
    time: str | None,
    id: str,
    content_type: str | None = None,
) -> CloudEvent:
    data: dict[str, Any] = {
        "bucket": bucket,
        "key": key,
        "size": size,
        "etag": etag,
        "versionId": version_id,
        "eventName": event_name,
    }
    if content_type:
        data["contentType"] = content_type
    return CloudEvent(
        id=id,
        source=source_uri(bucket),
        type=CREATED_TYPE if kind == "created" else DELETED_TYPE,
        subject=key,
        time=time,
        datacontenttype="application/json",
        data=data,
    )


# --- poll mode ------------------------------------------------------------------------


def created_event(bucket: str, obj: ObjectVersion) -> CloudEvent:
    return object_event(
        "created",
        bucket=bucket,
        key=obj.key,
        size=obj.size,
        etag=obj.etag,
        version_id=obj.version_id,
        event_name=POLL_CREATED,
        time=obj.last_modified,
        id=event_id("created", bucket, obj.key, obj.etag, obj.last_modified, obj.version_id),
    )


def deleted_event(bucket: str, obj: ObjectVersion, noticed: str) -> CloudEvent:
    return object_event(
        "deleted",
        bucket=bucket,
        key=obj.key,
        size=obj.size,
        etag=obj.etag,
        version_id=obj.version_id,
        event_name=POLL_DELETED,
        time=noticed,
        # The version that went away names the deletion: a poll after a crash
        # that notices it again yields the same id.
        id=event_id("deleted", bucket, obj.key, obj.etag, obj.last_modified, obj.version_id),
    )


@dataclass(frozen=True)
class Change:
    """One key's move from `old` (None: absent) to `new` (None: gone)."""

    key: str
    old: ObjectVersion | None
    new: ObjectVersion | None


def diff(known: Mapping[str, str], listed: Mapping[str, ObjectVersion]) -> list[Change]:
    """What changed between the remembered state (key -> ObjectVersion.stored())
    and a complete listing: new and changed keys, then vanished ones."""
    changes: list[Change] = []
    for key, obj in listed.items():
        before = known.get(key)
        if before is None:
            changes.append(Change(key, None, obj))
        elif before != obj.stored():
            changes.append(Change(key, ObjectVersion.from_stored(key, before), obj))
    for key, before in known.items():
        if key not in listed:
            changes.append(Change(key, ObjectVersion.from_stored(key, before), None))
    return changes


# --- notify mode ----------------------------------------------------------------------


def parse_notification(body: bytes) -> list[dict[str, Any]]:
    """The records of a notification body, or NotificationError naming the problem."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise NotificationError(f"body: not JSON ({error})") from None
    if not isinstance(document, dict):
        raise NotificationError("body: expected an S3 event notification object with Records")
    records = document.get("Records")
    if records is None:
        # AWS sends s3:TestEvent when a notification is configured; Versity a test record.
        if document.get("Event") == "s3:TestEvent":
            return []
        raise NotificationError('Records: missing; expected {"Records": [...]}')
    if not isinstance(records, list):
        raise NotificationError("Records: expected a list")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise NotificationError(f"Records[{index}]: expected an object")
    return records


def record_kind(event_name: str) -> Kind | None:
    name = event_name.removeprefix("s3:")
    if name.startswith(_CREATED):
        return "created"
    if name.startswith(_DELETED):
        return "deleted"
    return None  # accessed, restored, tagged, replicated: not an object change


def _field(record: Mapping[str, Any], path: str, index: int) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise NotificationError(f"Records[{index}].{path}: missing")
        value = value[part]
    return value


def _size(value: Any, index: int) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        raise NotificationError(f"Records[{index}].s3.object.size: not a number") from None


def _time(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return rfc3339(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


def event_from_record(record: Mapping[str, Any], index: int = 0) -> CloudEvent | None:
    """One S3 event record as a CloudEvent; None for a record that is not an
    object creation or deletion."""
    event_name = str(_field(record, "eventName", index)).removeprefix("s3:")
    kind = record_kind(event_name)
    if kind is None:
        return None
    bucket = str(_field(record, "s3.bucket.name", index))
    obj = _field(record, "s3.object", index)
    raw_key = str(_field(record, "s3.object.key", index))
    key = raw_key if _raw_key(record) else unquote_plus(raw_key)
    etag = normalize_etag(obj.get("eTag") or obj.get("etag"))
    version_id = obj.get("versionId") or None
    sequencer = obj.get("sequencer") or ""
    content_type = obj.get("contentType") or None
    time = _time(record.get("eventTime"))
    return object_event(
        kind,
        bucket=bucket,
        key=key,
        size=_size(obj.get("size"), index),
        etag=etag,
        version_id=str(version_id) if version_id is not None else None,
        event_name=event_name,
        time=time,
        content_type=str(content_type) if content_type else None,
        # The sequencer orders a key's events and differs between two PUTs of
        # the same bytes; a store's resend of one record yields the same id.
        id=event_id(kind, bucket, key, etag, version_id, sequencer, record.get("eventTime")),
    )


@dataclass(frozen=True)
class Notification:
    events: list[CloudEvent]
    ignored: int  # other buckets, keys or changes than the source wants


def events_from_notification(body: bytes, *, bucket: str, wanted: KeyFilter) -> Notification:
    """The CloudEvents of a notification for the source's bucket and filter."""
    events: list[CloudEvent] = []
    ignored = 0
    for index, record in enumerate(parse_notification(body)):
        event = event_from_record(record, index)
        if event is None or event.subject is None:
            ignored += 1
            continue
        kind = "created" if event.type == CREATED_TYPE else "deleted"
        if event.data["bucket"] != bucket or not wanted.wants(kind, event.subject):
            ignored += 1
            continue
        events.append(event)
    return Notification(events, ignored)


def listed_time(moment: datetime | None) -> str:
    return rfc3339(moment or datetime.now(UTC))
