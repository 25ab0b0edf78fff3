"""The reconcile loop on the work queue: woken at once by what an object depends on,
resynced slowly, backing off on errors, and returning as soon as Kopf asks it to stop;
a few workers drive many controllers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from redis.exceptions import ConnectionError as RedisConnectionError

from tidings.operator.adapters import AdapterSettings
from tidings.operator.context import ObjectLog, Settings
from tidings.operator.loop import WorkQueue
from tidings.operator.world import Key, Wakeups

OWN: Key = ("Trigger", "shop", "welcome")
SERVICE: Key = ("Service", "shop", "mailer")


class Flag:
    """Kopf's DaemonStopped as the loop sees it: truthy once set, awaitable."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


class Recorder:
    """A controller that records what the loop asks of it."""

    def __init__(
        self, *, look_again: float | None = None, failures: int = 0, key: Key = OWN
    ) -> None:
        self.key = key
        self.log = ObjectLog(logging.getLogger(__name__), *key)
        self.gen = 1
        self.look_again = look_again
        self.failures_left = failures
        self.reconciled: list[int] = []
        self.observed = 0
        self.retired_count = 0
        self.changed = asyncio.Event()

    def generation(self) -> int:
        return self.gen

    def dependencies(self) -> set[Key]:
        return {self.key, SERVICE}

    async def reconcile(self) -> None:
        if self.failures_left:
            self.failures_left -= 1
            self.changed.set()
            raise RedisConnectionError("Redis is down")
        self.reconciled.append(self.gen)
        self.changed.set()

    async def observe(self) -> float | None:
        self.observed += 1
        self.changed.set()
        return self.look_again

    def retired(self) -> None:
        self.retired_count += 1

    async def until(self, done: Callable[[], bool], within: float = 1.0) -> None:
        deadline = time.monotonic() + within
        while not done():
            self.changed.clear()
            left = deadline - time.monotonic()
            assert left > 0, "the loop did not get there in time"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


def settings(resync_interval: float) -> Settings:
    return Settings(
        adapters=AdapterSettings(image="tidings", redis_url="redis://"),
        resync_interval=resync_interval,
        retry_delay=0.01,
        retry_max=0.05,
    )


async def running(
    controller: Recorder, wakeups: Wakeups, stopped: Flag, resync_interval: float = 300.0
) -> asyncio.Task[None]:
    queue = WorkQueue(wakeups=wakeups, settings=settings(resync_interval), workers=2)
    task = asyncio.create_task(queue.drive(controller, stopped))
    await controller.until(lambda: controller.observed >= 1)
    return task


async def stop(task: asyncio.Task[None], stopped: Flag) -> None:
    stopped.set()
    await asyncio.wait_for(task, 0.5)


async def test_a_dependency_change_wakes_a_reconcile_at_once() -> None:
    wakeups, stopped, controller = Wakeups(), Flag(), Recorder()
    task = await running(controller, wakeups, stopped)
    assert controller.reconciled == [1]
    started = time.monotonic()
    wakeups.notify(SERVICE)
    await controller.until(lambda: len(controller.reconciled) == 2, within=0.1)
    assert time.monotonic() - started < 0.1
    await stop(task, stopped)


async def test_the_objects_own_event_reconciles_only_for_a_new_generation() -> None:
    wakeups, stopped, controller = Wakeups(), Flag(), Recorder()
    task = await running(controller, wakeups, stopped)
    wakeups.notify(OWN)  # e.g. our own status write coming back
    await controller.until(lambda: controller.observed == 2)
    assert controller.reconciled == [1]
    controller.gen = 2
    wakeups.notify(OWN)
    await controller.until(lambda: controller.reconciled == [1, 2])
    await stop(task, stopped)


async def test_observe_runs_again_when_the_controller_asks() -> None:
    wakeups, stopped, controller = Wakeups(), Flag(), Recorder(look_again=0.01)
    task = await running(controller, wakeups, stopped)
    await controller.until(lambda: controller.observed >= 4)
    assert controller.reconciled == [1]
    await stop(task, stopped)


async def test_the_resync_reconciles_without_any_event() -> None:
    wakeups, stopped, controller = Wakeups(), Flag(), Recorder()
    task = await running(controller, wakeups, stopped, resync_interval=0.02)
    await controller.until(lambda: len(controller.reconciled) >= 3)
    await stop(task, stopped)


async def test_errors_are_retried_after_a_backoff_with_a_full_reconcile() -> None:
    wakeups, stopped, controller = Wakeups(), Flag(), Recorder(failures=3)
    started = time.monotonic()
    task = await running(controller, wakeups, stopped)
    # 0.01, 0.02, 0.04 s (±20 %) between the attempts, then it goes through.
    assert controller.reconciled == [1] and controller.failures_left == 0
    assert time.monotonic() - started >= 0.8 * 0.07
    await stop(task, stopped)


async def test_the_loop_returns_when_asked_to_stop_and_unfollows_everything() -> None:
    wakeups, stopped, controller = Wakeups(), Flag(), Recorder()
    task = await running(controller, wakeups, stopped)
    assert len(wakeups) == 2  # its own key and the Service
    started = time.monotonic()
    await stop(task, stopped)
    assert time.monotonic() - started < 0.1
    assert len(wakeups) == 0


