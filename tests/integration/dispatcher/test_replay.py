"""`tidings replay`: dead letters go back to their Trigger only, exactly once,
also after the source's retention trimmed the original events."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from dispatch_harness import Plane, Subscriber, wait_until
from prometheus_client import CollectorRegistry
from redis.asyncio import RedisCluster

from tidings.api import keys, table
from tidings.api.destinations import LOCAL
from tidings.api.routes import Route
from tidings.api.sealing import Sealer, new_key
from tidings.cli import replay as replay_module
from tidings.dispatcher import deadletter, retention
from tidings.dispatcher.engine import Dispatcher
from tidings.dispatcher.routing import TableWatcher

FAST = {"initialDelay": "50ms", "maxDelay": "1s", "jitter": 0}


def answer(status: int) -> Any:
    def behaviour(request: web.Request) -> tuple[int, dict[str, str], float]:
        return status, {}, 0.0

    return behaviour


async def tidings(*args: str) -> tuple[int, str, str]:
    """Run the real `tidings` command; (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "tidings"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "REDIS_URL": ""},
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def replay(plane: Plane, trigger: str, *args: str) -> tuple[int, str, str]:
    return await tidings(
        "replay", f"{plane.namespace}/{trigger}", "--redis-url", plane.redis_url, *args
    )


async def dead_lettered(plane: Plane, route: Route, count: int) -> list[deadletter.DeadLetter]:
    async def enough() -> bool:
        found = await deadletter.read(plane.redis, route.namespace, route.source, route.name)
        return len(found) >= count

    await wait_until(enough, 15, f"{count} dead letters")
    return await deadletter.read(plane.redis, route.namespace, route.source, route.name)


async def replay_keys_empty(plane: Plane, route: Route) -> bool:
    ns, source, name = route.namespace, route.source, route.name
    sizes = [
        await plane.redis.xlen(keys.dead_letters(ns, source, name)),
        await plane.redis.zcard(keys.retries(ns, source, name)),
        await plane.redis.hlen(keys.attempts(ns, source, name)),
        await plane.redis.hlen(keys.replays(ns, source, name)),
        await plane.redis.zcard(keys.held(ns, source, name)),
    ]
    return sizes == [0, 0, 0, 0, 0]


async def five_dead_letters(
    plane: Plane, subscriber: Subscriber, **source: Any
) -> tuple[Route, Route, Subscriber]:
    """Trigger `welcome` dead-letters e-0..e-4 (its subscriber answers 400); Trigger
    `audit` on the same source delivers them. Returns (welcome, audit, audit's server)."""
    other = await Subscriber().start()
    subscriber.behaviour = answer(400)
    await plane.add_source(**source)
    await plane.dispatcher()
    welcome = await plane.add_trigger("welcome", subscriber.url, delivery={"retry": FAST})
    audit = await plane.add_trigger("audit", other.url)
    await plane.publish(5)
    await dead_lettered(plane, welcome, 5)
    await wait_until(lambda: len(other.received) == 5, 10, "audit got the 5 events")
    subscriber.behaviour = answer(200)
    return welcome, audit, other


async def test_replay_delivers_each_dead_letter_once_to_its_trigger_only(
    plane: Plane, subscriber: Subscriber
) -> None:
    welcome, _, other = await five_dead_letters(plane, subscriber)
    try:
        code, out, err = await replay(plane, "welcome", "--all")
        assert code == 0, err
        assert out.strip() == f"replayed 5 dead letters of {plane.namespace}/welcome"
        await wait_until(lambda: len(subscriber.received) >= 5, 10, "5 replayed deliveries")
        await asyncio.sleep(1.5)  # room for a duplicate to show up
        assert sorted(subscriber.ids()) == [f"e-{i}" for i in range(5)]
        assert len(other.received) == 5  # the other Trigger got nothing new
        await wait_until(lambda: replay_keys_empty(plane, welcome), 5, "DLQ and retry keys empty")
        # The body is the original event's data, as first delivered.
        first = json.loads(next(r for r in subscriber.received if r.id == "e-3").body)
        assert first == {"n": 3} or first.get("data") == {"n": 3}
    finally:
        await other.stop()


