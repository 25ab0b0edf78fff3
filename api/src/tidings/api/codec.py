"""The CloudEvents HTTP binding, once, for every hop: ingest reads requests with
it, delivery writes them, `tidings send` builds its test events with it.

Reading (`from_structured`, `from_binary`, `from_batch`) validates as
CloudEvents 1.0 says and raises `FormatError` naming the attribute and the
fix. Writing (`encode`) takes the stored structured JSON (`events.encode`
wrote it) and returns the headers and body of one mode:

- `binary`: attributes as `ce-*` headers, percent-encoded as the binding
  says, the data as the body;
- `structured`: the whole event as `application/cloudevents+json`;
- `data`: the data alone, for receivers that know nothing of CloudEvents.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote, unquote

from tidings.api.events import KNOWN, CloudEvent

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
Mode = Literal["binary", "structured", "data"]

# CloudEvents 1.0: attribute names are lower-case ASCII letters and digits.
_ATTRIBUTE_NAME = re.compile(r"^[a-z0-9]+$")
_OPTIONAL_STRINGS = ("subject", "datacontenttype", "dataschema")
_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)$")
# Percent-encode space, '"', '%' and anything outside printable ASCII.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
_NEEDS_QUOTING = re.compile(r"[^\x21\x23\x24\x26-\x7e]")

# Headers Tidings writes itself on a delivery (this binding, Standard Webhooks):
# no Trigger setting (headers, headersFrom) may replace them.
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "traceparent", "tracestate"}
)
RESERVED_HEADER_PREFIXES = ("ce-", "webhook-")


class FormatError(ValueError):
    """A request that is not a CloudEvent as it claims; `status` is 400 or 415."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _bad(message: str) -> FormatError:
    return FormatError(message)


# --- reading --------------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json_media(media: str) -> bool:
    return media in ("application/json", "text/json") or media.endswith("+json")


def parse_json(body: bytes, what: str) -> Any:
    """`body` as JSON, or FormatError naming `what` and the fix."""
    if not body.strip():
        raise _bad(f"{what}: empty; send a JSON value")
    try:
        return json.loads(body, parse_constant=_not_json)
    except ValueError as error:
        raise _bad(f"{what}: not valid JSON ({error})") from None
    except RecursionError:
        # A few thousand `[` exhaust the decoder's stack: a client error, not a 500.
        raise _bad(f"{what}: JSON nested too deeply; flatten the document") from None


def _not_json(constant: str) -> Any:
    # Python's decoder takes NaN and Infinity; JSON (RFC 8259) has no such values, and
    # a subscriber's strict parser would choke on them once stored and delivered.
    raise ValueError(f"{constant} is not a JSON value; send a number, a string or null")


