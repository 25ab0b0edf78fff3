"""Prometheus metrics of a source adapter (label `eventsource` = "namespace/name").

    tidings_source_events_total{eventsource}                  appended to the stream
    tidings_source_events_skipped_total{eventsource}          replays at or below the guard
    tidings_source_state{eventsource,state}                   1 for the current state, else 0
    tidings_source_last_event_timestamp_seconds{eventsource}  when an event was last appended
    tidings_source_errors_total{eventsource,reason}           failed attempts, by status reason
    tidings_source_postgres_wal_retained_bytes{eventsource}   WAL the slot keeps (every minute)
    tidings_source_postgres_confirmed_lsn_bytes{eventsource}  LSN confirmed to the server

The adapters feed a `SourceSeries` (its labelled children made once: a label
lookup costs more than the increment) once per batch written, never per row;
state, errors and the WAL reading come from the StatusReporter's `on_report`.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from tidings.sources.status import AdapterStatus, StatusReporter

STATES = ("Running", "Retrying", "Standby", "Stopped")


class SourceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "tidings_source_events",
            "Events the adapter appended to the source's stream.",
            ["eventsource"],
            registry=registry,
        )
        self.skipped = Counter(
            "tidings_source_events_skipped",
            "Events dropped as replays: at or below the stream's guard (written before).",
            ["eventsource"],
            registry=registry,
        )
        self.state = Gauge(
            "tidings_source_state",
            "1 for the adapter's current state (Running, Retrying, Standby, Stopped).",
            ["eventsource", "state"],
            registry=registry,
        )
        self.last_event = Gauge(
            "tidings_source_last_event_timestamp_seconds",
            "When the adapter last appended an event (seconds since the epoch).",
            ["eventsource"],
            registry=registry,
        )
        self.errors = Counter(
            "tidings_source_errors",
            "Failed attempts (the adapter retries), by the reason it reports.",
            ["eventsource", "reason"],
            registry=registry,
        )
        self.wal_retained = Gauge(
            "tidings_source_postgres_wal_retained_bytes",
            "WAL the replication slot keeps on the database server (read every minute).",
            ["eventsource"],
            registry=registry,
        )
        self.confirmed_lsn = Gauge(
            "tidings_source_postgres_confirmed_lsn_bytes",
            "The LSN the adapter confirmed to the server, as a byte position; its rate "
            "is the WAL throughput.",
            ["eventsource"],
            registry=registry,
        )

    def of(self, eventsource: str) -> SourceSeries:
        return SourceSeries(self, eventsource)


class SourceSeries:
    """One EventSource's series, and its current state for /readyz."""

    def __init__(self, metrics: SourceMetrics, eventsource: str) -> None:
        self._metrics = metrics
        self.eventsource = eventsource
        self._events = metrics.events.labels(eventsource)
        self._skipped = metrics.skipped.labels(eventsource)
        self._last_event = metrics.last_event.labels(eventsource)
        self._states = {state: metrics.state.labels(eventsource, state) for state in STATES}
        # Postgres only: made on the first reading, so other kinds show none.
        self._wal_retained: Gauge | None = None
        self._confirmed_lsn: Gauge | None = None
        self.state = ""  # nothing reported yet
        self.reason = ""
        self.message = ""

    # --- the hot path: once per batch -----------------------------------------------

    def wrote(self, appended: int, skipped: int = 0) -> None:
        if appended:
            self._events.inc(appended)
            self._last_event.set(time.time())
        if skipped:
            self._skipped.inc(skipped)

    def skipped(self, count: int = 1) -> None:
        self._skipped.inc(count)

    def confirmed(self, lsn: int) -> None:
        if self._confirmed_lsn is None:
            self._confirmed_lsn = self._metrics.confirmed_lsn.labels(self.eventsource)
        self._confirmed_lsn.set(lsn)

    # --- state ---------------------------------------------------------------------------

    def set_state(self, state: str, reason: str = "", message: str = "") -> None:
        self.state, self.reason, self.message = state, reason, message
        for name, gauge in self._states.items():
            gauge.set(1 if name == state else 0)

    def observe(self, status: AdapterStatus) -> None:
        """A StatusReporter's `on_report`: called for every report, changed or not,
        so each failed attempt counts as an error."""
        self.set_state(status.state, status.reason, status.message)
        if status.state == "Retrying":
            self._metrics.errors.labels(self.eventsource, status.reason).inc()
        retained = status.details.get("walRetainedBytes")
        if retained is not None:
            if self._wal_retained is None:
                self._wal_retained = self._metrics.wal_retained.labels(self.eventsource)
            self._wal_retained.set(int(retained))

    @property
    def ready(self) -> bool:
        return self.state == "Running"


def attach(adapter: Any, series: SourceSeries) -> None:
    """Feed `series` from an adapter built by adapters.build: its StatusReporter
    reports into it, and its writes count into it (each adapter kind has a
    `metrics` attribute, None unless attached)."""
    status = getattr(adapter, "status", None)
    if isinstance(status, StatusReporter):
        status.on_report = series.observe
    if hasattr(adapter, "metrics"):
        adapter.metrics = series
