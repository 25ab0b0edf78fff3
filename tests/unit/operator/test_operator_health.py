"""Delivery health: the data plane's report, settled so status changes only meaningfully."""

from __future__ import annotations

import math

from tidings.api import keys
from tidings.operator import health
from tidings.operator.health import Reading

BASE = Reading(state="Delivering", lag=100, dead_lettered=0, expired=0, updated_ms=1)


def test_the_state_hash_is_parsed_as_the_dispatcher_writes_it() -> None:
    raw = {
        keys.STATE_STATE.encode(): b"Backoff",
        keys.STATE_LAG.encode(): b"42",
        keys.STATE_DEAD_LETTERED.encode(): b"3",
        keys.STATE_EXPIRED.encode(): b"0",
        keys.STATE_LAST_FAILURE_TIME.encode(): b"2026-01-01T00:00:00Z",
        keys.STATE_LAST_FAILURE_STATUS.encode(): b"503",
        keys.STATE_LAST_FAILURE_MESSAGE.encode(): b"Service Unavailable",
        keys.STATE_UPDATED.encode(): b"1700000000000",
        b"probeDue": b"1700000005000",
    }
    reading = health.parse(raw)
    assert reading == Reading(
        state="Backoff",
        lag=42,
        dead_lettered=3,
        expired=0,
        failure_time="2026-01-01T00:00:00Z",
        failure_status=503,
        failure_message="Service Unavailable",
        updated_ms=1700000000000,
    )
    assert reading.as_status().to_wire() == {
        "state": "Backoff",
        "lag": 42,
        "deadLettered": 3,
        "expired": 0,
        "lastFailure": {
            "time": "2026-01-01T00:00:00Z",
            "status": 503,
            "message": "Service Unavailable",
        },
    }


def test_an_absent_hash_is_no_reading_and_unknown_values_are_dropped() -> None:
    assert health.parse({}) is None
    reading = health.parse({"state": "Confused", "lag": "lots", keys.STATE_LAST_FAILURE_STATUS: ""})
    assert reading == Reading()


def test_a_network_failure_has_no_status_code() -> None:
    reading = health.parse({"state": "Backoff", keys.STATE_LAST_FAILURE_MESSAGE: "timeout"})
    assert reading is not None
    assert reading.as_status().to_wire()["lastFailure"] == {"message": "timeout"}
    assert reading.failure_summary() == "timeout"


def test_status_delivery_round_trips_into_a_reading() -> None:
    reading = Reading(state="Backoff", lag=5, failure_status=500, failure_message="boom")
    assert health.from_status(reading.as_status()) == reading
    assert health.from_status(None) is None


def test_idle_is_not_a_state() -> None:
    """Nothing to deliver is `lag: 0` while Delivering; a flapping Idle would cost a
    status write at every burst."""
    assert "Idle" not in health.STATES
    assert health.parse({keys.STATE_STATE: "Idle"}) == Reading()


def test_a_state_change_is_shown_at_once() -> None:
    fresh = Reading(state="Backoff", lag=100, dead_lettered=0, expired=0)
    assert health.settle(BASE, fresh, since_write=0.0) == fresh


def test_lag_wobble_is_not_a_change() -> None:
    fresh = Reading(state="Delivering", lag=120, dead_lettered=0, expired=0, updated_ms=2)
    assert health.settle(BASE, fresh, since_write=math.inf) == BASE


def test_lag_that_moved_by_half_is_shown_but_not_more_often_than_every_30s() -> None:
    fresh = Reading(state="Delivering", lag=1000, dead_lettered=0, expired=0)
    assert health.settle(BASE, fresh, since_write=10.0) == BASE
    assert health.settle(BASE, fresh, since_write=31.0).lag == 1000  # type: ignore[union-attr]


def test_small_lags_never_flap_between_zero_and_a_few() -> None:
    zero = Reading(state="Delivering", lag=0)
    assert health.settle(zero, Reading(state="Delivering", lag=3), since_write=math.inf) == zero


def test_new_dead_letters_are_shown_within_seconds() -> None:
    fresh = Reading(state="Delivering", lag=100, dead_lettered=1, expired=0)
    assert health.settle(BASE, fresh, since_write=1.0) == BASE
    assert health.settle(BASE, fresh, since_write=6.0).dead_lettered == 1  # type: ignore[union-attr]


