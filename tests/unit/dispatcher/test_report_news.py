"""Which published states are news for the operator (keys.REPORT_NEWS)."""

from __future__ import annotations

from dataclasses import replace

from tidings.dispatcher.backoff_state import Published, news_for_status

REST = Published(
    state="Delivering",
    lag=0,
    pending=0,
    retries=0,
    parked=0,
    dlq_size=0,
    dead_lettered=0,
    expired=0,
    oldest_ms=0,
    expires_ms=0,
)


def test_rest_after_rest_and_the_first_publish_at_rest_are_not_news() -> None:
    assert not news_for_status(None, REST)
    assert not news_for_status(REST, REST)


def test_leaving_rest_is_news_moving_while_busy_is_not() -> None:
    for busy in (
        replace(REST, lag=5),
        replace(REST, pending=1),
        replace(REST, retries=1),
        replace(REST, parked=1),
        replace(REST, oldest_ms=123),
    ):
        assert news_for_status(REST, busy), busy
        assert news_for_status(None, busy), busy  # a dispatcher starting on a backlog
    # The operator reads a busy report often: its lag moving needs no announcement...
    assert not news_for_status(replace(REST, lag=5), replace(REST, lag=9))
    # ...nor its return to rest.
    assert not news_for_status(replace(REST, lag=5), REST)


def test_a_state_change_or_a_new_count_is_news_even_at_rest() -> None:
    assert news_for_status(REST, replace(REST, state="Paused"))
    assert news_for_status(replace(REST, lag=5), replace(REST, state="Backoff", lag=5))
    # maxAttempts 1: a failure dead-letters at once and the Trigger is at rest again.
    assert news_for_status(REST, replace(REST, dead_lettered=1))
    assert news_for_status(REST, replace(REST, expired=4))


def test_delayed_events_set_aside_or_all_come_due_are_news() -> None:
    """A delayed event leaves the report at rest for the dispatcher (it is not due),
    but status shows it (status.delivery.delayed) at once."""
    assert news_for_status(REST, replace(REST, delayed=1))
    assert news_for_status(None, replace(REST, delayed=1))
    assert not news_for_status(replace(REST, delayed=1), replace(REST, delayed=3))
    assert news_for_status(replace(REST, delayed=3), REST)


def test_the_first_report_of_a_trigger_is_news_even_at_rest() -> None:
    # Until a dispatcher reports, the operator looks only now and then: the first
    # report (at rest or not) is announced, whoever publishes it.
    first = replace(REST, first=True)
    assert news_for_status(None, first)
    assert news_for_status(REST, first)
    # Not part of the state: the next publish of the same state is not a change.
    assert first == REST
    assert not news_for_status(first, REST)
