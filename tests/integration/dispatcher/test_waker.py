"""The process's one blocking reader for idle Triggers (waker.py), on a real Redis:
busy streams wait apart from the idle ones, so their entries do not make the read
of every idle stream go out again (issue 17, item 4)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

from redis.asyncio import Redis

from tidings.api.text import text
from tidings.dispatcher.waker import StreamWaker

IDLE = 300
BUSY = 50
TRAFFIC = 3.0  # seconds


async def xreads_naming(redis_url: str, stream: str, seconds: float) -> int:
    """How many XREADs Redis ran that name `stream`, during `seconds` (MONITOR)."""
    count = 0
    client = Redis.from_url(redis_url)
    try:
        async with client.monitor() as monitor:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    async for entry in monitor.listen():
                        command = str(entry.get("command", ""))
                        if command.upper().startswith("XREAD ") and f" {stream} " in command:
                            count += 1
    finally:
        await client.aclose()
    return count


async def busy_trigger(
    waker: StreamWaker, redis: Redis, stream: str, until: float, wakes: list[int]
) -> None:
    """What a busy Trigger does: wait for its stream, look (a round trip), wait again."""
    rng = random.Random(stream)
    last_id = "0-0"
    while time.monotonic() < until:
        woken = asyncio.Event()
        with waker.waiting_for(stream, last_id, woken), contextlib.suppress(TimeoutError):
            async with asyncio.timeout(until - time.monotonic()):
                await woken.wait()
        await asyncio.sleep(rng.uniform(0, 0.005))  # the deliveries
        newest = await redis.xrevrange(stream, count=1)
        if newest:
            last_id = text(newest[0][0])
            wakes.append(1)


async def producer(redis: Redis, stream: str, until: float) -> None:
    """Entries at random moments, 5-30 ms apart: the busy Triggers wait and wake at
    any time, as a dispatcher's do, not in step."""
    rng = random.Random(stream)
    while time.monotonic() < until:
        await redis.xadd(stream, {"e": "1"})
        await asyncio.sleep(rng.uniform(0.005, 0.03))


async def test_busy_streams_do_not_resend_the_read_of_the_idle_ones(
    redis_url: str, redis_client: Redis
) -> None:
    waker = StreamWaker(redis_client, block_ms=1000)
    waker.start()
    idle = [f"waker-test:idle:{i}" for i in range(IDLE)]
    busy = [f"waker-test:busy:{i}" for i in range(BUSY)]
    never = asyncio.Event()
    wakes: list[int] = []
    try:
        with contextlib.ExitStack() as stack:
            for stream in idle:
                stack.enter_context(waker.waiting_for(stream, "0-0", never))
            await asyncio.sleep(0.2)  # one read over every idle stream is blocking
            until = time.monotonic() + TRAFFIC
            counting = asyncio.create_task(xreads_naming(redis_url, idle[0], TRAFFIC))
            await asyncio.sleep(0.05)  # MONITOR is on before the traffic starts
            await asyncio.gather(
                *(producer(redis_client, s, until) for s in busy),
                *(busy_trigger(waker, redis_client, s, until, wakes) for s in busy),
            )
            idle_reads = await counting
    finally:
        await waker.stop()
    assert not never.is_set(), "an idle stream's waiter was woken without an entry"
    assert len(wakes) >= BUSY * 5, f"the busy Triggers were woken only {len(wakes)} times"
    # One read per BLOCK_MS renews the idle streams' wait (3 in 3 s), and one ended by
    # a busy stream that joined it before its first wake. Before busy streams waited
    # apart, 6-23 in six runs here: a busy stream joined each renewal and ended it at
    # its next entry.
    assert idle_reads <= TRAFFIC + 2, (
        f"the read of the {IDLE} idle streams went out {idle_reads} times in {TRAFFIC} s "
        f"of traffic on {BUSY} other streams ({len(wakes)} wakes)"
    )
