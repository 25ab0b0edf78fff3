"""Prometheus metrics of delivery, per Trigger (label `trigger` = "namespace/name").

    tidings_deliveries_total{trigger,outcome}   delivered | retried | dead_lettered | filtered
                                                | unreadable (a stored entry that is no
                                                CloudEvent: dead-lettered, never sent)
    tidings_delivery_attempt_seconds{trigger}   one HTTP attempt, answered or not
    tidings_delivery_retries_total{trigger}     attempts scheduled for later
    tidings_delivery_refused_total{trigger,rule}  attempts the destination policy refused
                                                (nothing sent; dead-lettered as well)
    tidings_trigger_lag{trigger}                events not yet delivered
    tidings_trigger_dead_letters{trigger}       entries in the Trigger's DLQ stream
    tidings_trigger_expired_total{trigger}      trimmed by retention before delivery
    tidings_trigger_state{trigger,state}        1 for the current state, else 0
    tidings_filter_errors_total{trigger,reason} events the filter expression failed on
                                                (dead-lettered; reason type | function |
                                                arithmetic | result | other, docs/filters.md)
    tidings_delivery_latency_seconds{trigger,attempt}
                                                stored -> the end of an attempt:
                                                attempt="first" every event's first attempt
                                                (whatever its outcome: how soon events are
                                                tried), attempt="final" the attempt that
                                                delivered it (retries and Backoff included)
    tidings_oldest_undelivered_age_seconds{trigger}  how long the oldest event not yet
                                                delivered (in flight, retrying, parked or
                                                unread) has been due: from when it was
                                                stored, a delayed event from its due time;
                                                0 when there is none
    tidings_delayed_events{trigger}             delayed events not due yet (deliverafter,
                                                delivery.delay): scheduled, not late, in
                                                neither the lag nor the oldest's age
    tidings_backlog_events{trigger}             events not yet settled: the lag plus those
                                                in flight
    tidings_time_to_expiry_seconds{trigger}     until the oldest undelivered event hits the
                                                Trigger's maxAge or (unread) the source's
                                                retention maxAge; +Inf when nothing waits

Every series is per Trigger (the `attempt` and `outcome` labels have fixed values):
never per event, subscriber URL or status code.

They go into the CollectorRegistry the process serves on /metrics (the ingest
app serves the same registry). Labelled children are cached per Trigger: a
label lookup costs more than the increment on the hot path. A Trigger's
histogram series appear with its first attempt: three histograms of 15 buckets
were most of an idle Trigger's memory in the process (docs/benchmarks.md,
"Triggers at rest"); the counters and gauges are there from the start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tidings.api import keys
from tidings.api.destinations import RULES
from tidings.dispatcher.filtering import REASONS

STATES = (keys.DELIVERING, keys.BACKOFF, keys.PAUSED)
OUTCOMES = ("delivered", "retried", "dead_lettered", "filtered", "unreadable")
ATTEMPTS = ("first", "final")
# Stored -> delivered spans milliseconds (a healthy Trigger) to days (an outage).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
    4 * 3600, 24 * 3600, 72 * 3600,
)  # fmt: skip


class DispatchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "tidings_deliveries",
            "Delivery outcomes per Trigger.",
            ["trigger", "outcome"],
            registry=registry,
        )
        self.attempt_seconds = Histogram(
            "tidings_delivery_attempt_seconds",
            "Duration of one delivery attempt (HTTP request to answer or failure).",
            ["trigger"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.retries = Counter(
            "tidings_delivery_retries",
            "Attempts that failed and were scheduled again.",
            ["trigger"],
            registry=registry,
        )
        self.refused = Counter(
            "tidings_delivery_refused",
            "Attempts the destination policy refused before connecting, by rule.",
            ["trigger", "rule"],
            registry=registry,
        )
        self.lag = Gauge(
            "tidings_trigger_lag", "Events not yet delivered.", ["trigger"], registry=registry
        )
        self.dead_letters = Gauge(
            "tidings_trigger_dead_letters",
            "Entries in the Trigger's dead-letter stream.",
            ["trigger"],
            registry=registry,
        )
        self.expired = Gauge(
            "tidings_trigger_expired",
            "Events trimmed by the source's retention before this Trigger delivered them.",
            ["trigger"],
            registry=registry,
        )
        self.state = Gauge(
            "tidings_trigger_state",
            "1 for the Trigger's current delivery state.",
            ["trigger", "state"],
            registry=registry,
        )

        self.latency = Histogram(
            "tidings_delivery_latency_seconds",
            "From when an event was stored to the end of its first attempt (attempt=first) "
            "or of the attempt that delivered it (attempt=final).",
            ["trigger", "attempt"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.oldest_age = Gauge(
            "tidings_oldest_undelivered_age_seconds",
            "How long the oldest event the Trigger has not delivered yet has been due "
            "(a delayed event counts from its due time; 0: none).",
            ["trigger"],
            registry=registry,
        )
        self.delayed = Gauge(
            "tidings_delayed_events",
            "Delayed events not due yet (deliverafter, delivery.delay): scheduled, not late.",
            ["trigger"],
            registry=registry,
        )
        self.backlog = Gauge(
            "tidings_backlog_events",
            "Events the Trigger has not settled yet: unread, in flight, retrying, parked.",
            ["trigger"],
            registry=registry,
        )
        self.time_to_expiry = Gauge(
            "tidings_time_to_expiry_seconds",
            "Seconds until the oldest undelivered event hits the Trigger's maxAge or the "
            "source's retention (+Inf: nothing undelivered).",
            ["trigger"],
            registry=registry,
        )

        self.filter_errors = Counter(
            "tidings_filter_errors",
            "Events the Trigger's filter expression failed on (dead-lettered), by reason.",
            ["trigger", "reason"],
            registry=registry,
        )

    def of(self, trigger: str) -> TriggerMetrics:
        return TriggerMetrics(
            delivered=self.deliveries.labels(trigger, "delivered"),
            retried=self.deliveries.labels(trigger, "retried"),
            dead_lettered=self.deliveries.labels(trigger, "dead_lettered"),
            filtered=self.deliveries.labels(trigger, "filtered"),
            unreadable=self.deliveries.labels(trigger, "unreadable"),
            attempt_seconds=LazyHistogram(self.attempt_seconds, trigger),
            retries=self.retries.labels(trigger),
            refused=lambda rule: self.refused.labels(trigger, rule),
            lag=self.lag.labels(trigger),
            dead_letters=self.dead_letters.labels(trigger),
            expired=self.expired.labels(trigger),
            states={state: self.state.labels(trigger, state) for state in STATES},
            filter_errors={r: self.filter_errors.labels(trigger, r) for r in REASONS},
            latency_first=LazyHistogram(self.latency, trigger, "first"),
            latency_final=LazyHistogram(self.latency, trigger, "final"),
            oldest_age=self.oldest_age.labels(trigger),
            delayed=self.delayed.labels(trigger),
            backlog=self.backlog.labels(trigger),
            time_to_expiry=self.time_to_expiry.labels(trigger),
        )

    def forget(self, trigger: str) -> None:
        """Drop a deleted Trigger's series."""
        for metric, label_sets in (
            (
                self.deliveries,
                [(trigger, o) for o in OUTCOMES],
            ),
            (self.state, [(trigger, s) for s in STATES]),
            (self.filter_errors, [(trigger, r) for r in REASONS]),
            (self.latency, [(trigger, a) for a in ATTEMPTS]),
            (self.refused, [(trigger, r) for r in RULES]),
        ):
            for labels in label_sets:
                with contextlib.suppress(KeyError):
                    metric.remove(*labels)
        for single in (
            self.attempt_seconds,
            self.retries,
            self.lag,
            self.dead_letters,
            self.expired,
            self.oldest_age,
            self.delayed,
            self.backlog,
            self.time_to_expiry,
        ):
            with contextlib.suppress(KeyError):
                single.remove(trigger)


class LazyHistogram:
    """A Trigger's child of a labelled histogram, made on its first observation."""

    __slots__ = ("_child", "_labels", "_parent")

    def __init__(self, parent: Histogram, *labels: str) -> None:
        self._parent = parent
        self._labels = labels
        self._child: Histogram | None = None

    def observe(self, value: float) -> None:
        child = self._child
        if child is None:
            child = self._child = self._parent.labels(*self._labels)
        child.observe(value)


@dataclass
class TriggerMetrics:
    delivered: Counter
    retried: Counter
    dead_lettered: Counter
    filtered: Counter
    unreadable: Counter
    attempt_seconds: LazyHistogram
    retries: Counter
    refused: Callable[[str], Counter]  # by rule
    lag: Gauge
    dead_letters: Gauge
    expired: Gauge
    states: dict[str, Gauge]
    filter_errors: dict[str, Counter]
    latency_first: LazyHistogram
    latency_final: LazyHistogram
    oldest_age: Gauge
    delayed: Gauge
    backlog: Gauge
    time_to_expiry: Gauge

    def set_state(self, current: str) -> None:
        for state, gauge in self.states.items():
            gauge.set(1 if state == current else 0)
