"""Parsing the four HTTP modes and checking credentials: pure functions."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from multidict import CIMultiDict

from tidings.api.codec import from_structured
from tidings.api.routes import CompiledIngest, CompiledSource
from tidings.dispatcher.ingest import IngestError, check_auth, parse_events

SOURCE = CompiledSource(
    namespace="shop",
    name="hooks",
    kind="http",
    stream="s",
    ingest=CompiledIngest(),
    retention_max_age=1,
    retention_max_events=1,
)
CE = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}


def identity(sealed: str) -> str:
    return sealed


@pytest.mark.parametrize(
    "time",
    ["2024-05-01T12:00:00Z", "2024-05-01t12:00:00.123456+02:00", "2024-05-01T12:00:00-07:30"],
)
def test_rfc3339_times_with_offsets_and_fractions_are_accepted(time: str) -> None:
    assert from_structured({**CE, "time": time}).time == time


def test_boolean_and_integer_extensions_travel_as_strings() -> None:
    event = from_structured({**CE, "sampled": True, "priority": 3})
    assert event.extensions == {"sampled": "true", "priority": "3"}


def test_null_attributes_count_as_absent() -> None:
    event = from_structured({**CE, "subject": None, "data": None})
    assert event.subject is None and event.data is None


def test_binary_header_names_are_case_insensitive() -> None:
    headers = CIMultiDict(
        {"CE-SpecVersion": "1.0", "Ce-Id": "7", "CE-Source": "/x", "ce-type": "t", "CE-Trace": "a"}
    )
    [event] = parse_events(SOURCE, headers, b"")
    assert (event.id, event.extensions, event.data) == ("7", {"trace": "a"}, None)


def test_a_json_suffix_media_type_is_plain_json() -> None:
    [event] = parse_events(SOURCE, CIMultiDict({"Content-Type": "application/vnd.x+json"}), b"1")
    assert event.data == 1 and event.source == SOURCE.api_path


def test_a_bearer_token_compares_exactly() -> None:
    ingest = CompiledIngest(token_sealed="tok")
    check_auth(ingest, CIMultiDict({"Authorization": "bearer tok"}), None, identity)
    with pytest.raises(IngestError) as refused:
        check_auth(ingest, CIMultiDict({"Authorization": "Bearer tok2"}), None, identity)
    assert refused.value.status == 403


def test_hmac_hex_is_case_insensitive() -> None:
    ingest = CompiledIngest(hmac_secret_sealed="k")
    signature = hmac.new(b"k", b"body", hashlib.sha256).hexdigest().upper()
    check_auth(ingest, CIMultiDict({"X-Signature-256": f"sha256={signature}"}), b"body", identity)
