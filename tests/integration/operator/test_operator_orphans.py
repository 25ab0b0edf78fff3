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
from tidings.operator import orphans
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


class Driven:
    """What the collector asks of the Triggers this operator drives
    (orphans.Tracked), as a record of its questions and answers."""

    def __init__(self, tokens: dict[tuple[str, str], object], now: set[tuple[str, str]]) -> None:
        self.tokens, self.now = tokens, now
        self.vanished_calls: list[tuple[str, str]] = []

    def tracked(self) -> dict[tuple[str, str], object]:
        return dict(self.tokens)

    def vanished(self, namespace: str, name: str, token: object) -> bool:
        self.vanished_calls.append((namespace, name))
        return True

    def driving(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.now

    def paused(self) -> bool:
        return False


async def test_a_driven_trigger_that_is_gone_is_cleaned_up_as_a_deletion_and_a_new_one_kept(
    cluster: Cluster, kubeconfig: Path, redis: Redis
) -> None:
    """Deletions no watch event reported: a Trigger on the queue whose object is
    gone goes through the deletion path (after its round in flight, in turn
    with a successor); a name driven again since is left to its new Trigger."""
    ns = cluster.namespace
    cluster.apply(http_source("web"), trigger("kept", "web"))
    for name in ("unseen", "recreated", "kept"):
        await redis.hset(keys.ROUTES, f"{ns}/{name}", "{}")  # type: ignore[misc]
    driven = Driven(
        tokens={(ns, "unseen"): object(), (ns, "kept"): object()}, now={(ns, "recreated")}
    )
    kube = Kube(load_config(str(kubeconfig)))
    try:
        done = await orphans.collect(redis, kube, [ns], driven)
    finally:
        kube.close()
    assert driven.vanished_calls == [(ns, "unseen")]  # the deletion path, not removed here
    assert done.routes == [f"{ns}/unseen"]
    assert await redis.hexists(keys.ROUTES, f"{ns}/unseen")  # type: ignore[misc]
    assert await redis.hexists(keys.ROUTES, f"{ns}/recreated")  # type: ignore[misc]
    assert await redis.hexists(keys.ROUTES, f"{ns}/kept")  # type: ignore[misc]
    await redis.hdel(keys.ROUTES, f"{ns}/unseen", f"{ns}/recreated", f"{ns}/kept")  # type: ignore[misc]
