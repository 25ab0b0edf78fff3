"""End to end with the real data plane: the operator compiles, a real `tidings
dispatcher` ingests and delivers to a real subscriber, and the delivery state
it publishes comes back into the Trigger's status — Backoff, Events and all."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from operator_harness import REPO, Cluster, OperatorProcess, eventually, http_source, secret

from tidings.cli.redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Subscriber:
    """A real HTTP server on loopback that answers `status` and records requests."""

    def __init__(self) -> None:
        self.status = 200
        self.received: list[dict[str, str]] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        if self.status < 300:
            self.received.append(dict(request.headers))
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def subscriber() -> AsyncIterator[Subscriber]:
    server = Subscriber()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def operator(operator_process: OperatorProcess) -> OperatorProcess:
    """The operator, allowing the loopback subscriber (a cluster's default refuses it)."""
    operator_process.command.append("--destinations-loopback=allow")
    return operator_process.start()


@pytest.fixture
def dispatcher(
    operator_redis: RedisServer, seal_key: str, tmp_path: Path
) -> Iterator[tuple[str, Path]]:
    """`tidings dispatcher` with the operator's seal key; yields its ingest base URL."""
    port = free_port()
    log = tmp_path / "dispatcher.log"
    command = [sys.executable, "-m", "tidings.cli", "dispatcher"]
    command += ["--redis-url", operator_redis.url, "--listen", f"127.0.0.1:{port}"]
    command += ["--destinations-loopback=allow"]  # the subscriber is a loopback listener
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TIDINGS_SEAL_KEY": seal_key},
            cwd=REPO,
        )
    yield f"http://127.0.0.1:{port}", log
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    print("----- dispatcher log (tail) -----")
    print("\n".join(log.read_text(errors="replace").splitlines()[-60:]))


async def post_event(base: str, namespace: str, token: str) -> int:
    event = {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "source": "/test",
        "type": "com.shop.signup",
        "data": {"plan": "pro"},
    }
    async with aiohttp.ClientSession() as session:
        for _ in range(50):  # the dispatcher may still be starting
            try:
                async with session.post(
                    f"{base}/sources/{namespace}/users",
                    data=json.dumps(event),
                    headers={
                        "Content-Type": "application/cloudevents+json",
                        "Authorization": f"Bearer {token}",
                    },
                ) as response:
                    if response.status != 404:  # 404 until its table has the source
                        return response.status
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
    return 0


async def test_events_flow_and_the_data_planes_state_reaches_status(
    cluster: Cluster,
    operator: OperatorProcess,
    subscriber: Subscriber,
    dispatcher: tuple[str, Path],
) -> None:
    ns = cluster.namespace
    base, _ = dispatcher
    cluster.apply(
        http_source("users"),
        secret("hook", secret=WHSEC),
        {
            "apiVersion": "tidings.dev/v1alpha1",
            "kind": "Trigger",
            "metadata": {"name": "t"},
            "spec": {
                "source": "users",
                "filter": {"expression": 'event.data.plan == "pro"'},
                "subscriber": {"uri": f"http://127.0.0.1:{subscriber.port}/hook"},
                "delivery": {
                    "timeout": "2s",
                    "retry": {"initialDelay": "100ms", "maxDelay": "1s"},
                    "signing": {"secretRef": {"name": "hook", "key": "secret"}},
                },
            },
        },
    )
    await eventually(
        lambda: (cluster.condition("trigger", "t", "Ready") or {}).get("status") == "True"
    )
    token_secret = cluster.get("secret", "users-ingest-token") or {}
    token = base64.b64decode(token_secret["data"]["token"]).decode()

    assert await post_event(base, ns, token) == 202
    await eventually(lambda: len(subscriber.received) == 1, within=20)
    assert subscriber.received[0]["webhook-signature"].startswith("v1,")  # unsealed, signed

    def delivery() -> dict[str, object]:
        return ((cluster.get("trigger", "t") or {}).get("status") or {}).get("delivery") or {}

    await eventually(lambda: delivery().get("state") == "Delivering", within=20)

    # The subscriber goes down: the dispatcher backs off, and status and Events say so.
    subscriber.status = 503
    for _ in range(8):
        assert await post_event(base, ns, token) == 202
    await eventually(lambda: delivery().get("state") == "Backoff", within=40)
    failure = delivery()["lastFailure"]
    assert isinstance(failure, dict) and failure.get("status") == 503
    await eventually(
        lambda: any(e["reason"] == "BackoffStarted" for e in cluster.events("t")), within=10
    )

    subscriber.status = 200
    await eventually(lambda: delivery().get("state") == "Delivering", within=40)
    await eventually(lambda: len(subscriber.received) == 9, within=40)
    await eventually(
        lambda: any(e["reason"] == "BackoffEnded" for e in cluster.events("t")), within=10
    )


async def test_a_failing_filter_expression_is_counted_in_status_and_raises_filter_errors(
    cluster: Cluster,
    operator: OperatorProcess,
    subscriber: Subscriber,
    dispatcher: tuple[str, Path],
) -> None:
    ns = cluster.namespace
    base, _ = dispatcher

    def filtered_trigger(expression: str) -> dict[str, object]:
        return {
            "apiVersion": "tidings.dev/v1alpha1",
            "kind": "Trigger",
            "metadata": {"name": "t"},
            "spec": {
                "source": "users",
                "filter": {"expression": expression},
                "subscriber": {"uri": f"http://127.0.0.1:{subscriber.port}/hook"},
            },
        }

    # `plan` is a string: comparing it with a number is a type error on every event.
    cluster.apply(http_source("users"), filtered_trigger("event.data.plan > 3"))
    await eventually(  # generous: the operator starts in ~15 s on a loaded 2-core machine
        lambda: (cluster.condition("trigger", "t", "Ready") or {}).get("status") == "True",
        within=90,
    )
    token_secret = cluster.get("secret", "users-ingest-token") or {}
    token = base64.b64decode(token_secret["data"]["token"]).decode()
    for _ in range(4):
        assert await post_event(base, ns, token) == 202

    def delivery() -> dict[str, object]:
        return ((cluster.get("trigger", "t") or {}).get("status") or {}).get("delivery") or {}

    def filter_errors() -> dict[str, object]:
        return cluster.condition("trigger", "t", "FilterErrors") or {}

    await eventually(lambda: delivery().get("filterErrors") == 4, within=30)
    last = delivery()["lastFilterError"]
    assert isinstance(last, dict) and last["reason"] == "type"
    assert "No such overload" in str(last["message"])
    assert delivery()["deadLettered"] == 4  # kept, for a replay once fixed
    await eventually(lambda: filter_errors().get("status") == "True", within=20)
    assert filter_errors()["reason"] == "FilterErrors"
    assert f"tidings replay {ns}/t --all" in str(filter_errors()["message"])
    assert (cluster.condition("trigger", "t", "Ready") or {}).get("status") == "True"
    await eventually(
        lambda: any(e["reason"] == "FilterErrors" for e in cluster.events("t")), within=10
    )
    assert subscriber.received == []

    # Fixed: the window starts afresh, the condition clears, events flow.
    cluster.apply(filtered_trigger('event.data.plan == "pro"'))
    await eventually(lambda: filter_errors().get("status") == "False", within=30)
    assert filter_errors()["reason"] == "FilterEvaluates"
    assert await post_event(base, ns, token) == 202
    await eventually(lambda: len(subscriber.received) == 1, within=20)
    assert delivery()["filterErrors"] == 4  # the total stays
