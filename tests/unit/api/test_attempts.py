"""The attempt log's record: what the dispatcher writes is what tail, trace and the
console read back."""

from __future__ import annotations

import dataclasses
import json

from tidings.api import attempts, keys
from tidings.api.attempts import Attempt, AttemptOutcome
from tidings.api.routes import ATTEMPT_LOG_MAX_AGE, ATTEMPT_LOG_MAX_ENTRIES
from tidings.api.types import DeliverySpec


def test_a_record_survives_the_round_trip_through_stream_fields() -> None:
    record = Attempt(
        event_id="order-42",
        type="com.shop.order.created",
        stream_id="1700000000000-3",
        attempt=2,
        outcome=AttemptOutcome.RETRY,
        status="503",
        duration_ms=12,
        error="HTTP 503: busy",
        body="busy",
        replica="dispatcher-0",
        latency_ms=1500,
    )
    fields = attempts.encode(record)
    # As Redis answers: bytes names and values.
    wire = {k.encode(): str(v).encode() for k, v in fields.items()}
    back = attempts.decode(b"1700000001500-0", wire)
    assert back.id == "1700000001500-0"
    assert back.time_ms == 1700000001500
    assert (back.event_id, back.type, back.stream_id) == (
        "order-42",
        "com.shop.order.created",
        "1700000000000-3",
    )
    assert (back.attempt, back.outcome, back.status) == (2, AttemptOutcome.RETRY, "503")
    assert (back.duration_ms, back.latency_ms) == (12, 1500)
    assert (back.error, back.body, back.replica) == ("HTTP 503: busy", "busy", "dispatcher-0")


def test_the_packed_form_carries_the_same_fields_as_strings_without_empty_ones() -> None:
    record = Attempt("e", "t", "1-0", 2, AttemptOutcome.RETRY, error="x", latency_ms=7)
    (packed,) = json.loads(attempts.pack([record]))
    fields = dict(zip(packed[::2], packed[1::2], strict=True))
    assert all(isinstance(v, str) for v in packed)
    expected = {k: str(v) for k, v in attempts.encode(record).items() if v != ""}
    assert fields == expected
    assert keys.ATTEMPT_STATUS not in fields and keys.ATTEMPT_BODY not in fields
    assert attempts.decode("1-0", fields) == dataclasses.replace(record, id="1-0")
    # A batch is one argument, in order; no attempts is "" (the script writes nothing).
    assert len(json.loads(attempts.pack([record, record]))) == 2
    assert attempts.pack([]) == ""


def test_the_fields_are_named_once_in_keys() -> None:
    record = Attempt("e", "t", "1-0", 1, AttemptOutcome.DELIVERED)
    assert set(attempts.encode(record)) == {
        keys.ATTEMPT_EVENT_ID,
        keys.ATTEMPT_TYPE,
        keys.ATTEMPT_STREAM_ID,
        keys.ATTEMPT_NUMBER,
        keys.ATTEMPT_OUTCOME,
        keys.ATTEMPT_STATUS,
        keys.ATTEMPT_DURATION_MS,
        keys.ATTEMPT_ERROR,
        keys.ATTEMPT_BODY,
        keys.ATTEMPT_REPLICA,
        keys.ATTEMPT_LATENCY_MS,
    }


def test_an_unknown_outcome_or_a_missing_field_still_reads() -> None:
    back = attempts.decode("5-0", {"eventId": "x", "outcome": "from-the-future", "extra": "1"})
    assert back.event_id == "x"
    assert back.outcome is AttemptOutcome.DEAD
    assert back.attempt == 0 and back.status == ""


def test_the_body_keeps_one_kibibyte_and_survives_bad_utf8() -> None:
    assert len(attempts.clip_body(b"x" * 5000)) == 1024
    assert attempts.clip_body(b"\xff ok") == "\ufffd ok"


def test_the_log_key_shares_the_source_hash_tag_and_is_cleaned_up_with_the_trigger() -> None:
    key = keys.attempt_log("shop", "orders", "mailer")
    assert key == "tidings:{shop/orders}:t:mailer:log"
    assert key in keys.trigger_keys("shop", "orders", "mailer")
    assert keys.event_index("shop", "orders") == "tidings:{shop/orders}:ids"


def test_attempt_log_defaults_are_ten_thousand_entries_and_a_day() -> None:
    spec = DeliverySpec()
    assert spec.attempt_log.max_entries == ATTEMPT_LOG_MAX_ENTRIES == 10_000
    assert spec.attempt_log.max_age == "24h" and ATTEMPT_LOG_MAX_AGE == 86_400
