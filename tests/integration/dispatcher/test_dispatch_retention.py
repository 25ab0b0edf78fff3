"""Retention trims by maxEvents / maxAge, never under a delivery in progress, and
counts what falls out undelivered per Trigger: unread, scheduled for a retry,
parked behind its ordering key, or pending at a consumer whose lease ran out."""

from __future__ import annotations

import asyncio
import json

import pytest
from dispatch_harness import Plane, Subscriber, wait_until
from prometheus_client import CollectorRegistry

from tidings.api import keys, table
from tidings.api.events import CloudEvent
from tidings.api.text import text
from tidings.dispatcher import retention, streams
from tidings.dispatcher.cursor import Cursor, Op, Origin, Outcome


async def test_scheduled_retries_beyond_max_events_are_trimmed_and_counted(
    plane: Plane, subscriber: Subscriber
) -> None:
    """Retention wins over a retry that is not under way (DESIGN.md, guarantee 5):
    the backlog is bounded by maxEvents, and what it takes is counted, once."""
    subscriber.behaviour = lambda request: (503, {}, 0.0)
    source = await plane.add_source(maxEvents=50)
    await plane.dispatcher()
    route = await plane.add_trigger(
        "failing",
        subscriber.url,
        delivery={
            "retry": {"initialDelay": "1h", "jitter": 0},
            "backoff": {"minAttempts": 10**6},  # every event gets its first attempt
        },
    )
    await plane.publish(200)
    ns, src, name = route.namespace, route.source, route.name
    retries, held = keys.retries(ns, src, name), keys.held(ns, src, name)

    async def all_scheduled() -> bool:
        return int(await plane.redis.zcard(retries)) == 200

    await wait_until(all_scheduled, 20, "200 retries scheduled")
    await wait_until(lambda: plane.nothing_pending(route), 10, "all settled")
    routes = (await table.load(plane.redis)).routes_of(plane.namespace, "src")
    result = await retention.trim(plane.redis, source, routes)
    assert (result.trimmed, result.lost) == (150, {route.id: 150})
    assert await plane.redis.xlen(plane.stream()) == 50
    assert (await plane.state(route))[keys.STATE_EXPIRED] == "150"
    # The bookkeeping of what went goes with it; the newest 50 keep their retries.
    assert await plane.redis.zcard(retries) == 50
    assert await plane.redis.zcard(held) == 50
    assert await plane.redis.hlen(keys.attempts(ns, src, name)) == 50
    for stream_id in await plane.redis.zrange(retries, 0, -1):
        assert await plane.redis.xrange(plane.stream(), stream_id, stream_id)
    again = await retention.trim(plane.redis, source, routes)
    assert (again.trimmed, again.lost) == (0, {})
    assert (await plane.state(route))[keys.STATE_EXPIRED] == "150"


