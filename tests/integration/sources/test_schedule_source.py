"""The schedule source with a real Redis and a clock the test moves by hand."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from source_helpers import (
    ManualClock,
    compiled,
    eventually,
    running,
    stream_events,
    wait_for_events,
)

from tidings.api.routes import CompiledSource
from tidings.api.types import ScheduleSource
from tidings.sources import status
from tidings.sources.schedule import ScheduleAdapter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def at(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


@pytest.fixture
def source(source_name: tuple[str, str]) -> CompiledSource:
    return compiled(*source_name, "schedule")


def every_minute(**extra: object) -> ScheduleSource:
    return ScheduleSource(cron="* * * * *", data={"report": "daily"}, **extra)  # type: ignore[arg-type]


async def test_each_tick_is_one_event_at_its_time_and_none_before(
    redis_client: aioredis.Redis, source: CompiledSource
) -> None:
    clock = ManualClock(at(2024, 5, 1, 12, 0, 30))
    adapter = ScheduleAdapter(source, every_minute(), redis_client, clock=clock)
    async with running(adapter, redis_client, source):
        await clock.sleeping()
        clock.advance(29)  # 12:00:59
        await clock.sleeping()
        assert await stream_events(redis_client, source) == []
        clock.advance(1)  # 12:01:00
        await wait_for_events(redis_client, source, 1)
        await clock.sleeping()
        clock.advance(60)  # 12:02:00
        events = await wait_for_events(redis_client, source, 2)
    assert [e.time for e in events] == ["2024-05-01T12:01:00+00:00", "2024-05-01T12:02:00+00:00"]
    assert {e.type for e in events} == {"dev.tidings.schedule.tick"}
    assert [e.data for e in events] == [{"report": "daily"}] * 2
    assert events[0].id == f"tick-{int(at(2024, 5, 1, 12, 1))}"
    assert all("late" not in e.extensions for e in events)


async def test_the_time_zone_decides_when_a_daily_tick_fires(
    redis_client: aioredis.Redis, source: CompiledSource
) -> None:
    clock = ManualClock(at(2024, 7, 1, 3, 0))  # 05:00 in Berlin (CEST)
    spec = ScheduleSource(cron="0 6 * * *", time_zone="Europe/Berlin")  # type: ignore[call-arg]
    adapter = ScheduleAdapter(source, spec, redis_client, clock=clock)
    async with running(adapter, redis_client, source):
        await clock.sleeping()
        clock.advance(3600)  # 04:00 UTC = 06:00 Berlin
        (event,) = await wait_for_events(redis_client, source, 1)
    assert event.time == "2024-07-01T06:00:00+02:00"
    assert event.data is None


async def test_replicas_emit_each_tick_exactly_once(
    redis_client: aioredis.Redis, source: CompiledSource
) -> None:
    clock = ManualClock(at(2024, 5, 1, 12, 0, 30))
    replicas = [
        ScheduleAdapter(source, every_minute(), redis_client, clock=clock) for _ in range(3)
    ]
    async with (
        running(replicas[0], redis_client, source),
        running(replicas[1], redis_client, source, ready=False),
        running(replicas[2], redis_client, source, ready=False),
    ):
        for _ in range(5):
            await clock.sleeping(3)
            clock.advance(60)
        await clock.sleeping(3)
        events = await wait_for_events(redis_client, source, 5)
    assert len(events) == 5
    assert len({e.id for e in events}) == 5
    assert sum(r.fired for r in replicas) == 5


async def test_after_an_outage_the_newest_missed_ticks_are_caught_up_to_the_limit(
    redis_client: aioredis.Redis, source: CompiledSource
) -> None:
    clock = ManualClock(at(2024, 5, 1, 12, 0, 30))
    spec = every_minute(max_catch_up=3)
    first = ScheduleAdapter(source, spec, redis_client, clock=clock)
    async with running(first, redis_client, source):
        await clock.sleeping()
        clock.advance(30)  # the 12:01 tick
        await wait_for_events(redis_client, source, 1)
    # Down from 12:01 to 12:11:30: ticks 12:02 .. 12:11 are due, 12:11 is on time.
    clock.advance(10 * 60 + 30)
    second = ScheduleAdapter(source, spec, redis_client, clock=clock)
    async with running(second, redis_client, source):
        events = await wait_for_events(redis_client, source, 5)
        await clock.sleeping()
        events = await stream_events(redis_client, source)
    assert [e.time[11:16] for e in events] == ["12:01", "12:08", "12:09", "12:10", "12:11"]
    assert [e.extensions.get("late") for e in events] == [None, "true", "true", "true", None]
    assert second.skipped == 6


async def test_a_new_source_fires_no_tick_from_before_it_existed(
    redis_client: aioredis.Redis, source: CompiledSource
) -> None:
    clock = ManualClock(at(2024, 5, 1, 12, 0, 30))
    adapter = ScheduleAdapter(source, every_minute(max_catch_up=100), redis_client, clock=clock)
    async with running(adapter, redis_client, source):
        await clock.sleeping()
        assert await stream_events(redis_client, source) == []
        clock.advance(30)
        (event,) = await wait_for_events(redis_client, source, 1)
    assert event.time == "2024-05-01T12:01:00+00:00"


async def test_an_invalid_cron_is_reported_with_its_field(
    redis_client: aioredis.Redis, source: CompiledSource
) -> None:
    adapter = ScheduleAdapter(source, ScheduleSource(cron="61 * * * *"), redis_client)  # type: ignore[call-arg]
    task = asyncio.create_task(adapter.run())
    try:

        async def reported() -> status.AdapterStatus | None:
            return await status.read(redis_client, source.namespace, source.name)

        current = await eventually(reported)
        assert current.reason == "InvalidSchedule"
        assert current.message.startswith("spec.schedule.cron: '61 * * * *'")
    finally:
        await adapter.stop()
        await asyncio.wait_for(task, 5)