def check_unicode(value: str, field: str) -> str:
    """`value` back, or FormatError when it holds a lone surrogate (from a `\ud800`
    JSON escape or an undecodable header): not text, and not storable as UTF-8."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise _bad(
            f"{field}: not valid Unicode (a lone surrogate such as \\ud800); send UTF-8 text"
        ) from None
    return value


def _check_time(value: str, field: str) -> None:
    try:
        if not _RFC3339.match(value):
            raise ValueError
        datetime.fromisoformat(value.upper())
    except ValueError:
        raise _bad(
            f"{field}: {value!r} is not an RFC 3339 timestamp, e.g. 2024-05-01T12:00:00Z"
        ) from None


def _extension_value(value: Any, field: str) -> str:
    # JSON booleans and integers are CloudEvents types; they travel as strings.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    raise _bad(f"{field}: an extension attribute must be a string, integer or boolean")


def from_structured(body: Any, where: str = "") -> CloudEvent:
    """One structured-mode event (a decoded JSON object), validated.
    `where` prefixes field names in errors, e.g. `[3].` inside a batch."""
    if not isinstance(body, dict):
        raise _bad(f"{where or 'body'}: a CloudEvent must be a JSON object")
    # JSON null means "absent" for every attribute.
    attrs = {k: v for k, v in body.items() if v is not None}
    specversion = attrs.get("specversion")
    if specversion is None:
        raise _bad(f'{where}specversion: required; set "specversion": "1.0"')
    if specversion != "1.0":
        raise _bad(f'{where}specversion: {specversion!r} is not supported; use "1.0"')
    for name in ("id", "source", "type"):
        value = attrs.get(name)
        if value is None:
            raise _bad(f"{where}{name}: required (CloudEvents needs id, source, type)")
        if not isinstance(value, str) or not value:
            raise _bad(f"{where}{name}: must be a non-empty string")
    for name in _OPTIONAL_STRINGS:
        if name in attrs and not isinstance(attrs[name], str):
            raise _bad(f"{where}{name}: must be a string")
    if "time" in attrs:
        if not isinstance(attrs["time"], str):
            raise _bad(f"{where}time: must be an RFC 3339 string")
        _check_time(attrs["time"], f"{where}time")
    if "data" in attrs and "data_base64" in attrs:
        raise _bad(f"{where}data_base64: set either data or data_base64, not both")
    data: Any = attrs.get("data")
    if "data_base64" in attrs:
        encoded = attrs["data_base64"]
        try:
            if not isinstance(encoded, str):
                raise ValueError
            data = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error):
            raise _bad(f"{where}data_base64: must be a base64 string") from None
    extensions = {
        name: _extension_value(value, _attribute_name(name, f"{where}{name}"))
        for name, value in attrs.items()
        if name not in KNOWN and name not in ("data", "data_base64")
    }
    return _event(attrs, data, attrs.get("datacontenttype"), extensions, f"{where}{{}}")


def from_binary(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """A binary-mode event: `ce-*` headers (percent-decoded) and the body as data."""
    attrs: dict[str, str] = {}
    for header, value in headers.items():
        lower = header.lower()
        if lower.startswith("ce-") and lower[3:] not in attrs:
            attrs[lower[3:]] = unquote(value)
    if attrs.get("specversion") != "1.0":
        raise _bad(f"ce-specversion header: {attrs.get('specversion')!r} is not supported; use 1.0")
    for name in ("id", "source", "type"):
        if not attrs.get(name):
            raise _bad(f"ce-{name} header: required in binary mode (CloudEvents 1.0)")
    if "time" in attrs:
        _check_time(attrs["time"], "ce-time header")
    content_type = headers.get("Content-Type") or attrs.get("datacontenttype")
    data: Any = None
    if body:
        if is_json_media(media_type(content_type)):
            data = parse_json(body, f"body (Content-Type {media_type(content_type)})")
        else:
            data = body
    if "data" in attrs:
        raise _bad("ce-data header: in binary mode the data is the request body")
    extensions = {
        name: value
        for name, value in attrs.items()
        if name not in KNOWN and _attribute_name(name, f"ce-{name} header")
    }
    return _event(attrs, data, content_type, extensions, "ce-{} header")


def _attribute_name(name: str, label: str) -> str:
    """`label` back if `name` is a valid CloudEvents attribute name, else FormatError."""
    if not _ATTRIBUTE_NAME.match(name):
        raise _bad(
            f"{label}: not a valid attribute name; CloudEvents attribute names "
            "are lower-case letters and digits only"
        )
    return label


def _event(
    attrs: Mapping[str, Any],
    data: Any,
    content_type: str | None,
    extensions: dict[str, str],
    label: str,
) -> CloudEvent:
    """The CloudEvent; `label` names an attribute in errors (`"[3].{}"`, `"ce-{} header"`)."""
    for name, value in (*attrs.items(), *extensions.items()):
        if isinstance(value, str) and name not in ("data", "data_base64"):
            check_unicode(value, label.format(name))
    if content_type is not None:
        check_unicode(content_type, label.format("datacontenttype"))
    return CloudEvent(
        id=attrs["id"],
        source=attrs["source"],
        type=attrs["type"],
        data=data,
        subject=attrs.get("subject"),
        time=attrs.get("time"),
        datacontenttype=content_type,
        dataschema=attrs.get("dataschema"),
        extensions=extensions,
    )


def from_batch(body: bytes) -> list[CloudEvent]:
    """A batch: a JSON array of structured events; errors name the item, `[3].id`."""
    batch = parse_json(body, "body")
    if not isinstance(batch, list):
        raise _bad(f"body: a batch ({BATCH}) must be a JSON array of CloudEvents")
    if not batch:
        raise _bad("body: the batch is empty; send at least one CloudEvent")
    return [from_structured(item, f"[{i}].") for i, item in enumerate(batch)]


# --- writing --------------------------------------------------------------------------


def data_body(event: dict[str, Any]) -> tuple[bytes, str | None]:
    """The event's data as bytes, and the content type it should travel with."""
    content_type = event.get("datacontenttype")
    if "data_base64" in event:
        return base64.b64decode(event["data_base64"]), content_type or "application/octet-stream"
    if "data" not in event:
        return b"", content_type
    data = event["data"]
    if isinstance(data, str) and content_type and not is_json_media(media_type(content_type)):
        return data.encode(), content_type  # text/plain and friends travel as they are
    return json.dumps(data, separators=(",", ":")).encode(), content_type or "application/json"


def _plain_header(text: str) -> bool:
    """True when the CloudEvents binding needs no percent-encoding (the common case)."""
    return _NEEDS_QUOTING.search(text) is None


def encode(event: dict[str, Any], raw: bytes, mode: Mode | str) -> tuple[dict[str, str], bytes]:
    """Headers and body of `event` (its stored structured JSON is `raw`) in `mode`
    (`binary`, `structured`; anything else sends the data alone)."""
    headers: dict[str, str] = {}
    if mode == "structured":
        headers["Content-Type"] = STRUCTURED
        return headers, raw
    body, content_type = data_body(event)
    if content_type:
        headers["Content-Type"] = content_type
    if mode == "binary":
        for name, value in event.items():
            if name in ("data", "data_base64", "datacontenttype") or value is None:
                continue
            text = str(value)
            if not _plain_header(text):
                text = quote(text, safe=_HEADER_SAFE)
            headers["ce-" + name] = text
    return headers, body
