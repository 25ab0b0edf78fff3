"""Events a source adapter captures (a schedule's ticks, an object store's poll)
start a new trace there: a PRODUCER span in a real Jaeger (hack/jaeger.sh), its
context stored with the event."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from objectstore_helpers import new_bucket_name, put_many, s3_from_env
from source_helpers import ManualClock, compiled, running, stream_events, wait_for_events

from jaeger_client import Jaeger
from tidings.api import tracing
from tidings.api.s3events import CREATED_TYPE
from tidings.api.types import ScheduleSource
from tidings.sources.objectstore import ObjectStoreAdapter
from tidings.sources.schedule import ScheduleAdapter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(params=["http/protobuf", "grpc"])
def traced(
    jaeger: Jaeger, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[str]:
    """Tracing on in this process, exporting to Jaeger over OTLP/HTTP or OTLP/gRPC
    (the two protocols OTEL_EXPORTER_OTLP_PROTOCOL takes); off again afterwards."""
    service = f"tidings-test-source-{request.param.partition('/')[0]}"
    for name, value in jaeger.exporting_env(service, request.param).items():
        monkeypatch.setenv(name, value)
    assert tracing.setup(service) is not None
    try:
        yield service
    finally:
        tracing.shutdown()


async def test_a_schedule_tick_starts_a_new_trace_at_the_adapter(
    traced: str, jaeger: Jaeger, redis_client: aioredis.Redis, source_name: tuple[str, str]
) -> None:
    source = compiled(*source_name, "schedule")
    clock = ManualClock(datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC).timestamp())
    spec = ScheduleSource(cron="* * * * *")  # type: ignore[call-arg]
    adapter = ScheduleAdapter(source, spec, redis_client, clock=clock)
    async with running(adapter, redis_client, source):
        await clock.sleeping()
        clock.advance(30)  # 12:01:00
        (event,) = await wait_for_events(redis_client, source, 1)
    context = tracing.parse_traceparent(event.extensions.get("traceparent"))
    assert context is not None, f"no traceparent stored: {event.extensions}"
    tracing.shutdown()  # export now

    trace_id = f"{context.trace_id:032x}"
    [span] = await jaeger.spans(trace_id, 1)
    assert span["name"] == f"send {source.id}"
    assert span["serviceName"] == traced
    assert not span.get("parentSpanId"), "an adapter's event starts a new trace"
    assert span["attributes"]["messaging.operation.name"] == "capture"
    assert span["attributes"]["tidings.source.kind"] == "schedule"
    assert span["attributes"]["cloudevents.event_id"] == event.id
    assert span["attributes"]["cloudevents.event_type"] == "dev.tidings.schedule.tick"
    assert span["attributes"]["tidings.stream_id"]


async def test_an_object_store_poll_starts_a_new_trace_per_object_event(
    traced: str, jaeger: Jaeger, redis_client: aioredis.Redis
) -> None:
    # objectStore builds its events apart from the journal adapters: its own spans.
    s3 = s3_from_env()
    bucket = new_bucket_name()
    client = s3.client()
    client.make_bucket(bucket)
    source = compiled("src", f"os-{bucket}", "objectStore")
    adapter = ObjectStoreAdapter(
        source, s3.spec(bucket, initialSync="emit"), redis_client, credentials=s3.credentials
    )
    put_many(client, bucket, {"a.csv": b"1", "b.csv": b"2"})
    assert (await adapter.poll()).appended == 2
    events = await stream_events(redis_client, source)
    tracing.shutdown()  # export now

    for event in events:
        context = tracing.parse_traceparent(event.extensions.get("traceparent"))
        assert context is not None, f"no traceparent stored: {event.extensions}"
        [span] = await jaeger.spans(f"{context.trace_id:032x}", 1)
        assert span["name"] == f"send {source.id}"
        assert span["serviceName"] == traced
        assert not span.get("parentSpanId"), "an adapter's event starts a new trace"
        assert span["attributes"]["tidings.source.kind"] == "objectStore"
        assert span["attributes"]["cloudevents.event_id"] == event.id
        assert span["attributes"]["cloudevents.event_type"] == CREATED_TYPE
    assert len({e.extensions["traceparent"] for e in events}) == 2