async def test_entries_leased_now_are_kept_and_a_lease_run_out_is_not(
    plane: Plane, subscriber: Subscriber
) -> None:
    """In flight (a live lease, a retry's too) pins the trim point; a consumer whose
    lease ran out (dead, or stuck past timeout + margin) pins nothing, and its late
    outcomes neither bring the events back nor count them again."""
    source = await plane.add_source(maxEvents=1)
    route = await plane.add_trigger("t", subscriber.url, wait=False)
    await plane.redis.xgroup_create(route.stream, route.group, id="0", mkstream=True)
    await plane.publish(10)
    stuck, alive = Cursor(plane.redis, route, "stuck"), Cursor(plane.redis, route, "alive")
    late = (await stuck.fetch(4, 100)).entries  # e-0..e-3, leased 100 ms
    assert [e.id for e in late] == (await _stream_ids(plane))[:4]
    fresh = (await alive.fetch(6, 60_000)).entries  # e-4..e-9, leased a minute
    # e-4 failed and is retried at once: a retry under way, leased here.
    await alive.settle([Outcome(Op.RETRY, fresh[0], delay_ms=0, attempts=1)])
    retried = (await alive.fetch(1, 60_000)).entries
    assert [(e.id, e.origin) for e in retried] == [(fresh[0].id, Origin.RETRY)]
    await asyncio.sleep(0.3)  # the stuck consumer's leases run out

    routes = [route]
    result = await retention.trim(plane.redis, source, routes)
    assert (result.trimmed, result.lost) == (4, {route.id: 4})
    assert await _stream_ids(plane) == [e.id for e in fresh]  # from the retry under way on
    pending = await plane.redis.xpending(route.stream, route.group)
    assert int(pending["pending"]) == 5  # e-5..e-9; the stuck ones were let go

    # The stuck consumer wakes up and settles: nothing is retried, dead-lettered
    # or counted again for events retention took.
    await stuck.settle(
        [
            Outcome(Op.RETRY, late[0], delay_ms=0, attempts=1),
            Outcome(Op.DEAD, late[1], attempts=1, message="refused"),
            Outcome(Op.OK, late[2]),
        ]
    )
    ns, src, name = route.namespace, route.source, route.name
    assert await plane.redis.zscore(keys.retries(ns, src, name), late[0].id) is None
    assert await plane.redis.zscore(keys.held(ns, src, name), late[0].id) is None
    assert await plane.redis.xlen(keys.dead_letters(ns, src, name)) == 0
    state = await plane.state(route)
    assert state[keys.STATE_EXPIRED] == "4"
    assert keys.STATE_DEAD_LETTERED not in state
    # Nothing of them is reclaimed either.
    reclaimed = await Cursor(plane.redis, route, "other").fetch(10, 60_000, 50)
    assert [e.id for e in reclaimed.entries if e.id in {x.id for x in late}] == []


async def test_a_trigger_in_backoff_is_held_at_max_events_and_delivers_what_is_left(
    plane: Plane, subscriber: Subscriber
) -> None:
    """The outage case: retries scheduled before Backoff plus the backlog behind them
    go past maxEvents; a retention pass brings the stream back to it and counts
    every event taken exactly; after the subscriber returns the Trigger delivers
    the survivors, and nothing expired, nothing twice."""
    subscriber.behaviour = lambda request: (503, {}, 0.0)
    source = await plane.add_source(maxEvents=50)
    # (No retention pass of its own: the test runs the one it looks at.)
    first = await plane.dispatcher(retention_interval=3600.0)
    retry = {"maxAttempts": 12, "initialDelay": "500ms", "maxDelay": "1s", "jitter": 0}
    route = await plane.add_trigger("t", subscriber.url, delivery={"retry": retry})
    ns, src, name = route.namespace, route.source, route.name
    await plane.publish(100, prefix="before")
    await wait_until(lambda: state_is(plane, route, "Backoff"), 20, "Backoff entered")
    await plane.publish(200, prefix="during")
    # Stopped, so no probe is under way while the trim looks.
    await first.stop(grace=5.0)
    plane.dispatchers.remove(first)
    held = int(await plane.redis.zcard(keys.held(ns, src, name)))
    assert held > 0, "retries were scheduled before Backoff"
    assert await plane.redis.xlen(plane.stream()) == 300

    routes = (await table.load(plane.redis)).routes_of(plane.namespace, "src")
    result = await retention.trim(plane.redis, source, routes)
    assert (result.trimmed, result.lost) == (250, {route.id: 250})
    assert await plane.redis.xlen(plane.stream()) == 50
    assert (await plane.state(route))[keys.STATE_EXPIRED] == "250"

    subscriber.behaviour = lambda request: (200, {}, 0.0)
    before = len(subscriber.attempts)
    registry = CollectorRegistry()
    await plane.dispatcher(registry=registry, retention_interval=3600.0)
    survivors = {f"during-{i}" for i in range(150, 200)}
    delivered = lambda: {a.id for a in subscriber.attempts[before:]}  # noqa: E731
    await wait_until(lambda: delivered() >= survivors, 30, "the 50 survivors delivered")
    await wait_until(lambda: plane.nothing_pending(route), 10, "all settled")
    await asyncio.sleep(0.5)
    assert delivered() == survivors  # nothing that expired
    assert len(subscriber.attempts) - before == 50  # each once

    def expired_metric() -> float:
        return registry.get_sample_value("tidings_trigger_expired", {"trigger": route.id}) or 0

    await wait_until(lambda: expired_metric() == 250, 30, "the expired metric at 250")
    state = await plane.state(route)
    assert state[keys.STATE_EXPIRED] == "250"
    assert state[keys.STATE_STATE] == "Delivering"
    assert keys.STATE_DEAD_LETTERED not in state
    assert await plane.redis.zcard(keys.retries(ns, src, name)) == 0
    assert await plane.redis.zcard(keys.held(ns, src, name)) == 0
    assert await plane.redis.hlen(keys.attempts(ns, src, name)) == 0