async def test_two_workers_drive_many_controllers_and_each_stops_alone() -> None:
    wakeups = Wakeups()
    queue = WorkQueue(wakeups=wakeups, settings=settings(300.0), workers=2)
    controllers = [Recorder(look_again=0.02, key=("Trigger", "shop", f"t{n}")) for n in range(50)]
    flags = [Flag() for _ in controllers]
    tasks = [
        asyncio.create_task(queue.drive(c, f)) for c, f in zip(controllers, flags, strict=True)
    ]
    for controller in controllers:
        await controller.until(lambda c=controller: c.observed >= 3)  # type: ignore[misc]
    assert all(c.reconciled == [1] for c in controllers)
    await stop(tasks[0], flags[0])
    assert len(queue) == 49
    seen = controllers[0].observed
    await controllers[1].until(lambda: controllers[1].observed >= 6)
    assert controllers[0].observed == seen  # off the queue: never driven again
    wakeups.notify(SERVICE)  # every remaining controller depends on it
    for controller in controllers[1:]:
        await controller.until(lambda c=controller: len(c.reconciled) == 2)  # type: ignore[misc]
    await queue.close()
    for task, flag in zip(tasks[1:], flags[1:], strict=True):
        await stop(task, flag)
    assert len(queue) == 0 and len(wakeups) == 0


async def test_a_hurried_controller_observes_at_once_and_a_failing_one_keeps_its_backoff() -> None:
    """News for a report (keys.REPORT_NEWS) hurries its Trigger's round: an observe
    now, not after the hour it asked for; one whose round failed waits its retry."""
    wakeups, stopped, controller = Wakeups(), Flag(), Recorder(look_again=3600.0)
    queue = WorkQueue(wakeups=wakeups, settings=settings(300.0), workers=2)
    task = asyncio.create_task(queue.drive(controller, stopped))
    await controller.until(lambda: controller.observed == 1)
    queue.hurry(OWN)
    await controller.until(lambda: controller.observed == 2, within=0.1)
    assert controller.reconciled == [1]  # an observe, not a reconcile
    queue.hurry_all("Trigger")
    await controller.until(lambda: controller.observed == 3, within=0.1)
    queue.hurry(("Trigger", "shop", "not-here"))  # not on the queue: ignored

    # A failing round retries after its backoff (0.01 s doubling to 0.05 s here);
    # news meanwhile does not run it early.
    controller.failures_left = 1000
    controller.gen = 2
    wakeups.notify(OWN)
    await controller.until(lambda: controller.failures_left <= 998)
    left = controller.failures_left
    for _ in range(20):
        queue.hurry(OWN)
    await asyncio.sleep(0.005)
    assert controller.failures_left >= left - 1
    await queue.close()
    await stop(task, stopped)


async def test_controllers_added_without_a_daemon_are_dropped_by_kind_and_redone_on_demand() -> (
    None
):
    """Triggers go on the queue from their watch events (no daemon): `drop`,
    `drop_kind` (a peering pause) and `reconcile_again` (a same-name
    predecessor's cleanup removed what was published) act on them directly."""
    wakeups = Wakeups()
    queue = WorkQueue(wakeups=wakeups, settings=settings(300.0), workers=2)
    triggers = [Recorder(key=("Trigger", "shop", f"t{n}")) for n in range(3)]
    source = Recorder(key=("EventSource", "shop", "users"))
    for controller in [*triggers, source]:
        queue.add(controller)
    for controller in [*triggers, source]:
        await controller.until(lambda c=controller: c.observed == 1)  # type: ignore[misc]
    assert queue.controller(triggers[0].key) is triggers[0]

    queue.reconcile_again(triggers[0].key)  # same generation, yet a full reconcile
    await triggers[0].until(lambda: triggers[0].reconciled == [1, 1])

    assert queue.drop(triggers[0].key) is None  # not in a round: nothing to wait for
    assert queue.controller(triggers[0].key) is None
    assert queue.drop_kind("Trigger") == 2
    assert len(queue) == 1 and queue.controller(source.key) is source
    # Each let go of what it held (its status write's turn).
    assert [t.retired_count for t in triggers] == [1, 1, 1] and source.retired_count == 0
    wakeups.notify(SERVICE)  # everyone depended on it; only the EventSource is left
    await source.until(lambda: len(source.reconciled) == 2)
    await asyncio.sleep(0.01)
    assert [len(t.reconciled) for t in triggers] == [2, 1, 1]

    await queue.close()
    queue.add(Recorder(key=("Trigger", "shop", "late")))  # after the halt: ignored
    assert len(queue) == 0


async def test_a_controller_replacing_one_in_a_round_starts_after_that_round() -> None:
    """A Trigger deleted and created again, the new one seen first: the old
    controller's round in flight must not publish (or write status) after the
    new one's first round."""
    queue = WorkQueue(wakeups=Wakeups(), settings=settings(300.0), workers=2)
    events: list[str] = []
    started, may_end = asyncio.Event(), asyncio.Event()

    class Slow(Recorder):
        async def reconcile(self) -> None:
            events.append("old round started")
            started.set()
            await may_end.wait()
            events.append("old round ended")

    class New(Recorder):
        async def reconcile(self) -> None:
            events.append("new round")
            await super().reconcile()

    old, new = Slow(), New()
    queue.add(old)
    await asyncio.wait_for(started.wait(), 1.0)
    queue.add(new)  # same key: replaces the old one while its round runs
    await asyncio.sleep(0.02)
    assert events == ["old round started"]  # the new one waits
    may_end.set()
    await new.until(lambda: new.reconciled == [1])
    assert events == ["old round started", "old round ended", "new round"]
    assert queue.controller(OWN) is new
    await queue.close()
