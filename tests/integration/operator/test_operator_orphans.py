"""Objects that vanished without their finalizer (stripped by hand while the
operator was away) lose their data-plane state at the next resync."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_harness import (
    Cluster,
    OperatorProcess,
    eventually,
    http_source,
    routing_table,
    service,
    trigger,
)
from redis.asyncio import Redis

from tidings.api import keys
from tidings.cli.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def operator(
    cluster: Cluster, operator_redis: RedisServer, kubeconfig: Path, seal_key: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        namespaces=[cluster.namespace],
        redis_url=operator_redis.url,
        kubeconfig=kubeconfig,
        seal_key=seal_key,
        log_path=tmp_path / "operator.log",
        args=["--resync-interval", "2"],
    )
    yield process.start()
    process.stop()
    print("----- operator log (tail) -----")
    print("\n".join(process.logs().splitlines()[-80:]))


def ready(cluster: Cluster, kind: str, name: str) -> bool:
    condition = cluster.condition(kind, name, "Ready")
    return condition is not None and condition["status"] == "True"


def force_delete(cluster: Cluster, kind: str, name: str) -> None:
    """Delete, then strip the finalizer: the object is gone, nothing cleaned up."""
    cluster.delete(kind, name)
    patch = json.dumps([{"op": "remove", "path": "/metadata/finalizers"}])
    cluster.ok("patch", "-n", cluster.namespace, kind, name, "--type=json", "-p", patch)
    assert cluster.get(kind, name) is None


async def test_routes_and_sources_without_their_object_are_removed_at_the_next_resync(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    cluster.apply(
        service("mailer"),
        http_source("web"),
        http_source("old"),
        trigger("gone", "web"),
        trigger("kept", "web"),
    )
    await eventually(
        lambda: (
            all(ready(cluster, k, n) for k, n in [("trigger", "gone"), ("trigger", "kept")])
            and ready(cluster, "eventsource", "old")
        ),
        within=30,
    )
    route = (await routing_table(redis)).routes[f"{ns}/gone"]
    assert any(g["name"] == route.group.encode() for g in await redis.xinfo_groups(route.stream))
    # Another operator's namespace: never looked at.
    await redis.hset(keys.ROUTES, "someone-else/t", "{}")  # type: ignore[misc]

    operator.stop()
    force_delete(cluster, "trigger", "gone")
    force_delete(cluster, "eventsource", "old")
    await redis.xadd(keys.stream(ns, "old"), {"e": "{}", "t": "0"})
    operator.start()

    async def collected() -> bool:
        table = await routing_table(redis)
        return f"{ns}/gone" not in table.routes and f"{ns}/old" not in table.sources

    await eventually(collected, within=20)
    groups = [g["name"] for g in await redis.xinfo_groups(route.stream)]
    assert route.group.encode() not in groups  # its cursor went with it
    assert not await redis.exists(keys.stream(ns, "old"))
    table = await routing_table(redis)
    assert f"{ns}/kept" in table.routes and f"{ns}/web" in table.sources
    assert await redis.hexists(keys.ROUTES, "someone-else/t")  # type: ignore[misc]
    assert "is gone but its route was still routed" in operator.logs()
    await redis.hdel(keys.ROUTES, "someone-else/t")  # type: ignore[misc]
