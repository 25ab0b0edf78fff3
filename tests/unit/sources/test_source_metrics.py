"""A source adapter's metrics and readiness, from what it writes and reports."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from tidings.sources.health import readiness
from tidings.sources.metrics import SourceMetrics, SourceSeries
from tidings.sources.status import AdapterStatus, StatusReporter

SOURCE = "shop/users-db"


def series() -> tuple[CollectorRegistry, SourceSeries]:
    registry = CollectorRegistry()
    return registry, SourceMetrics(registry).of(SOURCE)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"eventsource": SOURCE, **labels})


def status(state: str, reason: str = "", **details: object) -> AdapterStatus:
    return AdapterStatus(state, reason, "a message", details=dict(details))


def test_written_events_count_and_stamp_the_last_event_replays_count_apart() -> None:
    registry, source = series()
    before = time.time()
    source.wrote(3, skipped=2)
    source.wrote(0, skipped=1)
    source.skipped()
    assert value(registry, "tidings_source_events_total") == 3
    assert value(registry, "tidings_source_events_skipped_total") == 4
    stamp = value(registry, "tidings_source_last_event_timestamp_seconds")
    assert stamp is not None and before <= stamp <= time.time()


def test_nothing_written_leaves_the_last_event_time_unset() -> None:
    registry, source = series()
    source.wrote(0, skipped=5)
    assert value(registry, "tidings_source_last_event_timestamp_seconds") == 0


def test_exactly_the_current_state_is_one() -> None:
    registry, source = series()
    source.observe(status("Retrying", "ConnectionLost"))
    source.observe(status("Running", "Streaming"))
    states = {
        state: value(registry, "tidings_source_state", state=state)
        for state in ("Running", "Retrying", "Standby", "Stopped")
    }
    assert states == {"Running": 1, "Retrying": 0, "Standby": 0, "Stopped": 0}


def test_every_retry_counts_as_an_error_by_its_reason() -> None:
    registry, source = series()
    for _ in range(3):
        source.observe(status("Retrying", "ConnectionLost"))
    source.observe(status("Retrying", "TableNotFound"))
    source.observe(status("Running", "Streaming"))
    source.observe(status("Stopped", "Stopped"))
    assert value(registry, "tidings_source_errors_total", reason="ConnectionLost") == 3
    assert value(registry, "tidings_source_errors_total", reason="TableNotFound") == 1
    assert value(registry, "tidings_source_errors_total", reason="Stopped") is None


def test_postgres_gauges_appear_with_the_first_reading_only() -> None:
    registry, source = series()
    source.observe(status("Running", "Scheduled"))
    assert value(registry, "tidings_source_postgres_wal_retained_bytes") is None
    assert value(registry, "tidings_source_postgres_confirmed_lsn_bytes") is None
    source.observe(status("Running", "Streaming", walRetainedBytes=4096, slot="s"))
    source.confirmed(0x1_0000_0028)
    assert value(registry, "tidings_source_postgres_wal_retained_bytes") == 4096
    assert value(registry, "tidings_source_postgres_confirmed_lsn_bytes") == 0x1_0000_0028


async def test_the_reporter_tells_every_report_even_one_it_does_not_write_again() -> None:
    class NoRedis:
        async def hset(self, *args: object) -> None:
            raise ConnectionError("down")  # a status write failing must not matter

    reporter = StatusReporter(NoRedis(), "shop", "users-db")  # type: ignore[arg-type]
    registry, source = series()
    reporter.on_report = source.observe
    for _ in range(2):
        await reporter.report("Retrying", "ConnectionLost", "same message")
    assert value(registry, "tidings_source_errors_total", reason="ConnectionLost") == 2
    assert reporter.current is not None and reporter.current.state == "Retrying"


def test_ready_only_while_running_and_a_standby_says_it_waits_for_the_lease() -> None:
    _, source = series()
    code, body = readiness(source)
    assert code == 503 and "not started" in str(body["reason"])
    source.set_state("Standby", "WaitingForLease")
    code, body = readiness(source)
    assert code == 503 and body["state"] == "Standby" and "Lease" in str(body["reason"])
    source.observe(AdapterStatus("Retrying", "ConnectionFailed", "could not connect"))
    code, body = readiness(source)
    assert code == 503 and "ConnectionFailed" in str(body["reason"])
    source.observe(AdapterStatus("Running", "Streaming", "streaming"))
    assert readiness(source) == (200, {"ready": True, "eventsource": SOURCE, "state": "Running"})
