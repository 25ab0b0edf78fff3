"""Delivery health in status: what the data plane reports (simulated here by
writing its state HASH, as the dispatcher does), surfaced only when it changes
meaningfully, with an Event on every move into and out of Backoff. And pausing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

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

from tidings.api import heartbeat, keys
from tidings.cli.redis_server import RedisServer

pytestmark = pytest.mark.integration


async def report(redis: Redis, ns: str, *, announce: bool = True, **fields: Any) -> None:
    """Write the Trigger's state HASH the way dispatchers publish it, and announce
    it as news (keys.REPORT_NEWS), as they do when status would change."""
    values = {keys.STATE_UPDATED: int(time.time() * 1000), **fields}
    await redis.hset(keys.trigger_state(ns, "users", "t"), mapping=values)
    if announce:
        await redis.publish(keys.REPORT_NEWS, f"{ns}/t")


def delivery(cluster: Cluster) -> dict[str, Any]:
    return ((cluster.get("trigger", "t") or {}).get("status") or {}).get("delivery") or {}


async def ready_trigger(cluster: Cluster, **spec: Any) -> None:
    cluster.apply(http_source("users"), service("mailer"), trigger("t", "users", **spec))
    await eventually(
        lambda: (cluster.condition("trigger", "t", "Ready") or {}).get("status") == "True"
    )


async def test_delivery_state_lag_and_failures_reach_status_and_columns(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    await ready_trigger(cluster)
    await report(
        redis,
        ns,
        **{keys.STATE_STATE: "Delivering", keys.STATE_LAG: 1500, keys.STATE_DEAD_LETTERED: 2},
        **{keys.STATE_EXPIRED: 0},
    )
    await eventually(lambda: delivery(cluster).get("lag") == 1500)
    assert delivery(cluster) == {
        "state": "Delivering",
        "lag": 1500,
        "deadLettered": 2,
        "expired": 0,
    }
    delivering = cluster.condition("trigger", "t", "Delivering") or {}
    assert (delivering["status"], delivering["reason"]) == ("True", "Delivering")

    table = cluster.ok("get", "triggers", "-n", ns)
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "SOURCE", "SUBSCRIBER", "READY", "STATE", "LAG", "AGE"]
    assert row.split()[:6] == [
        "t",
        "users",
        f"http://mailer.{ns}.svc.cluster.local:8080",
        "True",
        "Delivering",
        "1500",
    ]


async def test_a_wobbling_lag_costs_no_api_writes(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    await ready_trigger(cluster)
    await report(redis, ns, **{keys.STATE_STATE: "Delivering", keys.STATE_LAG: 100})
    await eventually(lambda: delivery(cluster).get("lag") == 100)
    version = (cluster.get("trigger", "t") or {})["metadata"]["resourceVersion"]

    # ~10 health ticks of a busy Trigger whose lag moves a little.
    for lag in (104, 97, 110, 95, 101, 99, 108, 100):
        await report(redis, ns, **{keys.STATE_STATE: "Delivering", keys.STATE_LAG: lag})
        await asyncio.sleep(0.4)

    assert (cluster.get("trigger", "t") or {})["metadata"]["resourceVersion"] == version
    assert delivery(cluster)["lag"] == 100


async def test_backoff_is_surfaced_with_an_event_into_it_and_one_out_of_it(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    await ready_trigger(cluster)
    await report(redis, ns, **{keys.STATE_STATE: "Delivering", keys.STATE_LAG: 0})
    await eventually(lambda: delivery(cluster).get("state") == "Delivering")

    await report(
        redis,
        ns,
        **{
            keys.STATE_STATE: "Backoff",
            keys.STATE_LAG: 42,
            keys.STATE_LAST_FAILURE_TIME: "2026-11-28T10:00:00Z",
            keys.STATE_LAST_FAILURE_STATUS: 503,
            keys.STATE_LAST_FAILURE_MESSAGE: "Service Unavailable",
        },
    )
    await eventually(lambda: delivery(cluster).get("state") == "Backoff")
    assert delivery(cluster)["lastFailure"] == {
        "time": "2026-11-28T10:00:00Z",
        "status": 503,
        "message": "Service Unavailable",
    }
    condition = cluster.condition("trigger", "t", "Delivering") or {}
    assert (condition["status"], condition["reason"]) == ("False", "Backoff")
    assert "HTTP 503: Service Unavailable" in condition["message"]
    assert (cluster.condition("trigger", "t", "Ready") or {})["status"] == "True"

    def reasons() -> list[str]:
        return [e["reason"] for e in cluster.events("t") if e["reason"].startswith("Backoff")]

    started = await eventually(lambda: reasons() == ["BackoffStarted"] and cluster.events("t"))
    warning = next(e for e in started if e["reason"] == "BackoffStarted")
    assert warning["type"] == "Warning"
    assert "HTTP 503" in warning["message"]

    await report(redis, ns, **{keys.STATE_STATE: "Delivering", keys.STATE_LAG: 0})
    await eventually(lambda: sorted(reasons()) == ["BackoffEnded", "BackoffStarted"])
    await asyncio.sleep(1.0)  # several more health ticks: no repeated Events
    assert sorted(reasons()) == ["BackoffEnded", "BackoffStarted"]
    assert all(e.get("count", 1) == 1 for e in cluster.events("t"))


async def test_a_report_at_rest_is_read_again_when_news_is_announced(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    """At rest, the operator reads a report only every health_rest_interval (60 s
    here): a change nobody announces waits for it; an announced one shows at once."""
    ns = cluster.namespace
    await ready_trigger(cluster)
    await report(redis, ns, **{keys.STATE_STATE: "Delivering", keys.STATE_LAG: 0})
    await eventually(lambda: delivery(cluster).get("state") == "Delivering")
    await asyncio.sleep(1.5)  # several health intervals (0.3 s): settled at rest

    backoff = {keys.STATE_STATE: "Backoff", keys.STATE_LAG: 7}
    await report(redis, ns, announce=False, **backoff)
    await asyncio.sleep(3.0)  # ten health intervals
    assert delivery(cluster).get("state") == "Delivering", "read although at rest"

    await redis.publish(keys.REPORT_NEWS, f"{ns}/t")
    await eventually(lambda: delivery(cluster).get("state") == "Backoff", within=5)
    # No longer at rest: read every health interval again, announced or not.
    await report(redis, ns, announce=False, **{keys.STATE_STATE: "Paused", keys.STATE_LAG: 7})
    await eventually(lambda: delivery(cluster).get("state") == "Paused", within=5)


async def reads_of_report(redis_url: str, ns: str, name: str, seconds: float) -> int:
    """How many times the operator read Trigger `name`'s report (MONITOR)."""
    key = keys.trigger_state(ns, "users", name)
    client = Redis.from_url(redis_url)
    reads = 0
    try:
        async with client.monitor() as monitor:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    async for entry in monitor.listen():
                        command = str(entry.get("command", ""))
                        if command.upper().startswith("HGETALL") and key in command:
                            reads += 1
    finally:
        await client.aclose()
    return reads


