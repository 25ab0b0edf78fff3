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
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from operator_harness import REPO, Cluster, OperatorProcess, eventually, http_source, secret
from redis.asyncio import Redis

from tidings.api import keys
from tidings.api.events import CloudEvent, encode
from tidings.cli.redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Subscriber:
    """A real HTTP server on loopback that answers `status` and records requests."""

    def __init__(self) -> None:
        self.status = 200
        self.received: list[dict[str, str]] = []
        self.attempts: list[str] = []  # the path of every request
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.attempts.append(request.path)
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


def seconds(stamp: str) -> int:
    """An RFC 3339 time of status (whole seconds, UTC) as seconds since the epoch."""
    return int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


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


async def test_a_trigger_delay_is_not_lateness_in_status(
    cluster: Cluster,
    operator: OperatorProcess,
    subscriber: Subscriber,
    dispatcher: tuple[str, Path],
    redis: Redis,
) -> None:
    """Two Triggers with a 2 h delivery.delay: one has only events waiting for their
    time (delayed, no oldestUndelivered), the other one due 10 minutes ago and failing
    (oldestUndelivered from its due time, not from when it was stored 130 minutes ago)."""
    ns = cluster.namespace
    subscriber.status = 503

    def delayed_trigger(name: str, event_type: str) -> dict[str, object]:
        return {
            "apiVersion": "tidings.dev/v1alpha1",
            "kind": "Trigger",
            "metadata": {"name": name},
            "spec": {
                "source": "users",
                "filter": {"types": [event_type]},
                "subscriber": {"uri": f"http://127.0.0.1:{subscriber.port}/{name}"},
                "delivery": {"delay": "2h", "retry": {"initialDelay": "1h"}},
            },
        }

    cluster.apply(
        http_source("users"),
        delayed_trigger("waiting", "com.shop.later"),
        delayed_trigger("late", "com.shop.due"),
    )
    for name in ("waiting", "late"):
        await eventually(  # generous: the operator starts in ~15 s on a loaded 2-core machine
            lambda name=name: (
                (cluster.condition("trigger", name, "Ready") or {}).get("status") == "True"
            ),
            within=90,
        )
    # Stored as ingest stores them, 130 and 90 minutes ago: due 10 minutes ago, and
    # in 30 minutes.
    now_ms = int(time.time() * 1000)
    due_ms = now_ms - 10 * 60_000
    for event_id, event_type, stored_ms in (
        ("due", "com.shop.due", now_ms - 130 * 60_000),
        ("early", "com.shop.later", now_ms - 90 * 60_000),
    ):
        fields = encode(CloudEvent(event_id, "/test", event_type), stored_ms)
        await redis.xadd(keys.stream(ns, "users"), fields, id=f"{stored_ms}-0")  # type: ignore[arg-type]

    def delivery(name: str) -> dict[str, Any]:
        status = (cluster.get("trigger", name) or {}).get("status") or {}
        return status.get("delivery") or {}

    late = await eventually(lambda: delivery("late").get("oldestUndelivered"), within=60)
    assert abs(seconds(late) - due_ms // 1000) <= 2, (late, "due 10 minutes ago")
    assert delivery("late").get("delayed") == 1  # "early" waits on this Trigger too
    assert [a for a in subscriber.attempts if a.endswith("/late")] == ["/late"]

    # Either field tells that the dispatcher's report reached status.
    waiting = await eventually(
        lambda: {
            k: v for k, v in delivery("waiting").items() if k in ("delayed", "oldestUndelivered")
        },
        within=60,
    )
    assert waiting == {"delayed": 1}, "an event waiting for its delay is not late"
    assert delivery("waiting").get("lag") == 0
