"""Per-Trigger Prometheus metrics: outcomes, attempt latency, lag, dead letters, state."""

from __future__ import annotations

from dispatch_harness import Plane, Subscriber, wait_until
from prometheus_client import CollectorRegistry


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