async def test_a_trigger_without_a_report_rests_once_older_than_the_rest_interval(
    cluster: Cluster,
    operator_process: OperatorProcess,
    operator_redis: RedisServer,
    redis: Redis,
) -> None:
    """No dispatcher has reported the Trigger: a new one is still read every health
    interval (a dispatcher older than the first-report announcement is seen at once),
    one older than health_rest_interval only every rest interval (at 10,000 such
    Triggers, reading each every 5 s cost the operator a third of a core)."""
    operator_process.command += ["--health-rest-interval", "4"]
    operator_process.start()
    ns = cluster.namespace
    cluster.apply(http_source("users"), service("mailer"), trigger("t", "users"))
    created = time.monotonic()
    await eventually(
        lambda: (cluster.condition("trigger", "t", "Ready") or {}).get("status") == "True"
    )
    # New: an unannounced first report shows within a few health intervals (0.3 s).
    await report(redis, ns, announce=False, **{keys.STATE_STATE: "Delivering", keys.STATE_LAG: 4})
    await eventually(lambda: delivery(cluster).get("lag") == 4, within=3)

    cluster.apply(trigger("u", "users"))
    await eventually(
        lambda: (cluster.condition("trigger", "u", "Ready") or {}).get("status") == "True"
    )
    assert time.monotonic() - created < 30
    young = await reads_of_report(operator_redis.url, ns, "u", 2.0)
    assert young >= 4, f"a new Trigger without a report was read {young} times in 2 s"
    await asyncio.sleep(4.0)  # older than the rest interval now
    old = await reads_of_report(operator_redis.url, ns, "u", 6.0)
    assert old <= 3, f"read {old} times in 6 s although at rest without a report"
    # Its first report announced: shown at once.
    values = {keys.STATE_UPDATED: int(time.time() * 1000), keys.STATE_STATE: "Delivering"}
    await redis.hset(keys.trigger_state(ns, "users", "u"), mapping={**values, keys.STATE_LAG: 6})
    await redis.publish(keys.REPORT_NEWS, f"{ns}/u")
    await eventually(
        lambda: (
            (((cluster.get("trigger", "u") or {}).get("status") or {}).get("delivery") or {}).get(
                "lag"
            )
            == 6
        ),
        within=5,
    )


