"""Restarts: the operator rebuilds everything from the API and writes nothing
that did not change — no table version churn, no status rewrites, no new
tokens, no repeated Events. And one active replica at a time (Kopf peering)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from operator_harness import (
    Cluster,
    OperatorProcess,
    eventually,
    http_source,
    routing_table,
    secret,
    service,
    trigger,
)
from redis.asyncio import Redis

from tidings.api import keys

pytestmark = pytest.mark.integration

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TRIGGERS = 12


def world(n: int = TRIGGERS) -> list[dict[str, Any]]:
    signing = {"signing": {"secretRef": {"name": "hook", "key": "secret"}}}
    objects = [
        http_source("users"),
        http_source("orders"),
        service("mailer"),
        secret("hook", secret=WHSEC),
    ]
    for i in range(n):
        source = "users" if i % 2 else "orders"
        objects.append(trigger(f"t{i}", source, delivery=signing if i % 3 == 0 else {}))
    return objects


def all_ready(cluster: Cluster, kind: str, count: int) -> bool:
    items = cluster.list(kind)
    ready = [
        o
        for o in items
        for c in (o.get("status") or {}).get("conditions") or []
        if c["type"] == "Ready" and c["status"] == "True"
    ]
    return len(ready) == count


def peer_of(
    operator: OperatorProcess, cluster: Cluster, log_path: Any, priority: int
) -> OperatorProcess:
    """A second replica beside `operator`: the same Redis, cluster and seal key."""
    command = operator.command
    return OperatorProcess(
        namespaces=[cluster.namespace],
        redis_url=command[command.index("--redis-url") + 1],
        kubeconfig=command[command.index("--kubeconfig") + 1],  # type: ignore[arg-type]
        seal_key=operator.env["TIDINGS_SEAL_KEY"],
        log_path=log_path,
        args=["--priority", str(priority)],
    )


def versions(cluster: Cluster) -> dict[str, str]:
    out = {}
    for kind in ("triggers", "eventsources", "secrets"):
        for obj in cluster.list(kind):
            out[f"{kind}/{obj['metadata']['name']}"] = obj["metadata"]["resourceVersion"]
    return out


async def snapshot(redis: Redis) -> tuple[int, dict[Any, Any], dict[Any, Any]]:
    version = int(await redis.get(keys.TABLE_VERSION) or 0)
    return version, await redis.hgetall(keys.ROUTES), await redis.hgetall(keys.SOURCES)


async def test_a_restarted_operator_changes_nothing(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    cluster.apply(*world())
    await eventually(lambda: all_ready(cluster, "triggers", TRIGGERS), within=30)
    await eventually(lambda: all_ready(cluster, "eventsources", 2))
    await asyncio.sleep(1)  # let the last watch events and wake-ups settle
    table_before = await snapshot(redis)
    objects_before = versions(cluster)
    events_before = len(cluster.ok("get", "events", "-n", cluster.namespace, "-o", "name").split())

    assert operator.stop() == 0  # SIGTERM: a clean exit
    operator.start()
    # Proof of life: the restarted operator handles a new Trigger...
    cluster.apply(trigger("late", "users"))
    await eventually(lambda: all_ready(cluster, "triggers", TRIGGERS + 1), within=30)
    await asyncio.sleep(2)  # ...and has long since re-reconciled all the others.

    version, routes, sources = await snapshot(redis)
    assert version == table_before[0] + 1  # exactly one change: the new Trigger's route
    routes.pop(f"{cluster.namespace}/late".encode())
    assert (routes, sources) == table_before[1:]  # byte for byte: sealed secrets included
    after = versions(cluster)
    after.pop("triggers/late")
    assert after == objects_before  # no status rewritten, no token regenerated
    events = cluster.ok("get", "events", "-n", cluster.namespace, "-o", "name").split()
    assert len(events) == events_before


async def test_an_operator_killed_mid_way_converges_without_duplicates(
    cluster: Cluster, operator_process: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    operator_process.start()
    cluster.apply(*world())
    await asyncio.sleep(1.0)
    operator_process.kill()  # SIGKILL mid-way: some done, some not

    operator_process.start()  # its dead predecessor's peering record expires in 5 s
    await eventually(lambda: all_ready(cluster, "triggers", TRIGGERS), within=40)
    table = await routing_table(redis)
    assert sorted(r.name for r in table.routes.values() if r.namespace == ns) == sorted(
        f"t{i}" for i in range(TRIGGERS)
    )
    for source in ("users", "orders"):
        groups = {g["name"].decode() for g in await redis.xinfo_groups(keys.stream(ns, source))}
        expected = {f"t{i}" for i in range(TRIGGERS) if (source == "users") == bool(i % 2)}
        assert groups == expected  # one cursor per Trigger, none twice, none stray
    tokens = [s for s in cluster.list("secrets") if s["metadata"]["name"].endswith("-ingest-token")]
    assert sorted(s["metadata"]["name"] for s in tokens) == [
        "orders-ingest-token",
        "users-ingest-token",
    ]


async def test_only_one_replica_is_active_and_the_other_takes_over(
    cluster: Cluster, operator_process: OperatorProcess, tmp_path: Any
) -> None:
    low = operator_process
    low.command += ["--priority", "10", "--log-level", "DEBUG"]  # logs every handler call
    high = peer_of(low, cluster, tmp_path / "high.log", priority=20)
    high.start()
    try:
        cluster.apply(http_source("users"), service("mailer"), trigger("first", "users"))
        await eventually(lambda: all_ready(cluster, "triggers", 1), within=20)
        low.start()  # sees a live peer of higher priority: starts paused
        await eventually(lambda: "Initial authentication has finished" in low.logs(), within=20)
        cluster.apply(trigger("second", "users"))
        await eventually(lambda: all_ready(cluster, "triggers", 2), within=20)
        await asyncio.sleep(1)
        assert "trigger_event" not in low.logs()  # the paused replica handled nothing
        assert "Resuming operations" not in low.logs()

        assert high.stop() == 0  # a clean exit removes it from the peering at once
        await eventually(lambda: "Resuming operations" in low.logs(), within=20)
        cluster.apply(trigger("third", "users"))
        await eventually(lambda: all_ready(cluster, "triggers", 3), within=20)
        assert "route published" in low.logs()
    finally:
        high.stop()
        print("----- high-priority operator log (tail) -----")
        print("\n".join(high.logs().splitlines()[-80:]))


async def test_an_active_replica_paused_by_a_higher_priority_one_leaves_its_triggers(
    cluster: Cluster, operator_process: OperatorProcess, redis: Redis, tmp_path: Any
) -> None:
    """Triggers are no Kopf daemons: when Kopf pauses a replica, their controllers
    must leave its queue too, or its resync (every 2 s here) would publish again
    the bodies it saw last, undoing what the active replica publishes."""
    ns = cluster.namespace
    low = operator_process
    low.command += ["--priority", "10", "--resync-interval", "2"]
    low.start()
    cluster.apply(http_source("users"), service("mailer"), trigger("first", "users"))
    await eventually(lambda: all_ready(cluster, "triggers", 1), within=20)
    high = peer_of(low, cluster, tmp_path / "high.log", priority=20)
    high.start()
    try:
        await eventually(lambda: "1 Triggers left to it" in low.logs(), within=30)
        seen = len(low.logs())
        cluster.apply(trigger("first", "users", delivery={"timeout": "4s"}))

        async def four_seconds() -> bool:
            route = (await routing_table(redis)).routes.get(f"{ns}/first")
            return route is not None and route.delivery.timeout == 4.0

        await eventually(four_seconds, within=20)  # high published it
        await asyncio.sleep(5)  # two of low's resync intervals
        assert await four_seconds()
        assert "route published" not in low.logs()[seen:]
    finally:
        high.stop()
        print("----- high-priority operator log (tail) -----")
        print("\n".join(high.logs().splitlines()[-40:]))