async def test_an_ordered_key_whose_head_retry_expired_moves_on(
    plane: Plane, subscriber: Subscriber
) -> None:
    source = await plane.add_source(maxEvents=5)
    ordered = {"ordering": {"key": "event.subject"}}
    route = await plane.add_trigger("t", subscriber.url, wait=False, delivery=ordered)
    await plane.redis.xgroup_create(route.stream, route.group, id="0", mkstream=True)
    await plane.publish(10, subject="k")
    cursor = Cursor(plane.redis, route, "a")
    head = (await cursor.fetch(10, 60_000)).entries
    assert [e.order_key for e in head] == ["kk"]  # e-1..e-9 parked behind e-0
    await cursor.settle([Outcome(Op.RETRY, head[0], delay_ms=3_600_000, attempts=1)])

    result = await retention.trim(plane.redis, source, [route])
    # e-0 (its head, retrying in an hour) and e-1..e-4 (parked) went, counted.
    assert (result.trimmed, result.lost) == (5, {route.id: 5})
    ns, src, name = route.namespace, route.source, route.name
    assert await plane.redis.zcard(keys.parked(ns, src, name)) == 4  # e-6..e-9

    # The key passed to e-5, due now; the rest follow in order.
    order = []
    entries = (await cursor.fetch(10, 60_000)).entries
    while entries:
        [entry] = entries
        order.append(json.loads(entry.event_json)["id"])
        settled = await cursor.settle([Outcome(Op.OK, entry)], hand_on=10, lease_ms=60_000)
        entries = settled.started
    assert order == [f"e-{i}" for i in range(5, 10)]
    assert await plane.redis.hlen(keys.ordering(ns, src, name)) == 0
    assert await plane.redis.zcard(keys.parked(ns, src, name)) == 0
    assert await plane.redis.zcard(keys.retries(ns, src, name)) == 0
    assert (await plane.state(route))[keys.STATE_EXPIRED] == "5"


async def _stream_ids(plane: Plane) -> list[str]:
    return [text(stream_id) for stream_id, _ in await plane.redis.xrange(plane.stream())]


async def test_unread_events_beyond_max_events_are_trimmed_and_counted(
    plane: Plane, subscriber: Subscriber
) -> None:
    source = await plane.add_source(maxEvents=50)
    await plane.dispatcher()
    route = await plane.add_trigger("paused", subscriber.url, paused=True)
    await plane.publish(200)
    routes = (await table.load(plane.redis)).routes_of(plane.namespace, "src")
    result = await retention.trim(plane.redis, source, routes)
    trimmed, expired = result.trimmed, result.lost
    assert trimmed == 150
    assert expired == {route.id: 150}
    assert await plane.redis.xlen(plane.stream()) == 50
    assert (await plane.state(route))[keys.STATE_EXPIRED] == "150"
    # Once resumed, the Trigger gets what is left: the newest 50.
    await plane.add_trigger("paused", subscriber.url, paused=False, wait=False)
    await wait_until(lambda: len(subscriber.received) >= 50, 10, "50 deliveries")
    assert sorted(subscriber.ids()) == sorted(f"e-{i}" for i in range(150, 200))


