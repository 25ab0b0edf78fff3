from __future__ import annotations

from tidings.api.events import CloudEvent, decode, encode


def test_json_and_binary_data_round_trip_through_a_stream_entry() -> None:
    for data in ({"plan": "pro"}, b"\x00\xffraw", None, "text"):
        event = CloudEvent(
            id="1",
            source="/s",
            type="t",
            data=data,
            subject="public.users",
            extensions={"traceparent": "00-abc"},
        )
        decoded, ingested = decode(encode(event, ingested_ms=42))
        assert decoded == event
        assert ingested == 42


def test_structured_form_uses_data_base64_for_bytes() -> None:
    body = CloudEvent(id="1", source="/s", type="t", data=b"\x01").to_structured()
    assert body["data_base64"] == "AQ==" and "data" not in body
    assert body["specversion"] == "1.0"
