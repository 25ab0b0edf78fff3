"""CloudEvents 1.0 as Tidings stores them: one JSON object per stream entry.

Ingest and the source adapters append events with `encode`. The stored form
is the structured-mode JSON of the event (`data` inline when it is JSON,
`data_base64` otherwise), so structured delivery forwards it as is: the
dispatcher takes the raw fields from its fetch script (tidings.dispatcher.cursor)
and parses the JSON once, never building a CloudEvent. `decode` is for whoever
reads a stream entry directly (tools, tests).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tidings.api import keys

SPEC_VERSION = "1.0"
REQUIRED = ("id", "source", "type", "specversion")
# Attributes with a defined meaning; anything else is an extension attribute.
KNOWN = ("id", "source", "type", "specversion", "subject", "time", "datacontenttype", "dataschema")


@dataclass
class CloudEvent:
    id: str
    source: str
    type: str
    data: Any = None  # JSON value, or bytes for non-JSON payloads
    subject: str | None = None
    time: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)

    def attributes(self) -> dict[str, Any]:
        """Context attributes (no data), as CloudEvents names them."""
        attrs: dict[str, Any] = {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
        }
        for name in ("subject", "time", "datacontenttype", "dataschema"):
            value = getattr(self, name)
            if value is not None:
                attrs[name] = value
        attrs.update(self.extensions)
        return attrs

    def to_structured(self) -> dict[str, Any]:
        """The structured-mode JSON object (application/cloudevents+json)."""
        body = self.attributes()
        if isinstance(self.data, bytes | bytearray):
            body["data_base64"] = base64.b64encode(self.data).decode()
        elif self.data is not None:
            body["data"] = self.data
        return body

    @classmethod
    def from_structured(cls, body: dict[str, Any]) -> CloudEvent:
        data: Any = body.get("data")
        if "data_base64" in body:
            data = base64.b64decode(body["data_base64"])
        return cls(
            id=str(body["id"]),
            source=str(body["source"]),
            type=str(body["type"]),
            data=data,
            subject=body.get("subject"),
            time=body.get("time"),
            datacontenttype=body.get("datacontenttype"),
            dataschema=body.get("dataschema"),
            extensions={
                k: str(v)
                for k, v in body.items()
                if k not in KNOWN and k not in ("data", "data_base64")
            },
        )


def new_id() -> str:
    return str(uuid.uuid4())


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# The CloudEvents extension asking for delivery no earlier than a time (RFC 3339).
DELIVER_AFTER = "deliverafter"
# The same for every event of an ingest request without its own: an RFC 3339 time
# or a duration from now (tidings.dispatcher.ingest; `tidings send --deliver-after`).
DELIVER_AFTER_HEADER = "Tidings-Deliver-After"


def parse_rfc3339_ms(value: str) -> int | None:
    """An RFC 3339 time (with a zone) as ms since the epoch, or None."""
    try:
        when = datetime.fromisoformat(value.strip().upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return int(when.timestamp() * 1000)


def deliver_after_ms(event: CloudEvent) -> int | None:
    """When a delayed event is due (its `deliverafter`), ms since the epoch; None if
    it has none (ingest has checked the ones it accepts)."""
    value = event.extensions.get(DELIVER_AFTER)
    return parse_rfc3339_ms(value) if value else None


def encode(event: CloudEvent, ingested_ms: int | None = None) -> dict[str, str]:
    """Stream entry fields for XADD; FIELD_DUE too when the event is due later."""
    now = ingested_ms if ingested_ms is not None else int(time.time() * 1000)
    fields = {
        keys.FIELD_EVENT: json.dumps(event.to_structured(), separators=(",", ":")),
        keys.FIELD_TIME: str(now),
    }
    due = deliver_after_ms(event)
    if due is not None and due > now:
        fields[keys.FIELD_DUE] = str(due)
    return fields


def decode(fields: dict[Any, Any]) -> tuple[CloudEvent, int]:
    """A stream entry's event and its ingest time (ms)."""

    def get(name: str) -> str:
        value = fields.get(name, fields.get(name.encode()))
        return value.decode() if isinstance(value, bytes) else str(value)

    return CloudEvent.from_structured(json.loads(get(keys.FIELD_EVENT))), int(get(keys.FIELD_TIME))