async def test_a_stale_report_is_shown_as_unknown(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    await ready_trigger(cluster)
    await report(redis, ns, **{keys.STATE_STATE: "Delivering", keys.STATE_LAG: 3})
    await redis.hset(
        keys.trigger_state(ns, "users", "t"),
        keys.STATE_UPDATED,
        int(time.time() * 1000) - 3_600_000,
    )
    await redis.delete(keys.DISPATCHERS)  # no dispatcher alive to vouch for it
    condition = await eventually(
        lambda: (
            (cluster.condition("trigger", "t", "Delivering") or {}).get("reason") == "ReportStale"
            and cluster.condition("trigger", "t", "Delivering")
        )
    )
    assert condition["status"] == "Unknown"
    # A Trigger at rest is not rewritten by the dispatchers: a live one's heartbeat
    # says the old report is still true.
    await heartbeat.beat(redis, "dispatcher-0")
    condition = await eventually(
        lambda: (
            (cluster.condition("trigger", "t", "Delivering") or {}).get("reason") != "ReportStale"
            and cluster.condition("trigger", "t", "Delivering")
        )
    )
    assert condition["status"] == "True"


async def test_pausing_stops_delivery_keeps_the_cursor_and_unpausing_resumes(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    stream = keys.stream(ns, "users")
    await ready_trigger(cluster)

    cluster.apply(trigger("t", "users", paused=True))
    await eventually(lambda: _route_paused(redis, ns), within=10)
    await eventually(lambda: delivery(cluster).get("state") == "Paused")
    condition = cluster.condition("trigger", "t", "Delivering") or {}
    assert (condition["status"], condition["reason"]) == ("False", "Paused")
    assert (cluster.condition("trigger", "t", "Ready") or {})["status"] == "True"
    await redis.xadd(stream, {"e": "{}", "t": "0"})  # arrives while paused

    cluster.apply(trigger("t", "users", paused=False))

    async def resumed() -> bool:
        return not await _route_paused(redis, ns)

    await eventually(resumed, within=10)
    (group,) = await redis.xinfo_groups(stream)
    assert (group["name"], group["lag"]) == (b"t", 1)  # the cursor waited for it


async def _route_paused(redis: Redis, ns: str) -> bool:
    route = (await routing_table(redis)).routes.get(f"{ns}/t")
    return route is not None and route.paused


async def test_the_loss_forecast_reaches_status_once_the_oldest_event_is_a_minute_old(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    await ready_trigger(cluster)
    now_ms = int(time.time() * 1000)
    # A healthy Trigger's oldest undelivered event is seconds old: not shown.
    await report(
        redis,
        ns,
        **{keys.STATE_STATE: "Delivering", keys.STATE_LAG: 3},
        **{keys.STATE_OLDEST: now_ms - 2000, keys.STATE_EXPIRES: now_ms + 3600_000},
    )
    await eventually(lambda: delivery(cluster).get("lag") == 3)
    assert "expiresAt" not in delivery(cluster)
    # Stuck for ten minutes, 71h50m left before maxAge (72h): shown at once.
    stuck = now_ms - 600_000
    await report(
        redis,
        ns,
        **{keys.STATE_STATE: "Delivering", keys.STATE_LAG: 3},
        **{keys.STATE_OLDEST: stuck, keys.STATE_EXPIRES: stuck + 72 * 3600_000},
    )
    await eventually(lambda: "expiresAt" in delivery(cluster))
    shown = delivery(cluster)
    from datetime import UTC, datetime

    def ms(stamp: str) -> int:
        return int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())

    assert abs(ms(shown["oldestUndelivered"]) - stuck // 1000) <= 1
    assert abs(ms(shown["expiresAt"]) - (stuck // 1000 + 72 * 3600)) <= 1
