"""The adapters' atomic write: events plus resume point, with the position guard."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from source_helpers import compiled, stream_events

from tidings.api import keys
from tidings.api.events import CloudEvent
from tidings.sources import journal
from tidings.sources.journal import Batch, position

pytestmark = pytest.mark.integration


def events(*numbers: int) -> list[tuple[str, CloudEvent]]:
    return [
        (position(100, n), CloudEvent(id=f"e{n}", source="/s", type="t", data={"n": n}))
        for n in numbers
    ]


async def test_replayed_positions_are_skipped_and_new_ones_appended(
    redis_client: aioredis.Redis,
) -> None:
    source = compiled("ns", "journal", "postgres")
    first = await journal.write(redis_client, source, Batch(events(0, 1, 2), {"lsn": "0/10"}))
    assert (first.appended, first.skipped) == (3, 0)
    # A replay overlapping what was written: only 3 and 4 are new.
    again = await journal.write(redis_client, source, Batch(events(1, 2, 3, 4), {"lsn": "0/20"}))
    assert (again.appended, again.skipped) == (2, 2)
    stored = await stream_events(redis_client, source)
    assert [e.id for e in stored] == ["e0", "e1", "e2", "e3", "e4"]
    state = await journal.read_state(redis_client, source)
    assert state == {"lsn": "0/20", journal.GUARD: position(100, 4)}


async def test_unguarded_writes_append_and_update_objects_together(
    redis_client: aioredis.Redis,
) -> None:
    source = compiled("ns", "watch", "kubernetes")
    objects = keys.adapter_objects("ns", "watch")
    batch = Batch(events(0), {"rv:x": "5"}, objects_set={"x|uid1": "{}", "x|uid2": "{}"})
    await journal.write(redis_client, source, batch, guarded=False, objects_key=objects)
    batch = Batch(events(0), {"rv:x": "6"}, objects_deleted=["x|uid2"])
    written = await journal.write(redis_client, source, batch, guarded=False, objects_key=objects)
    assert written.appended == 1  # no guard: the same position is appended again
    assert await redis_client.hkeys(objects) == [b"x|uid1"]
    assert (await journal.read_state(redis_client, source))["rv:x"] == "6"
    assert len(await stream_events(redis_client, source)) == 2


def test_positions_order_as_numbers() -> None:
    assert position(9, 99) < position(10, 0) < position(10, 1) < position(2**64 - 1, 0)
