"""Objects that vanished while no operator ran (a Trigger, which has no
finalizer; an EventSource whose finalizer was stripped by hand) lose their
data-plane state at the first pass after start."""

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
from tidings.operator import kube as kube_module
from tidings.operator.kube import Kube, load_config

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
    cluster.delete("trigger", "gone", wait=True)
    assert cluster.get("trigger", "gone") is None  # no finalizer: gone at once
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


async def test_names_are_listed_page_by_page_with_metadata_only(
    cluster: Cluster, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector's LIST: every name across pages (two objects a page here)."""
    monkeypatch.setattr(kube_module, "LIST_PAGE", 2)
    cluster.apply(http_source("web"), *(trigger(f"t{n}", "web") for n in range(5)))
    kube = Kube(load_config(str(kubeconfig)))
    try:
        names = await kube.list_names("triggers", [cluster.namespace])
        everywhere = await kube.list_names("triggers", [])
    finally:
        kube.close()
    assert names == {(cluster.namespace, f"t{n}") for n in range(5)}
    assert names <= everywhere
