"""Shared pieces of the dispatcher tests: a real subscriber HTTP server on
loopback, routes compiled by the real compiler, events appended with XADD as
ingest stores them, and dispatchers in this process or as `tidings dispatcher`
subprocesses."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession, web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from tidings.api import keys, table
from tidings.api.destinations import LOCAL
from tidings.api.events import CloudEvent, encode
from tidings.api.routes import CompiledSource, Route, compile_source, compile_trigger
from tidings.api.sealing import Sealer
from tidings.api.types import EventSourceSpec, TriggerSpec
from tidings.dispatcher import deadletter
from tidings.dispatcher.engine import Dispatcher
from tidings.dispatcher.routing import TableWatcher


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.time()
    path: str = ""

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


# (status, headers, delay seconds) for each request
Behaviour = Callable[[web.Request], tuple[int, dict[str, str], float]]


def ok(request: web.Request) -> tuple[int, dict[str, str], float]:
    return 200, {}, 0.0


class Subscriber:
    """A real HTTP server on 127.0.0.1 recording every request it answers."""

    def __init__(self) -> None:
        self.received: list[Received] = []  # answered 2xx
        self.attempts: list[Received] = []  # every request
        self.behaviour: Behaviour = ok
        self.in_flight = 0
        self.max_in_flight = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> Subscriber:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts.append(Received(dict(request.headers), body, time.time(), request.path))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            status, headers, delay = self.behaviour(request)
            if delay:
                await asyncio.sleep(delay)
        finally:
            self.in_flight -= 1
        if 200 <= status < 300:
            self.received.append(Received(dict(request.headers), body, time.time(), request.path))
        return web.Response(status=status, headers=headers, text="" if status < 300 else "nope")

    def ids(self) -> list[str]:
        return [r.id for r in self.received]

    def attempts_of(self, event_id: str) -> list[Received]:
        return [r for r in self.attempts if r.id == event_id]


@dataclass
class World:
    sources: dict[tuple[str, str], EventSourceSpec] = field(default_factory=dict)
    secrets: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def source(self, namespace: str, name: str) -> EventSourceSpec | None:
        return self.sources.get((namespace, name))

    def service_ports(self, namespace: str, name: str) -> list[int] | None:
        return [8080]

    def secret(self, namespace: str, name: str, key: str) -> str | None:
        return self.secrets.get((namespace, name, key))


async def wait_until(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]],
    within: float,
    message: str = "",
    interval: float = 0.05,
) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s: {message}")
        await asyncio.sleep(interval)


async def ingest_ready(http: ClientSession, base: str) -> None:
    """Wait until the `tidings dispatcher` serving `base` answers /readyz with 200."""

    async def ready() -> bool:
        try:
            async with http.get(f"{base}/readyz") as response:
                return response.status == 200
        except ClientError:
            return False

    await wait_until(ready, 120, "the dispatcher's ingest is ready (a slow start under load)")


class Plane:
    """The data plane's Redis side for one test: a namespace of sources and Triggers."""

    def __init__(self, redis: Redis, redis_url: str, sealer: Sealer, seal_key: str) -> None:
        self.redis = redis
        self.redis_url = redis_url
        self.sealer = sealer
        self.seal_key = seal_key
        self.namespace = f"t-{uuid.uuid4().hex[:8]}"
        self.world = World()
        self.dispatchers: list[Dispatcher] = []
        self.watchers: list[TableWatcher] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    async def add_source(self, name: str = "src", **retention: Any) -> CompiledSource:
        spec = EventSourceSpec.model_validate(
            {"http": {"auth": {"allowAnonymous": True}}, "retention": retention or {}}
        )
        self.world.sources[(self.namespace, name)] = spec
        source = compile_source(
            namespace=self.namespace, name=name, spec=spec, world=self.world, sealer=self.sealer
        )
        await table.put_source(self.redis, source)
        return source

    async def add_trigger(
        self, name: str, url: str, source: str = "src", *, wait: bool = True, **spec: Any
    ) -> Route:
        """Compile and publish a Trigger; waits until some dispatcher created its group."""
        body = {"source": source, "subscriber": {"uri": url}, **spec}
        route = compile_trigger(
            namespace=self.namespace,
            name=name,
            spec=TriggerSpec.model_validate(body),
            world=self.world,
            sealer=self.sealer,
            destinations=LOCAL,  # subscribers are loopback listeners
        )
        await table.put_route(self.redis, route)
        if wait:
            await wait_until(lambda: self.has_group(route), 10, f"group of {name} created")
        return route

    async def has_group(self, route: Route) -> bool:
        try:
            groups = await self.redis.xinfo_groups(route.stream)
        except Exception:
            return False
        return any(_text(g["name"]) == route.group for g in groups)

    async def nothing_pending(self, route: Route) -> bool:
        """No entry of the Trigger's group is being delivered (all settled)."""
        return int((await self.redis.xpending(route.stream, route.group))["pending"]) == 0

    def stream(self, source: str = "src") -> str:
        return keys.stream(self.namespace, source)

    async def publish(
        self, count: int, source: str = "src", *, prefix: str = "e", **attributes: Any
    ) -> list[str]:
        """XADD `count` events as ingest stores them; returns their event ids."""
        ids = [f"{prefix}-{i}" for i in range(count)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for i, event_id in enumerate(ids):
                data = {"n": i}
                event = CloudEvent(
                    id=event_id,
                    source=f"/test/{source}",
                    type=attributes.get("type", "com.example.test"),
                    data=data,
                    subject=attributes.get("subject"),
                    extensions=attributes.get("extensions", {}),
                )
                pipe.xadd(self.stream(source), encode(event))  # type: ignore[arg-type]
            await pipe.execute()
        return ids

    async def publish_events(self, events: list[CloudEvent], source: str = "src") -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(self.stream(source), encode(event))  # type: ignore[arg-type]
            await pipe.execute()

    async def dispatcher(self, **options: Any) -> Dispatcher:
        """A Dispatcher in this process, with its own Redis connection and watcher."""
        redis = Redis.from_url(self.redis_url)
        watcher = TableWatcher(redis, resync_interval=1.0)
        await watcher.start()
        options.setdefault("registry", CollectorRegistry())
        options.setdefault("destinations", LOCAL)  # subscribers are loopback listeners
        dispatcher = Dispatcher(redis, watcher, sealer=self.sealer, **options)
        await dispatcher.start()
        self.dispatchers.append(dispatcher)
        self.watchers.append(watcher)
        return dispatcher

    def log_path(self, name: str) -> Path:
        """Where the output of the dispatcher spawned as `name` goes."""
        return Path(os.environ.get("TMPDIR", "/tmp")) / f"{self.namespace}-{name}.log"

    def spawn(
        self, name: str, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """`tidings dispatcher` as a child process (deliver only, metrics on a free port)."""
        env = {
            **os.environ,
            "TIDINGS_SEAL_KEY": self.seal_key,
            "TIDINGS_DESTINATIONS_LOOPBACK": "allow",  # subscribers are loopback listeners
            **(env or {}),
        }
        log = open(self.log_path(name), "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "tidings"),
                "dispatcher",
                "--redis-url",
                self.redis_url,
                "--listen",
                "127.0.0.1:0",
                "--consumer-name",
                name,
                *(extra if "--listen" in extra else ("--no-ingest", *extra)),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    async def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for dispatcher in self.dispatchers:
            await _bounded(dispatcher.stop(grace=1.0), "Dispatcher.stop")
        for watcher in self.watchers:
            await _bounded(watcher.stop(), "TableWatcher.stop")
            await watcher.redis.aclose()
        # Every dispatcher watches the whole table: leave nothing for the next test.
        # (After the watchers stopped: a change notification arriving while
        # TableWatcher.stop cancels its pub/sub reader can hold it up for a while.)
        loaded = await table.load(self.redis)
        for route in loaded.routes.values():
            if route.namespace == self.namespace:
                await table.delete_route(self.redis, route.namespace, route.name)
        for source in loaded.sources.values():
            if source.namespace == self.namespace:
                await table.delete_source(self.redis, source.namespace, source.name)

    async def state(self, route: Route) -> dict[str, str]:
        raw = await self.redis.hgetall(
            keys.trigger_state(route.namespace, route.source, route.name)
        )
        return {_text(k): _text(v) for k, v in raw.items()}


async def _bounded(step: Awaitable[None], what: str, seconds: float = 20.0) -> None:
    """A stuck shutdown fails the test with every task's stack, instead of hanging it."""
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        stacks = []
        for task in asyncio.all_tasks():
            frames = task.get_stack()
            where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in frames[-4:])
            stacks.append(f"{task.get_name()}: {where}")
        raise AssertionError(
            f"{what} did not finish in {seconds}s:\n" + "\n".join(stacks)
        ) from None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def dead_letters(plane: Plane, route: Any, count: int) -> list[deadletter.DeadLetter]:
    async def enough() -> bool:
        return (
            len(await deadletter.read(plane.redis, route.namespace, route.source, route.name))
            >= count
        )

    await wait_until(enough, 15, f"{count} dead letters")
    return await deadletter.read(plane.redis, route.namespace, route.source, route.name)
