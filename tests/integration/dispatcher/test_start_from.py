"""Trigger spec.startFrom: a new Trigger's cursor starts now (default), at the
oldest stored event, or at a time; it applies only when the cursor is created."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from dispatch_harness import Plane, Subscriber, wait_until


async def redis_now_ms(plane: Plane) -> int:
    seconds, micros = await plane.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


async def test_start_from_beginning_a_time_and_now(plane: Plane, subscriber: Subscriber) -> None:
    await plane.add_source()
    await plane.dispatcher()
    # The stream must exist with history before the Triggers do.
    old = await plane.publish(5, prefix="old")
    await asyncio.sleep(0.05)
    boundary = await redis_now_ms(plane)
    await asyncio.sleep(0.05)
    middle = await plane.publish(4, prefix="mid")

    base = subscriber.url.rsplit("/", 1)[0]
    await plane.add_trigger("from-start", f"{base}/start", startFrom="beginning")
    await plane.add_trigger("from-time", f"{base}/time", startFrom=rfc3339(boundary))
    await plane.add_trigger("from-now", f"{base}/now")
    new = await plane.publish(3, prefix="new")

    def by_path() -> dict[str, list[str]]:
        paths: dict[str, list[str]] = {"start": [], "time": [], "now": []}
        for r in subscriber.received:
            paths[r.path.rsplit("/", 1)[-1]].append(r.id)
        return paths

    await wait_until(lambda: sum(map(len, by_path().values())) >= 12 + 7 + 3, 15, "every delivery")
    await asyncio.sleep(0.5)  # nothing more comes
    got = by_path()
    assert sorted(got["start"]) == sorted(old + middle + new)
    assert sorted(got["time"]) == sorted(middle + new)
    assert sorted(got["now"]) == sorted(new)
    # The stored events come in stream order, then the new ones.
    assert got["start"][: len(old) + len(middle)] == old + middle


async def test_changing_start_from_does_not_move_an_existing_cursor(
    plane: Plane, subscriber: Subscriber
) -> None:
    await plane.add_source()
    await plane.dispatcher()
    await plane.publish(3, prefix="before")
    await plane.add_trigger("t", subscriber.url)
    first = await plane.publish(2, prefix="first")
    await wait_until(lambda: len(subscriber.received) >= 2, 10, "the first two")
    await plane.add_trigger("t", subscriber.url, startFrom="beginning")
    second = await plane.publish(2, prefix="second")
    await wait_until(lambda: len(subscriber.received) >= 4, 10, "the next two")
    await asyncio.sleep(0.5)
    assert sorted(subscriber.ids()) == sorted(first + second)
