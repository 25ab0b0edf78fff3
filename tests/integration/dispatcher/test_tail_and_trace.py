"""`tidings tail` and `tidings trace`: the real command against a real Redis, with a
real dispatcher delivering to real subscribers."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from dispatch_harness import Plane, Subscriber, wait_until

from tidings.api import keys, table
from tidings.api.events import CloudEvent, encode
from tidings.dispatcher import streams

TIDINGS = str(Path(sys.executable).parent / "tidings")
SLOW_RETRY = {"initialDelay": "1h", "maxDelay": "1h", "jitter": 0}


async def tidings(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        TIDINGS,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "REDIS_URL": ""},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def by_path(request: web.Request) -> tuple[int, dict[str, str], float]:
    """/ok answers 200, /busy 503, /bad 400."""
    status = {"/ok": 200, "/busy": 503, "/bad": 400}.get(request.path, 404)
    return status, {}, 0.0


async def store(plane: Plane, *events: CloudEvent) -> None:
    """As ingest stores them: the append script, which also indexes the ids."""
    source = (await table.load(plane.redis)).sources[f"{plane.namespace}/src"]
    await streams.append(plane.redis, source, list(events))


async def trace(plane: Plane, event_id: str) -> dict[str, Any]:
    code, out, err = await tidings(
        "trace", f"{plane.namespace}/src", event_id, "--redis-url", plane.redis_url, "-o", "json"
    )
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


def states(report: dict[str, Any]) -> dict[str, str]:
    return {t["trigger"].partition("/")[2]: t["state"] for t in report["triggers"]}


async def test_trace_tells_each_triggers_story(plane: Plane, subscriber: Subscriber) -> None:
    subscriber.behaviour = by_path
    base = f"http://127.0.0.1:{subscriber.port}"
    await plane.add_source()
    await plane.dispatcher()
    await plane.add_trigger("mailer", f"{base}/ok")
    await plane.add_trigger("audit", f"{base}/ok", filter={"types": ["com.shop.user.created"]})
    await plane.add_trigger("crm", f"{base}/busy", delivery={"retry": SLOW_RETRY})
    await plane.add_trigger("ledger", f"{base}/bad")
    await plane.add_trigger("archive", f"{base}/ok", paused=True)
    await store(plane, CloudEvent("order-42", "/shop", "com.shop.order.created", {"n": 42}))

    async def settled() -> bool:
        found = states(await trace(plane, "order-42"))
        return (
            found.get("mailer") == "delivered"
            and found.get("crm") == "retrying"
            and (found.get("ledger") == "dead-lettered")
        )

    await wait_until(settled, 20, "mailer delivered, crm retrying, ledger dead-lettered")
    report = await trace(plane, "order-42")
    assert report["inStream"] and report["type"] == "com.shop.order.created"
    assert states(report) == {
        "archive": "pending",
        "audit": "filtered",
        "crm": "retrying",
        "ledger": "dead-lettered",
        "mailer": "delivered",
    }
    detail = {t["trigger"].partition("/")[2]: t["detail"] for t in report["triggers"]}
    assert "filter.types" in detail["audit"] and "com.shop.order.created" in detail["audit"]
    assert "after 1 attempt" in detail["mailer"] and "latency" in detail["mailer"]
    assert "attempt 2 due" in detail["crm"] and "HTTP 503" in detail["crm"]
    assert "refused by the subscriber" in detail["ledger"] and "400" in detail["ledger"]
    assert "not read yet" in detail["archive"] and "paused" in detail["archive"]

    # The text form names the same.
    code, out, err = await tidings(
        "trace", f"{plane.namespace}/src", "order-42", "--redis-url", plane.redis_url
    )
    assert code == 0, err
    assert out.startswith(f"event order-42 in {plane.namespace}/src\n  stored ")
    assert "filtered out: filter.types" in out and "dead-lettered" in out


async def test_trace_of_a_trigger_in_backoff(plane: Plane, subscriber: Subscriber) -> None:
    subscriber.behaviour = by_path
    await plane.add_source()
    await plane.dispatcher()
    await plane.add_trigger(
        "crm",
        f"http://127.0.0.1:{subscriber.port}/busy",
        delivery={"retry": SLOW_RETRY, "backoff": {"minAttempts": 1, "window": "0s"}},
    )
    await store(plane, CloudEvent("a", "/shop", "t"), CloudEvent("b", "/shop", "t"))

    async def in_backoff() -> bool:
        return set(states(await trace(plane, "b")).values()) == {"backoff"}

    await wait_until(in_backoff, 20, "the Trigger in Backoff")
    detail = (await trace(plane, "b"))["triggers"][0]["detail"]
    assert detail.startswith("in Backoff; next probe ")


async def test_trace_of_a_delayed_event_says_scheduled_until_when(
    plane: Plane, subscriber: Subscriber
) -> None:
    await plane.add_source()
    await plane.dispatcher()
    await plane.add_trigger("later", subscriber.url, delivery={"delay": "2h"})
    await store(plane, CloudEvent("reminder", "/shop", "t"))

    async def scheduled() -> bool:
        return states(await trace(plane, "reminder")) == {"later": "scheduled"}

    await wait_until(scheduled, 20, "the event set aside for two hours")
    detail = (await trace(plane, "reminder"))["triggers"][0]["detail"]
    assert detail.startswith("scheduled: delayed until ") and detail.endswith(", not late")
    assert subscriber.attempts == []


async def test_trace_of_expired_delivering_and_waiting_events(
    plane: Plane, subscriber: Subscriber
) -> None:
    def slow_first(request: web.Request) -> tuple[int, dict[str, str], float]:
        return 200, {}, 40.0 if request.headers["webhook-id"] == "first" else 0.0

    subscriber.behaviour = slow_first
    await plane.add_source()
    await plane.dispatcher()
    await plane.add_trigger(
        "orders",
        subscriber.url,
        delivery={"ordering": {"key": "event.subject"}, "timeout": "60s"},
    )
    await plane.add_trigger(
        "fresh", subscriber.url, filter={"prefix": {"subject": "x"}}, delivery={"maxAge": "1s"}
    )
    # "first" hangs at the subscriber; "second" has the same key and waits behind it.
    await store(
        plane,
        CloudEvent("first", "/shop", "t", subject="k"),
        CloudEvent("second", "/shop", "t", subject="k"),
    )
    # Stored two seconds ago: past the fresh Trigger's maxAge before any attempt.
    old = encode(CloudEvent("old", "/shop", "t", subject="x"), int(time.time() * 1000) - 2000)
    stream_id = await plane.redis.xadd(plane.stream(), old)  # type: ignore[arg-type]
    await plane.redis.zadd(
        keys.event_index(plane.namespace, "src"), {"old": int(stream_id.split(b"-")[0])}
    )

    async def told() -> bool:
        return (
            states(await trace(plane, "first")).get("orders") == "delivering"
            and states(await trace(plane, "second")).get("orders") == "waiting"
            and states(await trace(plane, "old")).get("fresh") == "expired"
        )

    await wait_until(told, 20, "first delivering, second waiting, old expired")
    first = {t["trigger"]: t["detail"] for t in (await trace(plane, "first"))["triggers"]}
    assert first[f"{plane.namespace}/orders"].startswith("delivering: attempt under way at ")
    second = {t["trigger"]: t["detail"] for t in (await trace(plane, "second"))["triggers"]}
    assert second[f"{plane.namespace}/orders"] == (
        "waiting behind an earlier event of its ordering key"
    )
    old_report = await trace(plane, "old")
    expired = {t["trigger"]: t for t in old_report["triggers"]}[f"{plane.namespace}/fresh"]
    assert expired["detail"].startswith("expired: maxAge passed before it could be sent")
    assert [a["outcome"] for a in expired["attempts"]] == ["expired"]


async def test_trace_of_an_unknown_event_or_source_says_so(plane: Plane) -> None:
    await plane.add_source()
    code, _, err = await tidings(
        "trace", f"{plane.namespace}/src", "nope", "--redis-url", plane.redis_url
    )
    assert code == 1 and "'nope' is not in" in err and "retention" in err
    code, _, err = await tidings(
        "trace", f"{plane.namespace}/other", "x", "--redis-url", plane.redis_url
    )
    assert code == 1 and "not in the routing table" in err
    code, _, err = await tidings("trace", "no-slash", "x", "--redis-url", plane.redis_url)
    assert code == 2 and "NAMESPACE/NAME" in err


async def test_tail_follows_attempts_live_and_filters_failures(
    plane: Plane, subscriber: Subscriber
) -> None:
    def flaky(request: web.Request) -> tuple[int, dict[str, str], float]:
        return (503 if request.headers["webhook-id"].startswith("bad") else 200), {}, 0.0

    subscriber.behaviour = flaky
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url, delivery={"retry": SLOW_RETRY})
    follower = await asyncio.create_subprocess_exec(
        TIDINGS,
        "tail",
        route.id,
        "-o",
        "json",
        "--redis-url",
        plane.redis_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "REDIS_URL": ""},
    )
    try:
        assert follower.stderr is not None  # it says when it follows (from "now")
        started = await asyncio.wait_for(follower.stderr.readline(), 60)
        assert started.startswith(b"following ")
        await store(plane, CloudEvent("good-1", "/s", "t"), CloudEvent("bad-1", "/s", "t"))
        assert follower.stdout is not None
        lines = [
            json.loads(await asyncio.wait_for(follower.stdout.readline(), 20)) for _ in range(2)
        ]
    finally:
        follower.terminate()
        await follower.wait()
    seen = {line["eventId"]: line for line in lines}
    assert seen["good-1"]["outcome"] == "delivered" and seen["good-1"]["status"] == "200"
    assert seen["bad-1"]["outcome"] == "retry" and seen["bad-1"]["status"] == "503"
    assert seen["bad-1"]["attempt"] == 1 and seen["bad-1"]["replica"]

    # History, failures only, as text; not a terminal, so no colour.
    code, out, err = await tidings(
        "tail",
        route.id,
        "--since",
        "10m",
        "--failed",
        "--no-follow",
        "--redis-url",
        plane.redis_url,
    )
    assert code == 0, err
    rows = out.splitlines()
    assert len(rows) == 1 and " bad-1 " in rows[0] and " retry " in rows[0] and "503" in rows[0]
    assert "\033[" not in out
    key = keys.attempt_log(route.namespace, route.source, route.name)
    assert await plane.redis.xlen(key) == 2

    # On a terminal: the failure in yellow (a retry follows), the delivery plain.
    shown = await on_a_terminal(
        "tail", route.id, "--since", "10m", "--no-follow", "--redis-url", plane.redis_url
    )
    rows = {row.split()[1]: row for row in shown.replace("\r", "").splitlines()}
    assert rows["bad-1"].startswith("\033[33m")
    assert rows["bad-1"].endswith("\033[0m")
    assert "\033[" not in rows["good-1"]


async def on_a_terminal(*args: str) -> str:
    """What `tidings ARGS` writes to a pseudo-terminal as its stdout."""
    leader, follower = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            TIDINGS,
            *args,
            stdout=follower,
            stderr=asyncio.subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"REDIS_URL": ""},
        )
        os.close(follower)
        _, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(leader)


async def test_tail_names_a_bad_argument(plane: Plane) -> None:
    code, _, err = await tidings("tail", "shop/x", "--since", "ten", "--redis-url", plane.redis_url)
    assert code == 2 and "--since" in err
    code, _, err = await tidings("tail", f"{plane.namespace}/none", "--redis-url", plane.redis_url)
    assert code == 1 and "not in the routing table" in err
