"""`tidings dispatcher`, `replay`, `tail` and `trace` through a Redis that speaks only TLS
and only to its ACL user (hack/redis-tls.sh): the server is strict (no CA, the
wrong CA, no or a wrong password: refused), and the processes connect with
REDIS_USERNAME, REDIS_PASSWORD and REDIS_TLS_CA_FILE (and a client certificate
when given), ingesting and delivering as usual."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from dispatch_harness import Plane, Subscriber, wait_until
from redis.exceptions import AuthenticationError, ConnectionError, ResponseError

from pki import TestCA
from secure_redis import TlsRedis
from tidings.api import keys
from tidings.api.process import connect_redis
from tidings.api.sealing import Sealer, new_key
from tidings.api.settings import RedisConnection
from tidings.cli.redis_server import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
async def tls_plane(tls_redis: TlsRedis, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Plane]:
    redis = connect_redis(tls_redis.connection())
    key = new_key()
    plane = Plane(redis, tls_redis.url, Sealer(key), key)
    for name, value in tls_redis.env().items():  # what Plane.spawn's children inherit
        monkeypatch.setenv(name, value)
    try:
        yield plane
    finally:
        await plane.close()
        await redis.aclose()


async def refused(connection: RedisConnection) -> BaseException:
    client = connect_redis(connection, socket_timeout=5)
    try:
        await client.ping()
    except (ConnectionError, AuthenticationError, ResponseError) as error:
        return error
    finally:
        await client.aclose()
    raise AssertionError(f"{connection.url} answered a client that should be refused")


async def test_the_server_refuses_what_is_not_tls_with_its_ca_and_the_acl_user(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    good = tls_redis.connection()
    plain = RedisConnection(
        good.url.replace("rediss://", "redis://", 1), good.username, good.password
    )
    await refused(plain)  # no plaintext port: the TLS port does not speak plain RESP
    system_cas = RedisConnection(good.url, good.username, good.password)
    assert "certificate verify failed" in str(await refused(system_cas))
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_text(TestCA().cert)
    wrong_ca = RedisConnection(good.url, good.username, good.password, ca_file=str(other_ca))
    assert "certificate verify failed" in str(await refused(wrong_ca))
    no_password = RedisConnection(good.url, ca_file=good.ca_file)
    await refused(no_password)  # the default user is off
    wrong_password = RedisConnection(good.url, good.username, "nope", ca_file=good.ca_file)
    assert isinstance(await refused(wrong_password), AuthenticationError | ResponseError)
    client = connect_redis(good)
    try:
        assert await client.acl_whoami() in (good.username, good.username.encode())
    finally:
        await client.aclose()


@pytest.mark.parametrize("client_cert", [False, True], ids=["password", "password+client-cert"])
async def test_the_dispatcher_ingests_delivers_and_replay_reads_through_tls_and_acl(
    tls_plane: Plane,
    tls_redis: TlsRedis,
    subscriber: Subscriber,
    client_cert: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in tls_redis.env(client_cert=client_cert).items():
        monkeypatch.setenv(name, value)
    plane = tls_plane
    port = free_port()
    await plane.add_source()
    plane.spawn("tls", "--listen", f"127.0.0.1:{port}")
    route = await plane.add_trigger("t", subscriber.url, wait=False)
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            try:
                async with http.get(f"{base}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ready, 60, "the dispatcher's ingest is ready (through TLS Redis)")
        await wait_until(lambda: plane.has_group(route), 20, "its group created")
        async with http.post(
            f"{base}/sources/{plane.namespace}/src?type=com.example.tls", json={"n": 1}
        ) as response:
            assert response.status == 202, await response.text()
            event_id = (await response.json())["accepted"][0]
        await wait_until(lambda: subscriber.received, 30, "delivered")
    assert subscriber.received[0].id == event_id
    assert await plane.redis.xlen(plane.stream()) == 1  # stored in the TLS Redis

    replay = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "tidings"),
        "replay",
        f"{plane.namespace}/t",
        "--all",
        "--dry-run",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(replay.communicate(), 120)
    assert replay.returncode == 0, err.decode()
    assert "0 dead letters" in (out + err).decode()

    # The attempt is logged once the subscriber has answered; tail reads it back.
    log = keys.attempt_log(route.namespace, route.source, route.name)
    await wait_until(lambda: plane.redis.xlen(log), 20, "the attempt logged")
    tail = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "tidings"),
        "tail",
        f"{plane.namespace}/t",
        "--since",
        "10m",
        "--no-follow",
        "-o",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(tail.communicate(), 120)
    assert tail.returncode == 0, err.decode()
    attempts = [json.loads(row) for row in out.decode().splitlines()]
    assert [(a["eventId"], a["attempt"], a["outcome"]) for a in attempts] == [
        (event_id, 1, "delivered")
    ]

    trace = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "tidings"),
        "trace",
        f"{plane.namespace}/src",
        event_id,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(trace.communicate(), 120)
    assert trace.returncode == 0, err.decode()
    assert event_id in out.decode()


def test_tls_settings_with_a_plain_redis_url_are_refused_at_start(tls_redis: TlsRedis) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "tidings"), "dispatcher", "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "TIDINGS_SEAL_KEY": new_key(),
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "REDIS_TLS_CA_FILE": tls_redis.ca_file,
        },
        timeout=120,
    )
    assert done.returncode != 0
    assert "REDIS_TLS_CA_FILE set, but --redis-url is not rediss://" in done.stderr
