"""Helpers for the source adapter tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis

from tidings.api import keys
from tidings.api.events import CloudEvent, decode
from tidings.api.routes import CompiledSource
from tidings.sources import status


def compiled(namespace: str, name: str, kind: str) -> CompiledSource:
    return CompiledSource(
        namespace=namespace,
        name=name,
        kind=kind,  # type: ignore[arg-type]
        stream=keys.stream(namespace, name),
        retention_max_age=3600.0,
        retention_max_events=1_000_000,
    )


async def stream_events(redis: aioredis.Redis, source: CompiledSource) -> list[CloudEvent]:
    entries = await redis.xrange(source.stream)
    return [decode(fields)[0] for _, fields in entries]


async def eventually(
    check: Callable[[], Awaitable[Any]], *, within: float = 20.0, interval: float = 0.05
) -> Any:
    """Poll `check` until it returns a truthy value (the value is returned)."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s (last: {value!r})")
        await asyncio.sleep(interval)


async def wait_for_events(
    redis: aioredis.Redis, source: CompiledSource, count: int, within: float = 20.0
) -> list[CloudEvent]:
    async def enough() -> list[CloudEvent] | None:
        events = await stream_events(redis, source)
        return events if len(events) >= count else None

    return list(await eventually(enough, within=within))


class Adapter(Protocol):
    async def run(self) -> None: ...
    async def stop(self) -> None: ...


@contextlib.asynccontextmanager
async def running(
    adapter: Adapter, redis: aioredis.Redis, source: CompiledSource, *, ready: bool = True
) -> AsyncIterator[asyncio.Task[None]]:
    """Run the adapter as a task; with `ready`, wait until it reports Running."""
    task = asyncio.create_task(adapter.run())
    try:
        if ready:

            async def is_running() -> bool:
                if task.done():
                    task.result()
                    raise AssertionError("the adapter returned before it was running")
                current = await status.read(redis, source.namespace, source.name)
                return current is not None and current.state == "Running"

            await eventually(is_running)
        yield task
    finally:
        await adapter.stop()
        await asyncio.wait_for(task, 20)


def start_adapter(
    kind: str, eventsource: str, redis_url: str, *args: str | Path, without: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """`tidings source KIND --eventsource NS/NAME ARGS...` as a child process
    (environment variables in `without` are not passed on)."""
    env = {k: v for k, v in os.environ.items() if k not in without}
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "tidings"),
            "source",
            kind,
            "--eventsource",
            eventsource,
            *map(str, args),
            "--log-level",
            "WARNING",
        ],
        env={**env, "REDIS_URL": redis_url},
    )


class ManualClock:
    """Time stands still until the test calls advance()."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self._now + max(0.0, seconds), future)
        self._sleepers.append(entry)
        self._wake()
        try:
            await future
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._wake()

    def _wake(self) -> None:
        for deadline, future in list(self._sleepers):
            if deadline <= self._now and not future.done():
                future.set_result(None)

    async def sleeping(self, count: int = 1) -> None:
        """Wait until `count` adapters wait on this clock (they are idle)."""

        async def idle() -> bool:
            return sum(not f.done() for _, f in self._sleepers) >= count

        await eventually(idle, interval=0.01)
