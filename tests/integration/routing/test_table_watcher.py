"""The routing table as dispatchers see it: changes arrive without restart and
stopping never hangs, even with notifications in flight."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from tidings.api import keys, table
from tidings.api.routes import CompiledSource
from tidings.dispatcher.routing import TableWatcher


def _source(name: str) -> CompiledSource:
    return CompiledSource(
        namespace="shop",
        name=name,
        kind="http",
        stream=f"s-{name}",
        retention_max_age=60.0,
        retention_max_events=100,
    )


async def test_a_change_is_seen_within_a_second_and_identical_writes_change_nothing(
    redis_client: aioredis.Redis,
) -> None:
    watcher = TableWatcher(redis_client, resync_interval=3600)
    versions: asyncio.Queue[int] = asyncio.Queue()

    async def record(current: table.RoutingTable) -> None:
        versions.put_nowait(current.version)

    watcher.on_change(record)
    await watcher.start()
    try:
        assert await versions.get() == 0  # the first load
        version = await table.put_source(redis_client, _source("orders"))
        assert version is not None
        assert await table.put_source(redis_client, _source("orders")) is None  # unchanged
        assert await asyncio.wait_for(versions.get(), timeout=1.0) == version
        assert "shop/orders" in watcher.current.sources
        await asyncio.sleep(0.2)
        assert versions.empty()  # the identical write published nothing
    finally:
        await watcher.stop()


async def test_stop_returns_while_changes_keep_arriving(redis_client: aioredis.Redis) -> None:
    watcher = TableWatcher(redis_client, resync_interval=0.05)
    await watcher.start()

    async def churn() -> None:
        for i in range(10_000):
            await table.put_source(redis_client, _source(f"s{i % 50}-{i}"))

    writer = asyncio.create_task(churn())
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await watcher.stop()
    stopped_in = time.monotonic() - started
    writer.cancel()
    states = [(task.get_name(), task.done()) for task in watcher._tasks]
    assert all(done for _, done in states), (stopped_in, states)
    assert stopped_in < 12.0, states


async def subscribed(redis_client: aioredis.Redis) -> None:
    """Until the watcher's subscription is live and its catch-up reload done (once
    subscribed, it reloads in full: it may have missed changes)."""
    for _ in range(100):
        if (await redis_client.pubsub_numsub(keys.TABLE_CHANGED))[0][1]:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)


async def test_the_resync_reads_the_table_only_when_its_version_moved(
    redis_client: aioredis.Redis,
) -> None:
    """A change whose notification was lost is found by the resync, through the
    version every change bumps; an unchanged version costs one GET, not a reload."""
    watcher = TableWatcher(redis_client, resync_interval=0.1)
    await watcher.start()
    try:
        await subscribed(redis_client)
        entry = _source("lost").model_dump_json()
        # Written behind the table's back, version untouched: the resync skips it.
        await redis_client.hset(keys.SOURCES, "shop/lost", entry)
        await asyncio.sleep(0.5)
        assert "shop/lost" not in watcher.current.sources
        # The version moves without a notification (as if pub/sub lost it): reloaded.
        await redis_client.incr(keys.TABLE_VERSION)
        deadline = time.monotonic() + 5
        while "shop/lost" not in watcher.current.sources:
            assert time.monotonic() < deadline, "the resync did not reload the moved table"
            await asyncio.sleep(0.05)
    finally:
        await watcher.stop()


async def test_a_burst_of_changes_costs_a_few_reloads_not_one_each(
    redis_client: aioredis.Redis,
) -> None:
    """A bulk apply publishes a notification per change; one reload reads all the
    changes before it, so notifications of versions already loaded are skipped."""
    watcher = TableWatcher(redis_client, resync_interval=3600)
    await watcher.start()
    reloads = 0
    reload = watcher.refresh

    async def counted() -> None:
        nonlocal reloads
        reloads += 1
        await reload()

    watcher.refresh = counted  # type: ignore[method-assign]
    try:
        await subscribed(redis_client)
        reloads = 0
        for chunk in range(0, 200, 20):  # 20 at once: the client's pool has its limit
            await asyncio.gather(
                *(
                    table.put_source(redis_client, _source(f"b{i}"))
                    for i in range(chunk, chunk + 20)
                )
            )
        deadline = time.monotonic() + 10
        while len(watcher.current.sources) < 200:
            assert time.monotonic() < deadline, "the 200 changes did not all arrive"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the rest of the notifications handled
        # One each before (200); the bound leaves room for a loaded machine.
        assert 1 <= reloads <= 50, f"{reloads} reloads for 200 changes"
    finally:
        await watcher.stop()
