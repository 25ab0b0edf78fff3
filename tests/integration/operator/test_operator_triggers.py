"""Triggers, created, updated and deleted: the routing table matches the spec after each step."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]
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
from tidings.operator.kube import Kube, load_config
from tidings.operator.triggers import names_this_object

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
    # ...and there is none on the object: no finalizer (deletion is seen in the watch),
    # no copy of the spec for change detection. Each would be one more write per
    # Trigger to the API server; the create and the status are the only ones.
    meta = (cluster.get("trigger", "welcome") or {})["metadata"]
    assert "finalizers" not in meta
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
    assert cluster.get("trigger", "welcome") is None  # gone at once: no finalizer

    async def removed() -> bool:
        return f"{ns}/welcome" not in (await routing_table(redis)).routes

    await eventually(removed)
    table = await routing_table(redis)
    assert f"{ns}/other" in table.routes  # its neighbour is untouched
    assert await groups(redis, stream) == {"other"}
    for key in keys.trigger_keys(ns, "users", "welcome"):
        assert not await redis.exists(key), key
    assert not await redis.hexists(keys.CURSORS, f"{ns}/welcome")


async def test_a_trigger_deleted_and_created_again_at_once_starts_afresh(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    """Two objects of one name, handled apart by Kopf in either order: the new one
    is published once the old one's state is gone, and keeps its route."""
    ns = cluster.namespace
    cluster.apply(http_source("users"), service("mailer"), trigger("welcome", "users"))
    await eventually(lambda: ready(cluster, "trigger", "welcome"))
    old_uid = (cluster.get("trigger", "welcome") or {})["metadata"]["uid"]
    await redis.zadd(keys.retries(ns, "users", "welcome"), {"1-0": 1})  # the old one's

    cluster.delete("trigger", "welcome", wait=True)
    cluster.apply(trigger("welcome", "users", delivery={"timeout": "4s"}))
    new_uid = (cluster.get("trigger", "welcome") or {})["metadata"]["uid"]
    assert new_uid != old_uid

    async def republished() -> bool:
        route = (await routing_table(redis)).routes.get(f"{ns}/welcome")
        return route is not None and route.uid == new_uid

    await eventually(republished)
    await eventually(lambda: ready(cluster, "trigger", "welcome"))
    await asyncio.sleep(2)  # a late cleanup of the old one would have removed it by now
    route = (await routing_table(redis)).routes[f"{ns}/welcome"]
    assert route.uid == new_uid and route.delivery.timeout == 4.0
    assert "welcome" in await groups(redis, keys.stream(ns, "users"))
    assert not await redis.exists(keys.retries(ns, "users", "welcome"))


async def test_a_trigger_with_the_finalizer_of_an_earlier_version_has_it_removed(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    """Upgrading from a version that held Triggers with `tidings.dev/cleanup`: the
    operator releases them (one write each, once), so deleting one never hangs."""
    ns = cluster.namespace
    old = trigger("welcome", "users")
    old["metadata"]["finalizers"] = ["tidings.dev/cleanup"]
    cluster.apply(http_source("users"), service("mailer"), old)
    await eventually(lambda: ready(cluster, "trigger", "welcome"))
    await eventually(
        lambda: "finalizers" not in (cluster.get("trigger", "welcome") or {})["metadata"]
    )
    cluster.delete("trigger", "welcome", wait=True)

    async def removed() -> bool:
        return f"{ns}/welcome" not in (await routing_table(redis)).routes

    await eventually(removed)


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

    async def cursor_gone() -> bool:
        return not await redis.hexists(keys.CURSORS, f"{ns}/t")

    await eventually(cursor_gone, within=20)
    # Cleaned up at once, not after a retry backoff (the stream is gone: no group to destroy).
    assert time.monotonic() - started < 10


async def test_a_status_404_is_taken_for_deletion_only_when_it_names_the_trigger(
    cluster: Cluster, kubeconfig: Path
) -> None:
    """A missed deletion shows as a 404 on the status write; a 404 for a path the
    API server does not serve (a CRD being registered again) must not."""
    kube = Kube(load_config(str(kubeconfig)))
    try:
        with pytest.raises(ApiException) as gone:
            await kube.apply_status("Trigger", "triggers", cluster.namespace, "nobody", {})
        with pytest.raises(ApiException) as unserved:
            await kube.apply_status("Trigger", "triggerz", cluster.namespace, "nobody", {})
    finally:
        kube.close()
    assert gone.value.status == unserved.value.status == 404
    assert names_this_object(gone.value, "nobody")
    assert not names_this_object(gone.value, "somebody")
    assert not names_this_object(unserved.value, "nobody")
