"""Triggers, created, updated and deleted: the routing table matches the spec after each step."""

from __future__ import annotations

import time

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

pytestmark = pytest.mark.integration


async def groups(redis: Redis, stream: str) -> set[str]:
    if not await redis.exists(stream):
        return set()
    return {g["name"].decode() for g in await redis.xinfo_groups(stream)}


def ready(cluster: Cluster, kind: str, name: str) -> bool:
    condition = cluster.condition(kind, name, "Ready")
    return condition is not None and condition["status"] == "True"


async def test_a_trigger_is_compiled_into_the_routing_table_with_every_default(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    cluster.apply(
        http_source("users"),
        service("mailer", 8080),
        trigger(
            "welcome",
            "users",
            filter={"types": ["com.shop.signup"], "expression": 'event.data.plan == "pro"'},
            delivery={"timeout": "3s", "retry": {"maxDelay": "10m"}},
        ),
    )
    await eventually(lambda: ready(cluster, "trigger", "welcome"))

    route = (await routing_table(redis)).routes[f"{ns}/welcome"]
    assert route.subscriber_url == f"http://mailer.{ns}.svc.cluster.local:8080"
    assert route.stream == keys.stream(ns, "users")
    assert route.filter.types == ["com.shop.signup"]
    assert route.filter.expression == 'event.data.plan == "pro"'
    assert route.delivery.timeout == 3.0
    assert route.delivery.retry.max_delay == 600.0
    assert route.delivery.retry.max_attempts == 12  # defaults filled in
    assert route.delivery.max_age == 72 * 3600
    assert not route.paused
    # The cursor exists before any dispatcher sees the route.
    assert "welcome" in await groups(redis, route.stream)

    status = (cluster.get("trigger", "welcome") or {})["status"]
    assert status["subscriberURI"] == route.subscriber_url
    assert status["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True",
        "SourceReady": "True",
        "SubscriberResolved": "True",
        "Delivering": "Unknown",  # no dispatcher has reported yet
        "FilterErrors": "Unknown",  # it has an expression; no dispatcher has evaluated it
    }
    assert "kopf" not in str(status)  # Kopf's bookkeeping stays in annotations
    # ...and there is little of it: the finalizer, but no copy of the spec for change
    # detection (a second write per object; nothing here reacts to creation or update).
    meta = (cluster.get("trigger", "welcome") or {})["metadata"]
    assert meta["finalizers"] == ["tidings.dev/cleanup"]
    assert not [a for a in meta.get("annotations") or {} if "last-handled" in a]


async def test_an_update_recompiles_the_route(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    cluster.apply(http_source("users"), service("mailer"), trigger("welcome", "users"))
    await eventually(lambda: ready(cluster, "trigger", "welcome"))
    before = await routing_table(redis)

    cluster.apply(
        trigger(
            "welcome",
            "users",
            filter={"prefix": {"type": "com.shop."}},
            delivery={"headers": {"X-Env": "prod"}, "concurrency": 7},
        )
    )

    async def updated() -> bool:
        route = (await routing_table(redis)).routes[f"{ns}/welcome"]
        return route.filter.prefix == {"type": "com.shop."} and route.delivery.concurrency == 7

    await eventually(updated)
    after = await routing_table(redis)
    assert after.routes[f"{ns}/welcome"].delivery.headers == {"X-Env": "prod"}
    assert after.routes[f"{ns}/welcome"].generation == 2
    assert after.version > before.version
    await eventually(
        lambda: (cluster.get("trigger", "welcome") or {})["status"]["observedGeneration"] == 2
    )


async def test_a_deleted_trigger_takes_its_route_cursor_and_state_with_it(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    cluster.apply(
        http_source("users"),
        service("mailer"),
        trigger("welcome", "users"),
        trigger("other", "users"),
    )
    await eventually(
        lambda: ready(cluster, "trigger", "welcome") and ready(cluster, "trigger", "other")
    )
    stream = keys.stream(ns, "users")
    # What a dispatcher would have left: retries, dead letters, state.
    await redis.zadd(keys.retries(ns, "users", "welcome"), {"1-0": 1})
    await redis.xadd(keys.dead_letters(ns, "users", "welcome"), {"e": "{}"})
    await redis.hset(keys.trigger_state(ns, "users", "welcome"), mapping={"state": "Delivering"})

    cluster.delete("trigger", "welcome", wait=True)

    assert cluster.get("trigger", "welcome") is None  # the finalizer was released
    table = await routing_table(redis)
    assert f"{ns}/welcome" not in table.routes
    assert f"{ns}/other" in table.routes  # its neighbour is untouched
    assert await groups(redis, stream) == {"other"}
    for key in keys.trigger_keys(ns, "users", "welcome"):
        assert not await redis.exists(key), key
    assert not await redis.hexists(keys.CURSORS, f"{ns}/welcome")


async def test_a_trigger_moved_to_another_source_leaves_no_cursor_behind(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    cluster.apply(
        http_source("users"), http_source("orders"), service("mailer"), trigger("t", "users")
    )
    await eventually(lambda: ready(cluster, "trigger", "t"))
    assert "t" in await groups(redis, keys.stream(ns, "users"))

    cluster.apply(trigger("t", "orders"))

    async def moved() -> bool:
        route = (await routing_table(redis)).routes[f"{ns}/t"]
        return route.source == "orders"

    await eventually(moved)
    assert await groups(redis, keys.stream(ns, "users")) == set()
    assert "t" in await groups(redis, keys.stream(ns, "orders"))


async def test_a_trigger_outliving_its_source_is_deleted_at_once(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    cluster.apply(http_source("users"), service("mailer"), trigger("t", "users"))
    await eventually(lambda: ready(cluster, "trigger", "t"))
    cluster.delete("eventsource", "users", wait=True)  # the stream, and the group, are gone
    await eventually(
        lambda: (cluster.condition("trigger", "t", "Ready") or {}).get("reason") == "SourceNotFound"
    )
    started = time.monotonic()
    cluster.delete("trigger", "t", wait=True)
    assert time.monotonic() - started < 10  # not after a retry backoff (Kopf: 60 s)
    assert not await redis.hexists(keys.CURSORS, f"{ns}/t")