async def test_dry_run_lists_dead_letters_and_changes_nothing(
    plane: Plane, subscriber: Subscriber
) -> None:
    _, _, other = await five_dead_letters(plane, subscriber)
    try:
        code, out, err = await replay(plane, "welcome", "--all", "--dry-run")
        assert code == 0, err
        lines = out.strip().splitlines()
        assert len(lines) == 6
        for i, line in enumerate(lines[:5]):
            dlq_id, when, event_id, event_type, status, error = line.split("  ", 5)
            assert event_id == f"e-{i}" and event_type == "com.example.test"
            assert status == "400" and "HTTP 400" in error
            assert re.fullmatch(r"\d+-\d+", dlq_id) and when.endswith("Z")
        assert lines[5] == (
            f"would replay 5 dead letters of {plane.namespace}/welcome (dry run: nothing changed)"
        )
        await asyncio.sleep(1.5)
        assert subscriber.received == []
        assert len(await deadletter.read(plane.redis, plane.namespace, "src", "welcome")) == 5
        assert await plane.redis.zcard(keys.retries(plane.namespace, "src", "welcome")) == 0
    finally:
        await other.stop()


async def test_replay_by_id_replays_only_that_dead_letter(
    plane: Plane, subscriber: Subscriber
) -> None:
    _, _, other = await five_dead_letters(plane, subscriber)
    try:
        dead = await deadletter.read(plane.redis, plane.namespace, "src", "welcome")
        chosen = next(d for d in dead if d.event["id"] == "e-2")
        code, out, err = await replay(plane, "welcome", "--id", chosen.dlq_id)
        assert code == 0, err
        assert out.strip() == f"replayed 1 dead letter of {plane.namespace}/welcome"
        await wait_until(lambda: subscriber.received, 10, "the replayed delivery")
        await asyncio.sleep(1.0)
        assert subscriber.ids() == ["e-2"]
        left = await deadletter.read(plane.redis, plane.namespace, "src", "welcome")
        assert sorted(d.event["id"] for d in left) == ["e-0", "e-1", "e-3", "e-4"]
    finally:
        await other.stop()


async def test_replay_delivers_events_the_source_retention_already_trimmed(
    plane: Plane, subscriber: Subscriber
) -> None:
    welcome, audit, other = await five_dead_letters(plane, subscriber, maxAge="1ms")
    try:
        source = (await table.load(plane.redis)).sources[f"{plane.namespace}/src"]
        await wait_until(lambda: plane.nothing_pending(audit), 5, "audit settled")
        trimmed = (await retention.trim(plane.redis, source, [welcome, audit])).trimmed
        assert trimmed == 5 and await plane.redis.xlen(plane.stream()) == 0
        code, out, err = await replay(plane, "welcome", "--all")
        assert code == 0, err
        assert out.strip() == f"replayed 5 dead letters of {plane.namespace}/welcome"
        await wait_until(lambda: len(subscriber.received) >= 5, 10, "5 replayed deliveries")
        await asyncio.sleep(1.0)
        assert sorted(subscriber.ids()) == [f"e-{i}" for i in range(5)]
        assert len(other.received) == 5
        await wait_until(lambda: replay_keys_empty(plane, welcome), 5, "DLQ and retry keys empty")
    finally:
        await other.stop()


