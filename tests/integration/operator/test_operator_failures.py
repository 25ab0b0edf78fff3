"""Every failure reason a user can cause, reported honestly, and recovered from by
itself within seconds of the fix — woken by the watch, not by polling."""

from __future__ import annotations

import time
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

# Generous for a loaded 2-core CI machine; typically well under a second here.
RECOVERY = 10.0
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def ready_condition(cluster: Cluster, kind: str, name: str) -> dict[str, Any]:
    condition = cluster.condition(kind, name, "Ready")
    assert condition is not None
    return condition


async def fails_with(cluster: Cluster, kind: str, name: str, reason: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        condition = ready_condition(cluster, kind, name)
        return condition if condition["reason"] == reason else None

    condition = await eventually(check)
    assert condition["status"] == "False"
    return condition


async def recovers(cluster: Cluster, kind: str, name: str) -> float:
    """Seconds until Ready=True."""
    started = time.monotonic()
    await eventually(
        lambda: ready_condition(cluster, kind, name)["status"] == "True", within=RECOVERY
    )
    took = time.monotonic() - started
    print(f"{kind} {name} recovered in {took:.2f}s")
    return took


async def routed(redis: Redis, namespace: str, name: str) -> bool:
    return f"{namespace}/{name}" in (await routing_table(redis)).routes


async def test_a_missing_source_is_source_not_found_until_it_is_created(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    cluster.apply(service("mailer"), trigger("t", "users"))
    condition = await fails_with(cluster, "trigger", "t", "SourceNotFound")
    assert f"EventSource {ns}/users not found" in condition["message"]
    assert "spec.source" in condition["message"]
    assert not await routed(redis, ns, "t")

    cluster.apply(http_source("users"))
    await recovers(cluster, "trigger", "t")
    assert await routed(redis, ns, "t")


async def test_a_missing_service_is_subscriber_not_found_until_it_is_created(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    cluster.apply(http_source("users"), trigger("t", "users", subscriber="mailer"))
    condition = await fails_with(cluster, "trigger", "t", "SubscriberNotFound")
    assert f"Service {ns}/mailer not found" in condition["message"]
    resolved = cluster.condition("trigger", "t", "SubscriberResolved")
    assert resolved is not None and resolved["reason"] == "SubscriberNotFound"

    cluster.apply(service("mailer"))
    await recovers(cluster, "trigger", "t")
    assert await routed(redis, ns, "t")


async def test_a_missing_signing_secret_is_secret_not_found_until_it_is_created(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    signing = {"signing": {"secretRef": {"name": "hook", "key": "secret"}}}
    cluster.apply(http_source("users"), service("mailer"), trigger("t", "users", delivery=signing))
    condition = await fails_with(cluster, "trigger", "t", "SecretNotFound")
    assert "spec.delivery.signing" in condition["message"]

    cluster.apply(secret("hook", secret="not-a-webhook-secret"))
    await fails_with(cluster, "trigger", "t", "InvalidSecret")

    cluster.apply(secret("hook", secret=WHSEC))
    await recovers(cluster, "trigger", "t")
    route = (await routing_table(redis)).routes[f"{ns}/t"]
    assert len(route.delivery.signing_secrets) == 1
    # Sealed: whoever reads Redis does not read the secret.
    assert WHSEC not in str(await redis.hgetall(keys.ROUTES))


async def test_an_invalid_filter_is_reported_with_the_compilers_message_until_fixed(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    cluster.apply(
        http_source("users"),
        service("mailer"),
        trigger("t", "users", filter={"expression": "evnt.type == 'x'"}),
    )
    condition = await fails_with(cluster, "trigger", "t", "InvalidFilter")
    assert condition["message"].startswith("spec.filter.expression: unknown variable evnt")
    assert not await routed(redis, ns, "t")

    cluster.apply(trigger("t", "users", filter={"expression": "event.type == 'x'"}))
    await recovers(cluster, "trigger", "t")
    assert (await routing_table(redis)).routes[f"{ns}/t"].filter.expression == "event.type == 'x'"


async def test_a_source_missing_its_token_secret_holds_its_triggers_until_it_appears(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    auth = {"auth": {"tokenSecretRef": {"name": "ingest", "key": "token"}}}
    cluster.apply(http_source("users", **auth), service("mailer"), trigger("t", "users"))
    condition = await fails_with(cluster, "eventsource", "users", "SecretNotFound")
    assert "spec.http.auth.tokenSecretRef" in condition["message"]
    trigger_condition = await fails_with(cluster, "trigger", "t", "SourceNotReady")
    assert "SecretNotFound" not in trigger_condition["message"]  # a message, not a reason
    assert "Secret" in trigger_condition["message"]
    assert f"{ns}/users" not in (await routing_table(redis)).sources

    cluster.apply(secret("ingest", token="s3cret-token"))
    await recovers(cluster, "eventsource", "users")
    await recovers(cluster, "trigger", "t")
    compiled = (await routing_table(redis)).sources[f"{ns}/users"]
    assert compiled.ingest is not None and compiled.ingest.token_sealed
    assert "s3cret-token" not in str(await redis.hgetall(keys.SOURCES))


async def test_a_trigger_broken_later_keeps_its_cursor_and_resumes_where_it_stopped(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    stream = keys.stream(ns, "users")
    cluster.apply(http_source("users"), service("mailer"), trigger("t", "users"))
    await recovers(cluster, "trigger", "t")

    cluster.delete("service", "mailer")
    await fails_with(cluster, "trigger", "t", "SubscriberNotFound")
    assert not await routed(redis, ns, "t")
    await redis.xadd(stream, {"e": "{}", "t": "0"})  # arrives while the Trigger is broken

    cluster.apply(service("mailer"))
    await recovers(cluster, "trigger", "t")
    (group,) = await redis.xinfo_groups(stream)
    assert group["name"] == b"t"
    assert group["lag"] == 1  # the event is still ahead of the cursor: nothing was lost
