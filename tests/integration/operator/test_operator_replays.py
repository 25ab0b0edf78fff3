"""Replay objects on a real kube-apiserver, with the real operator, a dispatcher
and a real loopback subscriber: dead letters replayed to one Trigger, status
progress and completion in `kubectl get replays`, an operator killed mid-run,
deletion stopping a run and withdrawing what it handed over (dead letters back
into the DLQ)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from operator_harness import Cluster, OperatorProcess, eventually, http_source
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from tidings.api import keys, table
from tidings.api.destinations import LOCAL
from tidings.api.events import CloudEvent
from tidings.api.sealing import Sealer
from tidings.dispatcher import deadletter, streams
from tidings.dispatcher.engine import Dispatcher
from tidings.dispatcher.routing import TableWatcher

pytestmark = pytest.mark.integration

FAST = {"initialDelay": "50ms", "maxDelay": "1s", "jitter": 0, "maxAttempts": 2}


class Subscriber:
    """Answers 400 on the paths in `refusing`, 200 elsewhere; records what it accepted."""

    def __init__(self) -> None:
        self.refusing: set[str] = set()
        self.slow = 0.0  # seconds before answering a replayed event
        self.accepted: list[tuple[str, str, str]] = []  # (path, ce-id, ce-tidingsreplay)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        if request.path in self.refusing:
            return web.Response(status=400, text="missing field")
        replay = request.headers.get("ce-tidingsreplay", "")
        if replay and self.slow:
            await asyncio.sleep(self.slow)
        self.accepted.append((request.path, request.headers.get("ce-id", ""), replay))
        return web.Response(status=200)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str, replay: str = "") -> list[str]:
        return [i for p, i, r in self.accepted if p == path and r == replay]


@pytest.fixture
async def subscriber() -> AsyncIterator[Subscriber]:
    server = Subscriber()
    await server.start()
    yield server
    if server.runner is not None:
        await server.runner.cleanup()


@pytest.fixture
def operator(operator_process: OperatorProcess) -> OperatorProcess:
    """The operator, allowing the loopback subscriber (a cluster's default refuses it)."""
    operator_process.command.append("--destinations-loopback=allow")
    return operator_process.start()


@pytest.fixture
async def dispatcher(redis: Redis, seal_key: str) -> AsyncIterator[Dispatcher]:
    client = Redis.from_url(_url(redis))
    watcher = TableWatcher(client, resync_interval=1.0)
    await watcher.start()
    engine = Dispatcher(
        client,
        watcher,
        sealer=Sealer(seal_key),
        registry=CollectorRegistry(),
        destinations=LOCAL,  # the subscriber listens on loopback
    )
    await engine.start()
    yield engine
    await engine.stop(grace=1.0)
    await watcher.stop()
    await client.aclose()


def _url(redis: Redis) -> str:
    kwargs = redis.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def trigger(name: str, url: str, **delivery: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {"source": "users", "subscriber": {"uri": url}, "delivery": delivery},
    }


def replay(name: str, trigger_name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "Replay",
        "metadata": {"name": name},
        "spec": {"trigger": trigger_name, **spec},
    }


async def ready(cluster: Cluster, *triggers: str) -> None:
    for name in triggers:
        await eventually(
            lambda name=name: (
                (cluster.condition("trigger", name, "Ready") or {}).get("status") == "True"
            ),
            within=60,
        )


async def publish(redis: Redis, cluster: Cluster, count: int, prefix: str) -> list[str]:
    source = (await table.load(redis)).sources[f"{cluster.namespace}/users"]
    events = [
        CloudEvent(id=f"{prefix}-{i}", source="/s", type="com.shop.user", data={"n": i})
        for i in range(count)
    ]
    await streams.append(redis, source, events)
    return [e.id for e in events]


def replay_status(cluster: Cluster, name: str) -> dict[str, Any]:
    return (cluster.get("replay", name) or {}).get("status") or {}


async def test_dead_letters_replayed_by_a_replay_object_with_status_and_columns(
    cluster: Cluster,
    operator: OperatorProcess,
    redis: Redis,
    dispatcher: Dispatcher,
    subscriber: Subscriber,
) -> None:
    subscriber.refusing = {"/welcome"}
    cluster.apply(
        http_source("users"),
        trigger("welcome", subscriber.url("/welcome"), retry=FAST),
        trigger("audit", subscriber.url("/audit")),
    )
    await ready(cluster, "welcome", "audit")
    await asyncio.sleep(1.5)  # the dispatcher's watcher has both routes
    ids = await publish(redis, cluster, 12, "signup")
    dlq = keys.dead_letters(cluster.namespace, "users", "welcome")
    await eventually(lambda: _equal(redis.xlen(dlq), 12), within=30)
    assert sorted(subscriber.at("/audit")) == sorted(ids)

    subscriber.refusing = set()  # the mailer is fixed
    cluster.apply(replay("welcome-again", "welcome", **{"from": {"deadLetters": {}}}))
    await eventually(
        lambda: replay_status(cluster, "welcome-again").get("phase") == "Succeeded", within=60
    )
    done = replay_status(cluster, "welcome-again")
    assert {k: done.get(k) for k in ("total", "sent", "delivered", "failed", "skipped")} == {
        "total": 12,
        "sent": 12,
        "delivered": 12,
        "failed": 0,
        "skipped": 0,
    }
    assert done["startTime"] and done["completionTime"]
    complete = cluster.condition("replay", "welcome-again", "Complete") or {}
    assert (complete.get("status"), complete.get("reason")) == ("True", "Succeeded")
    assert sorted(subscriber.at("/welcome", "welcome-again")) == sorted(ids)
    assert Counter(subscriber.at("/welcome", "welcome-again")).most_common(1)[0][1] == 1
    assert sorted(subscriber.at("/audit")) == sorted(ids)  # the other Trigger: untouched
    assert subscriber.at("/audit", "welcome-again") == []
    assert await redis.hget(keys.REPLAY_JOBS, f"{cluster.namespace}/welcome-again") is None

    header, row = cluster.ok("get", "replays", "-n", cluster.namespace).splitlines()[:2]
    assert header.split()[:7] == [
        "NAME",
        "TRIGGER",
        "PHASE",
        "TOTAL",
        "SENT",
        "DELIVERED",
        "FAILED",
    ]
    assert row.split()[:7] == ["welcome-again", "welcome", "Succeeded", "12", "12", "12", "0"]

    # Deleting a Replay of dead letters mid-run puts those not delivered back in the
    # DLQ, and nothing more is delivered. One at a time, a second each: when it is
    # deleted, one is under way and the others wait.
    subscriber.refusing = {"/welcome"}
    later = await publish(redis, cluster, 12, "later")
    await eventually(lambda: _equal(redis.xlen(dlq), 12), within=30)
    cluster.apply(trigger("welcome", subscriber.url("/welcome"), retry=FAST, concurrency=1))
    subscriber.refusing, subscriber.slow = set(), 1.0

    async def one_at_a_time() -> bool:
        route = (await table.load(redis)).routes.get(f"{cluster.namespace}/welcome")
        return route is not None and route.delivery.concurrency == 1

    await eventually(one_at_a_time, within=30)
    await asyncio.sleep(1.5)  # the dispatcher's watcher has the new route
    cluster.apply(replay("welcome-stopped", "welcome", **{"from": {"deadLetters": {}}}))
    await eventually(lambda: len(subscriber.at("/welcome", "welcome-stopped")) >= 1, within=60)
    cluster.delete("replay", "welcome-stopped")
    await eventually(lambda: cluster.get("replay", "welcome-stopped") is None, within=30)
    await asyncio.sleep(1.5)  # the attempt under way at the deletion ends
    stopped = subscriber.at("/welcome", "welcome-stopped")
    await asyncio.sleep(3)
    assert subscriber.at("/welcome", "welcome-stopped") == stopped
    assert len(stopped) < 6
    left = await deadletter.read(redis, cluster.namespace, "users", "welcome")
    assert sorted(d.event["id"] for d in left) == sorted(set(later) - set(stopped))
    for key in (keys.replay_owners, keys.replays, keys.replay_dead_letters):
        assert await redis.hlen(key(cluster.namespace, "users", "welcome")) == 0  # type: ignore[misc]


async def test_a_replay_survives_an_operator_kill_and_deletion_stops_another(
    cluster: Cluster,
    operator: OperatorProcess,
    redis: Redis,
    dispatcher: Dispatcher,
    subscriber: Subscriber,
) -> None:
    # Two Triggers: two Replays of one Trigger would share its events (one that is
    # already due for the Trigger is skipped by the other, docs/replay.md).
    cluster.apply(
        http_source("users"),
        trigger("mail", subscriber.url("/mail")),
        trigger("sms", subscriber.url("/sms")),
    )
    await ready(cluster, "mail", "sms")
    await asyncio.sleep(1.5)
    ids = await publish(redis, cluster, 60, "order")
    await eventually(lambda: len(subscriber.at("/sms")) == 60, within=30)

    window = {"from": {"stream": {}}, "rate": {"perSecond": 15}}
    cluster.apply(replay("slow", "mail", **window))
    await eventually(lambda: (replay_status(cluster, "slow").get("sent") or 0) >= 10, within=60)
    operator.kill()  # SIGKILL mid-run: the dispatcher goes on, a new operator reports on
    operator.start()
    await eventually(lambda: replay_status(cluster, "slow").get("phase") == "Succeeded", within=90)
    slow = replay_status(cluster, "slow")
    assert (slow["total"], slow["sent"], slow["delivered"]) == (60, 60, 60)
    assert sorted(subscriber.at("/mail", "slow")) == sorted(ids)
    assert Counter(subscriber.at("/mail", "slow")).most_common(1)[0][1] == 1

    # Deleting a Replay stops it: nothing more is handed over, and what it had handed
    # over and is not delivered yet is withdrawn.
    cluster.apply(replay("stopped", "sms", **{"from": {"stream": {}}, "rate": {"perSecond": 2}}))
    await eventually(lambda: len(subscriber.at("/sms", "stopped")) >= 3, within=60)
    cluster.delete("replay", "stopped")
    await eventually(lambda: cluster.get("replay", "stopped") is None, within=30)
    stopped = len(subscriber.at("/sms", "stopped"))
    await asyncio.sleep(3)
    assert len(subscriber.at("/sms", "stopped")) == stopped < 20
    assert await redis.hlen(keys.replay_owners(cluster.namespace, "users", "sms")) == 0  # type: ignore[misc]
    assert await redis.hlen(keys.replays(cluster.namespace, "users", "sms")) == 0  # type: ignore[misc]


async def _equal(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