def test_a_repeating_failure_updates_its_time_only_every_minute() -> None:
    before = Reading(state="Backoff", failure_time="t1", failure_status=503, failure_message="x")
    later = Reading(state="Backoff", failure_time="t2", failure_status=503, failure_message="x")
    assert health.settle(before, later, since_write=30.0) == before
    assert health.settle(before, later, since_write=61.0) == later


def test_a_report_is_stale_after_the_limit() -> None:
    reading = Reading(state="Delivering", updated_ms=1_000)
    assert not health.is_stale(reading, now_ms=100_000, stale_after=120)
    assert health.is_stale(reading, now_ms=200_000, stale_after=120)
    assert not health.is_stale(None, now_ms=200_000, stale_after=120)


def test_entering_and_leaving_backoff_are_events_and_nothing_else_is() -> None:
    failing = Reading(state="Backoff", failure_status=502, failure_message="bad gateway")
    started = health.backoff_transition("Delivering", "Backoff", failing)
    assert started is not None
    assert (started.type, started.reason) == ("Warning", "BackoffStarted")
    assert "HTTP 502: bad gateway" in started.message
    ended = health.backoff_transition("Backoff", "Delivering", None)
    assert ended is not None and (ended.type, ended.reason) == ("Normal", "BackoffEnded")
    assert health.backoff_transition("Backoff", "Backoff", failing) is None
    assert health.backoff_transition("Delivering", "Paused", None) is None
    assert health.backoff_transition(None, "Delivering", None) is None


def test_the_filter_counts_and_window_are_parsed_from_the_state_hash() -> None:
    raw = {
        keys.STATE_STATE: "Delivering",
        keys.STATE_FILTER_ERRORS: "7",
        keys.STATE_FILTER_LAST_REASON: "function",
        keys.STATE_FILTER_LAST_MESSAGE: "Function 'int' error",
        keys.STATE_FILTER_SPAN_CHECKED: "4",
        keys.STATE_FILTER_SPAN_ERRORS: "3",
        keys.STATE_FILTER_PREVIOUS_CHECKED: "6",
        keys.STATE_FILTER_PREVIOUS_ERRORS: "4",
    }
    reading = health.parse(raw)
    assert reading is not None
    assert (reading.filter_errors, reading.filter_error_reason) == (7, "function")
    assert (reading.filter_recent_checked, reading.filter_recent_errors) == (10, 7)
    assert reading.filter_failing() is True
    assert health.parse({keys.STATE_STATE: "Delivering"}).filter_failing() is None  # type: ignore[union-attr]


def test_a_filter_turning_failing_is_shown_at_once_new_errors_within_seconds() -> None:
    quiet = Reading(state="Delivering", filter_recent_checked=10, filter_recent_errors=0)
    failing = Reading(
        state="Delivering", filter_errors=8, filter_recent_checked=10, filter_recent_errors=8
    )
    assert health.settle(quiet, failing, since_write=0.1) == failing
    more = Reading(
        state="Delivering", filter_errors=9, filter_recent_checked=11, filter_recent_errors=9
    )
    assert health.settle(failing, more, since_write=0.1) == failing
    assert health.settle(failing, more, since_write=health.COUNTERS_INTERVAL) == more


def test_delayed_events_are_parsed_and_none_is_no_field() -> None:
    reading = health.parse({keys.STATE_STATE: "Delivering", keys.STATE_DELAYED: "1250"})
    assert reading is not None and reading.delayed == 1250
    assert reading.as_status().to_wire() == {"state": "Delivering", "delayed": 1250}
    assert health.from_status(reading.as_status()) == reading
    none = health.parse({keys.STATE_STATE: "Delivering", keys.STATE_DELAYED: "0"})
    assert none is not None and "delayed" not in none.as_status().to_wire()


def test_delayed_events_appear_and_go_at_once_and_move_at_the_lags_pace() -> None:
    first = Reading(state="Delivering", lag=100, dead_lettered=0, expired=0, delayed=3)
    shown = health.settle(BASE, first, since_write=0.0)  # the first one set aside
    assert shown is not None and shown.delayed == 3
    gone = health.settle(first, BASE, since_write=0.0)  # the last one came due
    assert gone is not None and gone.delayed is None
    more = Reading(state="Delivering", lag=100, dead_lettered=0, expired=0, delayed=2000)
    assert health.settle(first, more, since_write=10.0) == first
    moved = health.settle(first, more, since_write=31.0)
    assert moved is not None and moved.delayed == 2000
    wobble = Reading(state="Delivering", lag=100, dead_lettered=0, expired=0, delayed=5)
    assert health.settle(first, wobble, since_write=math.inf) == first