async def test_a_replayed_event_that_fails_again_is_dead_lettered_again_with_fresh_attempts(
    plane: Plane, subscriber: Subscriber
) -> None:
    _, _, other = await five_dead_letters(plane, subscriber)
    try:
        before = await deadletter.read(plane.redis, plane.namespace, "src", "welcome")
        oldest_two = [d.event["id"] for d in before[:2]]
        attempts_before = len(subscriber.attempts)
        subscriber.behaviour = answer(422)
        code, _, err = await replay(plane, "welcome", "--all", "--limit", "2")
        assert code == 0, err

        async def two_new_dead_letters() -> bool:
            dead = await deadletter.read(plane.redis, plane.namespace, "src", "welcome")
            return sum(d.status == "422" for d in dead) == 2

        await wait_until(two_new_dead_letters, 10, "the 2 replayed events dead again")
        dead = await deadletter.read(plane.redis, plane.namespace, "src", "welcome")
        assert [d.event["id"] for d in dead] == [d.event["id"] for d in before[2:]] + oldest_two
        assert [d.attempts for d in dead[3:]] == [1, 1]  # counted afresh, not 2
        assert len(subscriber.attempts) == attempts_before + 2  # the oldest two, once each
        assert await plane.redis.hlen(keys.replays(plane.namespace, "src", "welcome")) == 0
    finally:
        await other.stop()


async def test_since_replays_only_recent_dead_letters(plane: Plane, subscriber: Subscriber) -> None:
    subscriber.behaviour = answer(400)
    await plane.add_source()
    await plane.dispatcher()
    welcome = await plane.add_trigger("welcome", subscriber.url)
    # A dead letter from two hours ago, written the way the settle script writes one.
    seconds, _ = await plane.redis.time()
    old_event = {"specversion": "1.0", "id": "old", "source": "/t", "type": "com.example.test"}
    await plane.redis.xadd(
        keys.dead_letters(plane.namespace, "src", "welcome"),
        {
            "event": json.dumps(old_event),
            "streamId": f"{(seconds - 7300) * 1000}-0",
            "attempts": 1,
            "status": "400",
            "error": "400 is not in retryOn: HTTP 400: nope",
            "time": (seconds - 7200) * 1000,
            "trigger": welcome.id,
        },
        id=f"{(seconds - 7200) * 1000}-0",
    )
    await plane.publish(2)
    await dead_lettered(plane, welcome, 3)
    subscriber.behaviour = answer(200)
    code, out, err = await replay(plane, "welcome", "--since", "1h")
    assert code == 0, err
    assert out.strip() == f"replayed 2 dead letters of {plane.namespace}/welcome"
    await wait_until(lambda: len(subscriber.received) >= 2, 10, "2 replayed deliveries")
    await asyncio.sleep(1.0)
    assert sorted(subscriber.ids()) == ["e-0", "e-1"]
    left = await deadletter.read(plane.redis, plane.namespace, "src", "welcome")
    assert [d.event["id"] for d in left] == ["old"]


