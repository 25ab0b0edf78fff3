"""The one CloudEvents HTTP codec: what delivery writes, ingest reads back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict

from tidings.api import codec
from tidings.api.events import CloudEvent

EVENT = CloudEvent(
    id="order-42",
    source="/apis/tidings.dev/v1alpha1/namespaces/shop/eventsources/orders",
    type="com.shop.order.created",
    data={"total": 12.5, "items": ["a"]},
    subject='orders/42 "quoted" ü',
    time="2026-11-29T10:00:00Z",
    datacontenttype="application/json",
    extensions={"traceparent": "00-abc-def-01", "priority": "3"},
)


def stored(event: CloudEvent) -> tuple[dict[str, Any], bytes]:
    body = event.to_structured()
    return body, json.dumps(body).encode()


def test_binary_mode_round_trips_through_ingest_parsing() -> None:
    headers, body = codec.encode(*stored(EVENT), "binary")
    assert headers["ce-subject"] == "orders/42%20%22quoted%22%20%C3%BC"
    assert codec.from_binary(CIMultiDict(headers), body) == EVENT


def test_structured_mode_forwards_the_stored_json_byte_for_byte() -> None:
    event, raw = stored(EVENT)
    headers, body = codec.encode(event, raw, "structured")
    assert (headers, body) == ({"Content-Type": codec.STRUCTURED}, raw)
    assert codec.from_structured(json.loads(body)) == EVENT


def test_data_mode_sends_the_data_alone() -> None:
    headers, body = codec.encode(*stored(EVENT), "data")
    assert headers == {"Content-Type": "application/json"}
    assert json.loads(body) == EVENT.data


def test_bytes_travel_as_octet_stream_and_come_back_as_bytes() -> None:
    event = CloudEvent(id="1", source="/s", type="t", data=b"\x00\xff")
    headers, body = codec.encode(*stored(event), "binary")
    assert headers["Content-Type"] == "application/octet-stream" and body == b"\x00\xff"
    assert codec.from_binary(CIMultiDict(headers), body).data == b"\x00\xff"


def test_a_batch_error_names_the_item_and_the_attribute() -> None:
    batch = [stored(EVENT)[0], {"specversion": "1.0", "id": "2", "source": "/s"}]
    with pytest.raises(codec.FormatError, match=r"\[1\]\.type: required"):
        codec.from_batch(json.dumps(batch).encode())


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_json_nested_past_the_stack_is_a_client_error(opening: str) -> None:
    with pytest.raises(codec.FormatError, match="body: JSON nested too deeply"):
        codec.parse_json((opening * 100_000).encode(), "body")


def test_lone_surrogates_in_attributes_are_refused_naming_the_attribute() -> None:
    # Found by the fuzzed ingest: a `\ud800` escape in an id failed the dedupe key's
    # UTF-8 encoding (a 500); a header decoded with surrogateescape does the same.
    body = b'{"specversion":"1.0","id":"\\ud800","source":"/s","type":"t"}'
    with pytest.raises(codec.FormatError, match=r"^id: not valid Unicode"):
        codec.from_structured(codec.parse_json(body, "body"))
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "\udcff", "ce-type": "t"}
    with pytest.raises(codec.FormatError, match=r"^ce-source header: not valid Unicode"):
        codec.from_binary(headers, b"")


def test_nan_and_infinity_are_not_json() -> None:
    # Found by the fuzzed ingest: Python's decoder accepted them and they were stored.
    for text in (b"NaN", b"[Infinity]", b'{"a": -Infinity}'):
        with pytest.raises(codec.FormatError, match="is not a JSON value"):
            codec.parse_json(text, "body")
