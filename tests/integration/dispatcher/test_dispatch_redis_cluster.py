"""Delivery on a real 3-master Redis Cluster (hack/redis-cluster.sh): every
script touches one source's keys only, so it runs wherever that source's slot lives."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from dispatch_harness import Plane, Subscriber, wait_until
from prometheus_client import CollectorRegistry
from redis.asyncio import RedisCluster

from tidings.api import keys, table
from tidings.api.destinations import LOCAL
from tidings.api.sealing import Sealer, new_key
from tidings.dispatcher import deadletter, retention
from tidings.dispatcher.engine import Dispatcher
from tidings.dispatcher.routing import TableWatcher

SCRIPT = Path(__file__).resolve().parents[3] / "hack" / "redis-cluster.sh"


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {**os.environ, "TIDINGS_STATE_DIR": str(tmp_path_factory.mktemp("cluster"))}
    up = subprocess.run(
        ["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=60
    )
    assert up.returncode == 0, up.stderr
    url = up.stdout.strip().split("=", 1)[1]
    yield url
    subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, timeout=60)


@pytest.fixture
async def cluster_plane(cluster_url: str) -> AsyncIterator[Plane]:
    redis = RedisCluster.from_url(cluster_url)
    key = new_key()
    plane = Plane(redis, cluster_url, Sealer(key), key)  # type: ignore[arg-type]
    watcher = TableWatcher(redis, resync_interval=1.0)  # type: ignore[arg-type]
    await watcher.start()
    dispatcher = Dispatcher(
        redis,  # type: ignore[arg-type]
        watcher,
        sealer=plane.sealer,
        registry=CollectorRegistry(),
        destinations=LOCAL,
        publish_interval=0.2,
    )
    await dispatcher.start()
    try:
        yield plane
    finally:
        await dispatcher.stop(grace=1.0)
        await watcher.stop()
        await redis.aclose()


async def test_delivery_retries_and_dead_letters_work_on_a_3_master_cluster(
    cluster_plane: Plane, subscriber: Subscriber
) -> None:
    plane = cluster_plane
    redis: RedisCluster = plane.redis  # type: ignore[assignment]
    # Sources whose hash tags land on different masters.
    names = [f"s{i}" for i in range(12)]
    slots_by_node: dict[str, str] = {}
    for name in names:
        node = redis.get_node_from_key(keys.stream(plane.namespace, name))
        slots_by_node.setdefault(node.name, name)
    sources = list(slots_by_node.values())
    assert len(sources) == 3, "expected sources on all three masters"

    failing = set()

    def behaviour(request):  # type: ignore[no-untyped-def]
        if request.headers["webhook-id"].startswith("bad"):
            failing.add(request.headers["webhook-id"])
            return 400, {}, 0.0
        return 200, {}, 0.0

    subscriber.behaviour = behaviour
    routes = []
    for name in sources:
        source = await plane.add_source(name, maxEvents=10)
        routes.append(
            await plane.add_trigger(
                f"t-{name}",
                subscriber.url,
                source=name,
                delivery={
                    "rateLimit": {"perSecond": 1000},
                    "ordering": {"key": "event.subject"},
                    "retry": {"initialDelay": "50ms", "jitter": 0},
                },
            )
        )
        await plane.publish(30, source=name, prefix=f"{name}-ok", subject="k")
        await plane.publish(1, source=name, prefix=f"bad-{name}")
        assert source.stream == keys.stream(plane.namespace, name)
    await wait_until(lambda: len(subscriber.received) >= 90, 20, "90 deliveries")
    for name in sources:
        got = [r.id for r in subscriber.received if r.id.startswith(f"{name}-ok")]
        assert got == [f"{name}-ok-{i}" for i in range(30)]  # in order per key
    for route in routes:

        async def one_dead(route=route) -> bool:  # type: ignore[no-untyped-def]
            return len(await deadletter.read(redis, route.namespace, route.source, route.name)) == 1  # type: ignore[arg-type]

        await wait_until(one_dead, 10, f"dead letter of {route.id}")
        loaded = await table.load(redis)  # type: ignore[arg-type]
        source = loaded.sources[f"{plane.namespace}/{route.source}"]
        trimmed = (await retention.trim(redis, source, [route])).trimmed  # type: ignore[arg-type]
        assert trimmed == 21  # 31 events, 10 kept