async def test_a_running_tidings_dispatcher_delivers_replayed_events(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = answer(400)
    await plane.add_source()
    plane.spawn("replay-1")
    welcome = await plane.add_trigger("welcome", subscriber.url)
    await plane.publish(3)
    await dead_lettered(plane, welcome, 3)
    subscriber.behaviour = answer(200)
    code, out, err = await replay(plane, "welcome", "--all")
    assert code == 0 and out.startswith("replayed 3 dead letters"), err
    await wait_until(lambda: len(subscriber.received) >= 3, 10, "3 replayed deliveries")
    await asyncio.sleep(1.0)
    assert sorted(subscriber.ids()) == ["e-0", "e-1", "e-2"]
    await wait_until(lambda: replay_keys_empty(plane, welcome), 5, "DLQ and retry keys empty")


async def test_replaying_an_unknown_trigger_names_it(plane: Plane) -> None:
    await plane.add_source()
    code, out, err = await replay(plane, "nope", "--all")
    assert code == 1 and out == ""
    assert f"Trigger {plane.namespace}/nope is not in the routing table" in err


async def test_an_unknown_id_is_an_error_and_replays_nothing(
    plane: Plane, subscriber: Subscriber
) -> None:
    _, _, other = await five_dead_letters(plane, subscriber)
    try:
        code, _, err = await replay(plane, "welcome", "--id", "1-0")
        assert code == 1
        assert "--id 1-0: no such dead letter" in err and "--all --dry-run" in err
        assert len(await deadletter.read(plane.redis, plane.namespace, "src", "welcome")) == 5
    finally:
        await other.stop()


async def test_concurrent_replays_hand_each_dead_letter_back_once(
    plane: Plane, subscriber: Subscriber
) -> None:
    welcome, _, other = await five_dead_letters(plane, subscriber)
    try:
        dead = await deadletter.read(plane.redis, plane.namespace, "src", "welcome")
        ids = [d.dlq_id for d in dead]
        results = await asyncio.gather(
            *(deadletter.hand_back(plane.redis, welcome, ids) for _ in range(4))
        )
        assert sum(moved for moved, _ in results) == 5
        await wait_until(lambda: len(subscriber.received) >= 5, 10, "5 replayed deliveries")
        await asyncio.sleep(1.0)
        assert sorted(subscriber.ids()) == [f"e-{i}" for i in range(5)]
    finally:
        await other.stop()


async def test_a_replayed_events_max_age_counts_from_the_replay(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = answer(400)
    await plane.add_source()
    await plane.dispatcher()
    welcome = await plane.add_trigger("welcome", subscriber.url, delivery={"maxAge": "2s"})
    await plane.publish(2)
    await dead_lettered(plane, welcome, 2)
    await asyncio.sleep(2.5)  # older than maxAge by now
    subscriber.behaviour = answer(200)
    code, _, err = await replay(plane, "welcome", "--all")
    assert code == 0, err
    await wait_until(lambda: len(subscriber.received) >= 2, 10, "2 replayed deliveries")
    assert sorted(subscriber.ids()) == ["e-0", "e-1"]
    await wait_until(lambda: replay_keys_empty(plane, welcome), 5, "DLQ and retry keys empty")


async def test_a_replayed_event_awaiting_a_retry_does_not_hold_back_source_retention(
    plane: Plane, subscriber: Subscriber
) -> None:
    welcome, audit, other = await five_dead_letters(plane, subscriber, maxAge="1ms")
    try:
        subscriber.behaviour = answer(503)  # retryable: the replays wait for a retry
        retry = {"initialDelay": "1500ms", "jitter": 0}
        await plane.add_trigger("welcome", subscriber.url, wait=False, delivery={"retry": retry})
        await wait_until(lambda: plane.nothing_pending(audit), 5, "audit settled")
        await asyncio.sleep(1.2)  # the dispatcher's watcher has the new retry policy
        code, _, err = await replay(plane, "welcome", "--all")
        assert code == 0, err
        attempts = keys.attempts(plane.namespace, "src", "welcome")
        await wait_until(
            lambda: _equals(plane.redis.hlen(attempts), 5), 10, "all 5 awaiting a retry"
        )
        assert await plane.redis.zcard(keys.held(plane.namespace, "src", "welcome")) == 0
        source = (await table.load(plane.redis)).sources[f"{plane.namespace}/src"]
        await retention.trim(plane.redis, source, [welcome, audit])
        # All 5 gone, by this trim or by the dispatcher's own pass just before it.
        assert await plane.redis.xlen(plane.stream()) == 0
        subscriber.behaviour = answer(200)
        await wait_until(lambda: len(subscriber.received) >= 5, 10, "5 retried deliveries")
        assert sorted(subscriber.ids()) == [f"e-{i}" for i in range(5)]
        await wait_until(lambda: replay_keys_empty(plane, welcome), 5, "DLQ and retry keys empty")
    finally:
        await other.stop()


async def _equals(value: Any, expected: int) -> bool:
    return int(await value) == expected


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real 3-master Redis Cluster (hack/redis-cluster.sh)."""
    script = Path(__file__).resolve().parents[3] / "hack" / "redis-cluster.sh"
    env = {**os.environ, "TIDINGS_STATE_DIR": str(tmp_path_factory.mktemp("cluster"))}
    up = subprocess.run(
        ["bash", str(script), "up"], env=env, capture_output=True, text=True, timeout=60
    )
    assert up.returncode == 0, up.stderr
    yield up.stdout.strip().split("=", 1)[1]
    subprocess.run(["bash", str(script), "down"], env=env, capture_output=True, timeout=60)


async def test_replay_works_on_a_redis_cluster(cluster_url: str, subscriber: Subscriber) -> None:
    redis = RedisCluster.from_url(cluster_url)
    key = new_key()
    plane = Plane(redis, cluster_url, Sealer(key), key)  # type: ignore[arg-type]
    watcher = TableWatcher(redis, resync_interval=1.0)  # type: ignore[arg-type]
    await watcher.start()
    dispatcher = Dispatcher(
        redis,  # type: ignore[arg-type]
        watcher,
        sealer=plane.sealer,
        registry=CollectorRegistry(),
        destinations=LOCAL,
    )
    await dispatcher.start()
    try:
        subscriber.behaviour = answer(400)
        await plane.add_source()
        welcome = await plane.add_trigger("welcome", subscriber.url)
        await plane.publish(3)
        await dead_lettered(plane, welcome, 3)
        subscriber.behaviour = answer(200)
        code, out, err = await tidings(
            "replay",
            welcome.id,
            "--since",
            "1h",
            "--redis-cluster",
            "--redis-url",
            cluster_url,
        )
        assert code == 0 and out.strip() == f"replayed 3 dead letters of {welcome.id}", err
        await wait_until(lambda: len(subscriber.received) >= 3, 10, "3 replayed deliveries")
        assert sorted(subscriber.ids()) == ["e-0", "e-1", "e-2"]
        await wait_until(lambda: replay_keys_empty(plane, welcome), 5, "DLQ and retry keys empty")
    finally:
        await dispatcher.stop(grace=1.0)
        await watcher.stop()
        await plane.close()
        await redis.aclose()


async def test_dead_letters_are_selected_page_by_page_oldest_first_up_to_the_limit(
    plane: Plane, subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    welcome, _, other = await five_dead_letters(plane, subscriber)
    try:
        monkeypatch.setattr(replay_module, "PAGE", 2)
        everything = await deadletter.read(plane.redis, plane.namespace, "src", "welcome")
        sizes, seen = [], []
        async for page in replay_module.pages(plane.redis, welcome, limit=4):
            sizes.append(len(page))
            seen += [d.dlq_id for d in page]
            # Handing a page back while paging on must not skip or repeat any.
            await deadletter.hand_back(plane.redis, welcome, [d.dlq_id for d in page])
        assert sizes == [2, 2]
        assert seen == [d.dlq_id for d in everything[:4]]
        left = await deadletter.read(plane.redis, plane.namespace, "src", "welcome")
        assert [d.dlq_id for d in left] == [everything[4].dlq_id]
        await wait_until(lambda: len(subscriber.received) >= 4, 10, "4 replayed deliveries")
    finally:
        await other.stop()


async def test_a_dead_letter_that_comes_back_during_the_run_is_not_handed_back_twice(
    plane: Plane, subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    welcome, _, other = await five_dead_letters(plane, subscriber)
    try:
        monkeypatch.setattr(replay_module, "PAGE", 2)
        dlq = keys.dead_letters(plane.namespace, "src", "welcome")
        seen: list[str] = []
        async for page in replay_module.pages(plane.redis, welcome):
            seen += [d.dlq_id for d in page]
            await deadletter.hand_back(plane.redis, welcome, [d.dlq_id for d in page])
            # What a dispatcher does when a replayed event fails again: a new entry
            # at the end of the DLQ, while this run is still paging.
            await plane.redis.xadd(dlq, {"event": "{}", "streamId": "0-1", "trigger": "x"})
        assert len(seen) == 5  # the five that were there when the run began
        assert await plane.redis.xlen(dlq) == 3  # one new entry per page, left for later
    finally:
        await other.stop()