async def test_a_source_far_over_max_events_is_trimmed_to_it_in_one_pass(
    plane: Plane, subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One script call trims TRIM_STEP entries; a pass goes on until the stream is
    # back at maxEvents, so a source ingesting more than TRIM_STEP per retention
    # interval does not grow without bound.
    monkeypatch.setattr(retention, "TRIM_STEP", 20)
    source = await plane.add_source(maxEvents=50)
    await plane.dispatcher()
    route = await plane.add_trigger("paused", subscriber.url, paused=True)
    await plane.publish(200)
    routes = (await table.load(plane.redis)).routes_of(plane.namespace, "src")
    result = await retention.trim(plane.redis, source, routes)
    assert (result.trimmed, result.lost) == (150, {route.id: 150})
    assert await plane.redis.xlen(plane.stream()) == 50
    assert (await plane.state(route))[keys.STATE_EXPIRED] == "150"


async def test_every_unread_event_past_max_age_is_counted_as_expired(
    plane: Plane, subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    # maxAge may put the cut far more than TRIM_STEP entries in (a backlog older
    # than maxAge): each call still trims at most TRIM_STEP, so every lost event
    # is counted, none silently.
    monkeypatch.setattr(retention, "TRIM_STEP", 20)
    source = await plane.add_source(maxAge="1ms")
    await plane.dispatcher()
    route = await plane.add_trigger("paused", subscriber.url, paused=True)
    await plane.publish(200)
    await asyncio.sleep(0.01)
    routes = (await table.load(plane.redis)).routes_of(plane.namespace, "src")
    result = await retention.trim(plane.redis, source, routes)
    assert (result.trimmed, result.lost) == (200, {route.id: 200})
    assert await plane.redis.xlen(plane.stream()) == 0
    assert (await plane.state(route))[keys.STATE_EXPIRED] == "200"


async def test_delivered_events_past_max_age_are_trimmed_without_counting(
    plane: Plane, subscriber: Subscriber
) -> None:
    source = await plane.add_source(maxAge="1ms")
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url)
    await plane.publish(30)
    await wait_until(lambda: len(subscriber.received) >= 30, 10, "30 deliveries")

    async def nothing_pending() -> bool:
        return int((await plane.redis.xpending(route.stream, route.group))["pending"]) == 0

    await wait_until(nothing_pending, 5, "all acknowledged")
    routes = (await table.load(plane.redis)).routes_of(plane.namespace, "src")
    result = await retention.trim(plane.redis, source, routes)
    trimmed, expired = result.trimmed, result.lost
    assert trimmed == 30 and expired == {}


async def test_the_event_id_index_is_trimmed_with_the_stream(
    plane: Plane, subscriber: Subscriber
) -> None:
    source = await plane.add_source(maxEvents=10)
    for batch in range(3):  # as ingest stores them (indexed), in three milliseconds
        events = [CloudEvent(f"i-{n}", "/t", "t") for n in range(batch * 10, batch * 10 + 10)]
        await streams.append(plane.redis, source, events)
        await asyncio.sleep(0.005)
    index = keys.event_index(plane.namespace, "src")
    assert await plane.redis.zcard(index) == 30
    trimmed = (await retention.trim(plane.redis, source, [])).trimmed
    assert trimmed == 20 and await plane.redis.xlen(plane.stream()) == 10
    # What the stream no longer holds cannot be found by id; the rest still can. (The
    # index is cut by millisecond: ids that shared the cut's ms would stay, and
    # `tidings trace` then finds no entry and says so.)
    kept = [text(i) for i in await plane.redis.zrange(index, 0, -1)]
    assert sorted(kept) == sorted(f"i-{n}" for n in range(20, 30))


async def test_entries_being_delivered_are_not_trimmed(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = lambda request: (200, {}, 1.5)
    source = await plane.add_source(maxEvents=1, maxAge="1ms")
    await plane.dispatcher()
    route = await plane.add_trigger("slow", subscriber.url)
    await plane.publish(20)

    async def all_pending() -> bool:
        return int((await plane.redis.xpending(route.stream, route.group))["pending"]) == 20

    await wait_until(all_pending, 5, "20 deliveries in flight")
    routes = (await table.load(plane.redis)).routes_of(plane.namespace, "src")
    result = await retention.trim(plane.redis, source, routes)
    assert (result.trimmed, result.lost) == (0, {})
    await wait_until(lambda: len(subscriber.received) >= 20, 10, "20 deliveries")


async def test_a_trim_says_when_its_source_next_has_something_to_trim_by_age(
    plane: Plane, subscriber: Subscriber
) -> None:
    source = await plane.add_source(maxAge="1h")
    route = await plane.add_trigger("t", subscriber.url, wait=False)
    empty = await retention.trim(plane.redis, source, [route])
    assert (empty.trimmed, empty.next_due_ms) == (0, 0)
    await plane.publish(3)
    (first_id, _), *_ = await plane.redis.xrange(plane.stream(), count=1)
    first_ms = int(text(first_id).split("-")[0])
    kept = await retention.trim(plane.redis, source, [route])
    assert (kept.trimmed, kept.next_due_ms) == (0, first_ms + 3_600_000)
    dlq = keys.dead_letters(plane.namespace, "src", "t")
    assert (await retention.trim_dead_letters(plane.redis, [route])).next_due_ms == 0
    await plane.redis.xadd(dlq, {"event": "{}"}, id=f"{first_ms}-0")
    dead = await retention.trim_dead_letters(plane.redis, [route])
    assert dead.next_due_ms == first_ms + int(route.delivery.dead_letter_max_age * 1000)
    assert retention.next_due_ms(kept, dead) == first_ms + 3_600_000


async def test_an_idle_source_is_trimmed_when_its_oldest_entry_comes_of_age(
    plane: Plane, subscriber: Subscriber
) -> None:
    """No Trigger fetches anything after the first events, yet the dispatcher's
    retention pass comes back when they reach maxAge (retention.Trimmed.next_due_ms)."""
    await plane.add_source(maxAge="3s")
    await plane.dispatcher(retention_interval=0.2)
    route = await plane.add_trigger("t", subscriber.url)
    await plane.publish(5)
    await wait_until(lambda: len(subscriber.received) >= 5, 10, "5 deliveries")
    await wait_until(lambda: plane.nothing_pending(route), 10, "all settled")

    async def trimmed() -> bool:
        return int(await plane.redis.xlen(plane.stream())) == 0

    await wait_until(trimmed, 10, "the delivered events trimmed once 3 s old")


async def test_a_source_whose_trigger_is_not_at_rest_is_held_at_max_events(
    plane: Plane, subscriber: Subscriber
) -> None:
    """Nothing is fetched for a paused (or lagging) Trigger, yet its source keeps
    being trimmed every retention interval, not only when its oldest entry ages."""
    await plane.add_source(maxEvents=50)
    dispatcher = await plane.dispatcher(retention_interval=0.2)
    route = await plane.add_trigger("paused", subscriber.url, paused=True)

    async def published() -> bool:
        worker = dispatcher.workers.get(route.id)
        return worker is not None and worker.published is not None

    await wait_until(published, 10, "the paused Trigger's state published")
    await asyncio.sleep(1.0)  # retention passes ran over the empty stream
    await plane.publish(200)

    async def held() -> bool:
        return int(await plane.redis.xlen(plane.stream())) == 50

    await wait_until(held, 10, "the dispatcher's retention pass held the stream at 50")
    assert subscriber.received == []


async def state_is(plane: Plane, route: object, state: str) -> bool:
    return (await plane.state(route)).get(keys.STATE_STATE) == state  # type: ignore[arg-type]


async def test_delayed_events_pin_retention_only_until_they_are_due(
    plane: Plane, subscriber: Subscriber
) -> None:
    """A delayed event before its first attempt holds the trim point while it is not
    due; once due it waits only for a fetch, which a paused Trigger (or one in
    Backoff) does not make, so beyond the bound it expires, counted once."""
    source = await plane.add_source(maxEvents=5)
    route = await plane.add_trigger("t", subscriber.url, wait=False, delivery={"delay": "1s"})
    await plane.redis.xgroup_create(route.stream, route.group, id="0", mkstream=True)
    await plane.publish(10)
    cursor = Cursor(plane.redis, route, "a")
    assert (await cursor.fetch(10, 60_000)).entries == []  # all 10 set aside, due in 1 s
    ns, src, name = route.namespace, route.source, route.name
    assert await plane.redis.zcard(keys.delayed_held(ns, src, name)) == 10

    pinned = await retention.trim(plane.redis, source, [route])
    assert (pinned.trimmed, pinned.lost) == (0, {})
    await asyncio.sleep(1.2)  # due now, and nothing fetches them
    result = await retention.trim(plane.redis, source, [route])
    assert (result.trimmed, result.lost) == (5, {route.id: 5})
    assert await plane.redis.xlen(plane.stream()) == 5
    again = await retention.trim(plane.redis, source, [route])
    assert (again.trimmed, again.lost) == (0, {})
    assert (await plane.state(route))[keys.STATE_EXPIRED] == "5"
    # What went took its bookkeeping along; the newest 5 come out as due retries.
    for key in (keys.delayed_held, keys.delayed, keys.retries):
        assert await plane.redis.zcard(key(ns, src, name)) == 5
    kept = await _stream_ids(plane)
    fetched = (await cursor.fetch(10, 60_000)).entries
    assert [(e.id, e.origin) for e in fetched] == [(i, Origin.RETRY) for i in kept]


async def test_delayed_events_held_as_before_the_upgrade_move_to_their_own_hold(
    plane: Plane, subscriber: Subscriber
) -> None:
    """Before :delayed-held a delayed event waited in :held, where the trim would
    take it before its first attempt and leave it in :delayed: once due, a leftover
    never fetched and reported as the oldest undelivered forever. The trim moves
    such ids to :delayed-held (once), so they pin while not due and expire cleanly
    once due."""
    source = await plane.add_source(maxEvents=5)
    route = await plane.add_trigger("t", subscriber.url, wait=False, delivery={"delay": "1s"})
    await plane.redis.xgroup_create(route.stream, route.group, id="0", mkstream=True)
    await plane.publish(10)
    cursor = Cursor(plane.redis, route, "a")
    assert (await cursor.fetch(10, 60_000)).entries == []
    ns, src, name = route.namespace, route.source, route.name
    held, delayed_held = keys.held(ns, src, name), keys.delayed_held(ns, src, name)
    # As an older dispatcher left them: in :held, not :delayed-held.
    for member, score in await plane.redis.zrange(delayed_held, 0, -1, withscores=True):
        await plane.redis.zadd(held, {member: score})
    await plane.redis.delete(delayed_held)

    pinned = await retention.trim(plane.redis, source, [route])
    assert (pinned.trimmed, pinned.lost) == (0, {})
    # Those under the trim point moved (the rest move when they get there).
    moved = {text(i) for i in await plane.redis.zrange(delayed_held, 0, -1)}
    assert moved >= set((await _stream_ids(plane))[:5])
    assert len(moved) + await plane.redis.zcard(held) == 10
    again = await retention.trim(plane.redis, source, [route])
    assert (again.trimmed, again.lost) == (0, {})  # moved once, nothing else to do

    await asyncio.sleep(1.2)  # due, and nothing fetches them
    result = await retention.trim(plane.redis, source, [route])
    assert (result.trimmed, result.lost) == (5, {route.id: 5})
    kept = await _stream_ids(plane)
    delayed = keys.delayed(ns, src, name)
    assert sorted(text(i) for i in await plane.redis.zrange(delayed, 0, -1)) == sorted(kept)
    fetched = (await cursor.fetch(10, 60_000)).entries
    assert sorted(e.id for e in fetched) == sorted(kept)
    assert await plane.redis.zcard(delayed) == 0
    assert (await plane.state(route))[keys.STATE_EXPIRED] == "5"


async def test_a_withdrawn_trigger_loses_entries_counted_and_its_key_passes_on(
    plane: Plane, subscriber: Subscriber
) -> None:
    """A Trigger withdrawn from the routing table (not Ready) keeps its cursor. What
    retention takes of it meanwhile is counted expired, once, and an ordering key a
    trimmed entry held passes on, so when it comes back the events behind the key
    are delivered, in order."""
    subscriber.behaviour = lambda request: (503, {}, 0.0)
    await plane.add_source(maxEvents=20)
    dispatcher = await plane.dispatcher(retention_interval=0.2)
    spec: dict[str, object] = {
        "ordering": {"key": "event.subject"},
        "retry": {"initialDelay": "1h", "jitter": 0},
    }
    route = await plane.add_trigger("t", subscriber.url, delivery=spec)
    await plane.publish(10, prefix="a", subject="k")
    ns, src, name = route.namespace, route.source, route.name

    async def queued() -> bool:  # a-0 holds the key, retrying in an hour; the rest parked
        return int(await plane.redis.zcard(keys.parked(ns, src, name))) == 9

    await wait_until(queued, 10, "a-0 retrying, a-1..a-9 parked")
    await table.delete_route(plane.redis, ns, name)
    await wait_until(lambda: route.id not in dispatcher.workers, 10, "the Trigger withdrawn")

    await plane.publish(15, prefix="b", subject="k")  # 25 > maxEvents: a-0..a-4 go

    async def expired() -> bool:
        return (await plane.state(route)).get(keys.STATE_EXPIRED) == "5"

    await wait_until(expired, 10, "a-0..a-4 counted expired")
    assert await plane.redis.xlen(plane.stream()) == 20

    subscriber.behaviour = lambda request: (200, {}, 0.0)
    await plane.add_trigger("t", subscriber.url, delivery=spec)
    survivors = [f"a-{i}" for i in range(5, 10)] + [f"b-{i}" for i in range(15)]
    await wait_until(lambda: len(subscriber.received) >= 20, 20, "the 20 survivors delivered")
    await asyncio.sleep(0.5)
    assert subscriber.ids() == survivors  # in order, each once
    state = await plane.state(route)
    assert state[keys.STATE_EXPIRED] == "5"
    assert keys.STATE_DEAD_LETTERED not in state
    assert await plane.redis.hlen(keys.ordering(ns, src, name)) == 0
    assert await plane.redis.zcard(keys.parked(ns, src, name)) == 0


async def test_unread_events_of_a_trigger_not_routed_are_counted(
    plane: Plane, subscriber: Subscriber
) -> None:
    """The trim covers every consumer group of the stream, not only the routed
    Triggers it is given."""
    source = await plane.add_source(maxEvents=5)
    route = await plane.add_trigger("gone", subscriber.url, wait=False)
    await plane.redis.xgroup_create(route.stream, route.group, id="0", mkstream=True)
    await table.delete_route(plane.redis, route.namespace, route.name)
    await plane.publish(12)
    result = await retention.trim(plane.redis, source, [])
    assert (result.trimmed, result.lost) == (7, {route.id: 7})
    assert (await plane.state(route))[keys.STATE_EXPIRED] == "7"
