"""Redis going away: the operator neither crashes nor lies, and catches up by
itself when Redis is back — including a Redis that came back empty."""

from __future__ import annotations

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

from tidings.cli.redis_server import RedisServer

pytestmark = pytest.mark.integration


def ready(cluster: Cluster, name: str) -> bool:
    return (cluster.condition("trigger", name, "Ready") or {}).get("status") == "True"


async def test_a_trigger_made_while_redis_is_down_is_routed_once_it_is_back(
    cluster: Cluster, kubeconfig: Path, seal_key: str, tmp_path: Path
) -> None:
    ns = cluster.namespace
    server = RedisServer(tmp_path / "redis")
    server.start()
    operator = OperatorProcess(
        namespaces=[ns],
        redis_url=server.url,
        kubeconfig=kubeconfig,
        seal_key=seal_key,
        log_path=tmp_path / "outage-operator.log",
        args=["--standalone", "--resync-interval", "4"],
    ).start()
    try:
        cluster.apply(http_source("users"), service("mailer"), trigger("before", "users"))
        await eventually(lambda: ready(cluster, "before"))

        server.kill()
        cluster.apply(trigger("during", "users"))
        await eventually(lambda: "will retry in" in operator.logs())
        assert operator.alive()
        assert not ready(cluster, "during")  # nothing claims a route that is not there

        server.start()  # same port, same AOF
        await eventually(lambda: ready(cluster, "during"), within=40)
        redis = Redis.from_url(server.url)
        try:
            routes = (await routing_table(redis)).routes
            assert {f"{ns}/before", f"{ns}/during"} <= set(routes)
        finally:
            await redis.aclose()

        # A Redis that comes back empty (no AOF): the periodic resync republishes.
        server.kill()
        for file in (tmp_path / "redis").rglob("*"):
            if file.is_file() and "appendonly" in str(file):
                file.unlink()
        server.start()
        redis = Redis.from_url(server.url)
        try:
            assert (await routing_table(redis)).routes == {}

            async def republished() -> bool:
                table = await routing_table(redis)
                return {f"{ns}/before", f"{ns}/during"} <= set(table.routes) and bool(table.sources)

            await eventually(republished, within=20)
        finally:
            await redis.aclose()
    finally:
        operator.stop()
        server.stop()
        print("\n".join(operator.logs().splitlines()[-60:]))
