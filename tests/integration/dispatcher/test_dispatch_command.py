"""`tidings dispatcher` serves ingest and delivers in one process."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from dispatch_harness import Plane, Subscriber, wait_until
from redis.asyncio import Redis

from tidings.api.sealing import Sealer, new_key
from tidings.cli.redis_server import RedisServer, free_port


async def test_one_process_takes_events_over_http_and_delivers_them(
    plane: Plane, subscriber: Subscriber
) -> None:
    port = free_port()
    await plane.add_source()
    plane.spawn("solo", "--listen", f"127.0.0.1:{port}")
    route = await plane.add_trigger("t", subscriber.url)
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            try:
                async with http.get(f"{base}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ready, 20, "the dispatcher's ingest is ready")
        async with http.post(
            f"{base}/sources/{plane.namespace}/src?type=com.example.signup",
            json={"email": "a@example.com"},
        ) as response:
            assert response.status == 202
            event_id = (await response.json())["accepted"][0]
        await wait_until(lambda: subscriber.received, 10, "delivered")
        assert subscriber.received[0].id == event_id
        assert subscriber.received[0].headers["ce-type"] == "com.example.signup"
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
        assert f'tidings_deliveries_total{{outcome="delivered",trigger="{route.id}"}} 1.0' in text


async def test_a_dispatcher_started_before_its_redis_waits_not_ready_then_serves(
    tmp_path: Path, subscriber: Subscriber
) -> None:
    """A pod that starts before its Redis must not crash into a restart loop:
    alive at once, not ready, and ingesting and delivering once Redis is up."""
    redis_port, port = free_port(), free_port()
    server = RedisServer(tmp_path / "late-redis", port=redis_port)
    key = new_key()
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "tidings"),
        "dispatcher",
        "--listen",
        f"127.0.0.1:{port}",
        env={
            **os.environ,
            "REDIS_URL": server.url,
            "TIDINGS_SEAL_KEY": key,
            "TIDINGS_DESTINATIONS_LOOPBACK": "allow",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def status(path: str) -> int | None:
                try:
                    async with http.get(base + path) as response:
                        return response.status
                except aiohttp.ClientError:
                    return None

            await wait_until(lambda: status("/healthz"), 20, "the dispatcher answers")
            assert await status("/healthz") == 200
            assert await status("/readyz") == 503
            await asyncio.sleep(1.5)  # several failed attempts at Redis
            assert process.returncode is None, "the dispatcher exited while Redis was down"

            server.start()
            redis = Redis.from_url(server.url)
            try:
                plane = Plane(redis, server.url, Sealer(key), key)
                await plane.add_source()
                await plane.add_trigger("t", subscriber.url)

                async def ready() -> bool:
                    return await status("/readyz") == 200

                await wait_until(ready, 20, "ready once Redis answers")
                async with http.post(
                    f"{base}/sources/{plane.namespace}/src", json={"n": 1}
                ) as response:
                    assert response.status == 202, await response.text()
                await wait_until(lambda: subscriber.received, 20, "delivered")
            finally:
                await redis.aclose()
    finally:
        process.terminate()
        _, err = await asyncio.wait_for(process.communicate(), 30)
        server.stop()
    assert process.returncode == 0, err.decode()
    assert b"waiting for Redis" in err


async def test_a_dispatcher_with_more_idle_triggers_than_redis_py_pools_delivers_to_all(
    plane: Plane, subscriber: Subscriber
) -> None:
    """Each idle Trigger holds a Redis connection during its blocking read:
    150 of them must not exhaust the process's pool (redis-py's default is 100)."""
    await plane.add_source()
    plane.spawn("many")
    routes = [await plane.add_trigger(f"t{n}", subscriber.url, wait=False) for n in range(150)]
    for route in routes:
        await wait_until(lambda route=route: plane.has_group(route), 60, f"group {route.name}")
    await asyncio.sleep(2)  # every worker idle in its blocking read
    [event_id] = await plane.publish(1)
    await wait_until(lambda: len(subscriber.received) >= 150, 60, "delivered to all 150")
    assert {r.id for r in subscriber.received} == {event_id}
    assert len(subscriber.received) == 150


def _post(connection: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, str | None]:
    """One request on an open keep-alive connection: (status, its Connection header)."""
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    reply = connection.getresponse()
    reply.read()
    return reply.status, reply.getheader("Connection")


async def test_sigterm_tells_keep_alive_producers_to_reconnect_elsewhere(plane: Plane) -> None:
    """While a stopping dispatcher drains, its answers carry `Connection: close`:
    a producer's pooled connection ends cleanly after an accepted event (its
    next request opens a new connection, which the Service sends to another
    pod) instead of being cut under a request."""
    port = free_port()
    await plane.add_source()
    process = plane.spawn("drainer", "--listen", f"127.0.0.1:{port}", "--drain-connections", "4")
    path = f"/sources/{plane.namespace}/src?type=com.example.signup"
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http_session:

        async def readyz() -> int | None:
            try:
                async with http_session.get(f"{base}/readyz") as response:
                    return response.status
            except aiohttp.ClientError:
                return None

        # Generous: a process start takes tens of seconds on the loaded CI machine.
        await wait_until(lambda: _is(readyz, 200), 120, "the dispatcher's ingest is ready")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            before = await asyncio.to_thread(_post, connection, path, b'{"n": 1}')
            assert before == (202, None)  # kept alive
            process.send_signal(signal.SIGTERM)
            await wait_until(lambda: _is(readyz, 503), 5, "/readyz says it is stopping")
            # The same connection, during the drain: accepted, and told to close.
            during = await asyncio.to_thread(_post, connection, path, b'{"n": 2}')
            assert during == (202, "close")
            assert connection.sock is None  # http.client closed it, as the server asked
        finally:
            connection.close()
        assert await asyncio.to_thread(process.wait, 20) == 0
    assert await plane.redis.xlen(plane.stream()) == 2  # both events stored


async def _is(probe: Callable[[], Awaitable[int | None]], status: int) -> bool:
    return await probe() == status
