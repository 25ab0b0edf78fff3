"""Per-Trigger Prometheus metrics: outcomes, attempt latency, lag, dead letters, state;
stored-to-delivered latency, the oldest undelivered age, backlog and time to expiry."""

from __future__ import annotations

import math
import time

from aiohttp import web
from dispatch_harness import Plane, Subscriber, wait_until
from prometheus_client import CollectorRegistry

from tidings.api.events import CloudEvent, encode
from tidings.api.routes import Route


async def test_metrics_count_outcomes_latency_and_state_per_trigger(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = lambda request: (
        (400, {}, 0.0) if request.headers["webhook-id"] == "e-0" else (200, {}, 0.0)
    )
    registry = CollectorRegistry()
    await plane.add_source()
    await plane.dispatcher(registry=registry, publish_interval=0.2)
    route = await plane.add_trigger("t", subscriber.url, filter={"expression": "event.data.n < 8"})
    await plane.publish(10)
    labels = {"trigger": route.id}

    def value(name: str, **extra: str) -> float:
        return registry.get_sample_value(name, {**labels, **extra}) or 0.0

    await wait_until(lambda: value("tidings_deliveries_total", outcome="delivered") == 7, 10, "7")
    assert value("tidings_deliveries_total", outcome="dead_lettered") == 1
    assert value("tidings_deliveries_total", outcome="filtered") == 2
    assert value("tidings_delivery_attempt_seconds_count") == 8
    await wait_until(lambda: value("tidings_trigger_dead_letters") == 1, 5, "DLQ size published")
    assert value("tidings_trigger_state", state="Delivering") == 1
    assert value("tidings_trigger_lag") == 0


async def test_latency_age_backlog_and_time_to_expiry_have_the_right_values(
    plane: Plane, subscriber: Subscriber
) -> None:
    failed_once: set[str] = set()

    def behaviour(request: web.Request) -> tuple[int, dict[str, str], float]:
        if request.path == "/stuck":
            return 503, {}, 0.0
        event_id = request.headers["webhook-id"]
        if event_id == "late" and event_id not in failed_once:
            failed_once.add(event_id)
            return 503, {}, 0.0
        return 200, {}, 0.0

    subscriber.behaviour = behaviour
    registry = CollectorRegistry()
    await plane.add_source(maxAge="1h")  # sooner than stuck's maxAge: it bounds the expiry
    await plane.dispatcher(registry=registry, publish_interval=0.2)
    base = f"http://127.0.0.1:{subscriber.port}"
    fast = {"initialDelay": "200ms", "jitter": 0}
    ok = await plane.add_trigger("ok", f"{base}/ok", delivery={"retry": fast})
    stuck = await plane.add_trigger(
        "stuck", f"{base}/stuck", delivery={"retry": {"initialDelay": "1h"}, "maxAge": "2h"}
    )
    # Stored 5 s ago, stream id and all (as ingest would have): latency and age
    # count from then.
    stored = int(time.time() * 1000) - 5000
    late = encode(CloudEvent("late", "/t", "t"), stored)
    await plane.redis.xadd(plane.stream(), late, id=f"{stored}-0")  # type: ignore[arg-type]
    await plane.publish(3)

    def value(route: Route, name: str, **extra: str) -> float | None:
        return registry.get_sample_value(name, {"trigger": route.id, **extra})

    def count(route: Route, attempt: str) -> float:
        return value(route, "tidings_delivery_latency_seconds_count", attempt=attempt) or 0.0

    # ok: 4 first attempts ("late" failed once), 4 deliveries; "late"'s final one
    # came after a retry, so the final latencies sum to more than the first ones.
    await wait_until(lambda: count(ok, "final") == 4, 10, "4 deliveries on ok")
    assert count(ok, "first") == 4
    first = value(ok, "tidings_delivery_latency_seconds_sum", attempt="first") or 0.0
    final = value(ok, "tidings_delivery_latency_seconds_sum", attempt="final") or 0.0
    assert 5.0 <= first < final < first + 5.0
    assert value(ok, "tidings_delivery_latency_seconds_bucket", attempt="first", le="1.0") == 3

    # stuck: all 4 retrying an hour from now; the oldest is "late", 5 s old.
    def published() -> bool:
        return value(stuck, "tidings_backlog_events") == 4

    await wait_until(published, 10, "stuck's backlog of 4 published")
    age = value(stuck, "tidings_oldest_undelivered_age_seconds") or 0.0
    assert 5.0 <= age < 15.0
    # Retries too fall out of the source's retention (maxAge 1h), before their 2h.
    expiry = value(stuck, "tidings_time_to_expiry_seconds") or 0.0
    assert abs(expiry - (3600 - age)) < 2.0
    # Nothing waits on ok: no age, no backlog, no forecast of loss.
    await wait_until(lambda: value(ok, "tidings_backlog_events") == 0, 10, "ok's backlog 0")
    assert value(ok, "tidings_oldest_undelivered_age_seconds") == 0
    assert value(ok, "tidings_time_to_expiry_seconds") == math.inf


async def test_an_idle_triggers_histograms_appear_with_its_first_attempt(
    plane: Plane, subscriber: Subscriber
) -> None:
    """Histogram children are most of an idle Trigger's memory in the process: they
    are made on the first attempt; the counters and gauges are there from the start."""
    registry = CollectorRegistry()
    await plane.add_source()
    dispatcher = await plane.dispatcher(registry=registry, publish_interval=0.2)
    route = await plane.add_trigger("t", subscriber.url)
    labels = {"trigger": route.id}
    await wait_until(lambda: route.id in dispatcher.workers, 10, "its worker")
    await wait_until(
        lambda: registry.get_sample_value("tidings_trigger_lag", labels) == 0, 5, "its state"
    )
    assert (
        registry.get_sample_value("tidings_deliveries_total", {**labels, "outcome": "delivered"})
        == 0
    )

    def histogram_samples() -> list[str]:
        return [
            sample.name
            for family in registry.collect()
            if family.type == "histogram"
            for sample in family.samples
            if sample.labels.get("trigger") == route.id
        ]

    assert histogram_samples() == []
    await plane.publish(1)
    await wait_until(
        lambda: registry.get_sample_value("tidings_delivery_attempt_seconds_count", labels) == 1,
        10,
        "the attempt observed",
    )
    first = {**labels, "attempt": "first"}
    assert registry.get_sample_value("tidings_delivery_latency_seconds_count", first) == 1
    assert "tidings_delivery_attempt_seconds_bucket" in histogram_samples()
