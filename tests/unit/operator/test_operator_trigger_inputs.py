"""A Trigger's round skips building status when nothing it is computed from moved."""

from __future__ import annotations

import math
from dataclasses import replace

from tidings.operator import health
from tidings.operator.health import Reading
from tidings.operator.triggers import Compiled, Inputs, without_time

COMPILED = Compiled(1, "users", False, False, None, "http://mailer", None)
AT_REST = Reading(state="Delivering", lag=0, dead_lettered=0, expired=0, updated_ms=1)


def inputs(report: Reading | None, **changes: object) -> Inputs:
    base = Inputs(
        report=without_time(report),
        stale=False,
        compiled=COMPILED,
        source_entry=None,
        resource_version="7",
        reported=report is not None and report.updated_ms is not None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_the_heartbeat_alone_is_no_change() -> None:
    later = replace(AT_REST, updated_ms=10_000)
    assert inputs(AT_REST).same_as(inputs(later))


def test_a_new_report_staleness_object_version_or_compile_is_a_change() -> None:
    base = inputs(AT_REST)
    assert not base.same_as(inputs(replace(AT_REST, lag=1)))
    assert not base.same_as(inputs(AT_REST, stale=True))
    assert not base.same_as(inputs(AT_REST, resource_version="8"))
    # A recompile makes a new outcome, even an equal one: look again in full.
    assert not base.same_as(inputs(AT_REST, compiled=replace(COMPILED)))


def test_a_change_settle_holds_back_is_not_settled() -> None:
    """The round's skip rule: what status shows must be what settle would show with
    every interval passed; a counter waiting for its interval keeps rounds in full."""
    shown = AT_REST
    grown = replace(AT_REST, dead_lettered=3)
    held = health.settle(shown, grown, since_write=1.0)
    assert held == shown  # within the counters' interval: not shown yet
    assert health.settle(held, grown, math.inf) != held  # so: held back
    assert health.settle(shown, replace(AT_REST, updated_ms=99), math.inf) == shown


def test_only_a_fresh_delivering_report_with_nothing_waiting_is_at_rest() -> None:
    """At rest, a report is read only every health_rest_interval (dispatchers announce
    news); anything that may move without an announcement is read often."""
    assert inputs(AT_REST).at_rest()
    # No dispatcher reported yet (none runs, or the route is withdrawn): the first
    # report is announced, so there is nothing to look for often either.
    assert inputs(None).at_rest()
    assert inputs(replace(AT_REST, state=None, updated_ms=None)).at_rest()  # settled only
    assert not inputs(AT_REST).same_as(inputs(AT_REST, reported=False))
    assert not inputs(AT_REST, stale=True).at_rest()
    for busy in (
        replace(AT_REST, lag=3),
        replace(AT_REST, delayed=2),
        replace(AT_REST, oldest_undelivered="2026-11-30T10:00:00Z"),
        replace(AT_REST, state="Backoff"),
        replace(AT_REST, state="Paused"),
        replace(AT_REST, filter_recent_checked=4, filter_recent_errors=3),
        replace(AT_REST, filter_recent_checked=40, filter_recent_errors=1),  # not failing
        # What status does not show, but a dispatcher does not call at rest either:
        # an event in flight, or one undelivered for under a minute.
        replace(AT_REST, pending=1),
        replace(AT_REST, oldest_ms=1_700_000_000_000),
    ):
        assert not inputs(busy).at_rest(), busy
