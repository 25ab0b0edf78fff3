"""The reconcile loop every controller runs, on a shared work queue.

A controller reconciles (compiles and publishes what the object wants) when
woken — by a watch event on the object or on anything it depends on
(tidings.operator.world.Wakeups), so a missing Service created later is
routed within a watch round trip — and on a slow, jittered resync, the
safety net for a Redis that lost its data. In between it observes: reads
what the data plane reports and writes status when that changed.

A Redis or API error ends the round; the next one comes after a doubling
delay (Settings.retry_after) and reconciles in full.

Rounds run on a fixed pool of workers (`WorkQueue`), not on a task per
object: with 10,000 objects, one task each sleeping between rounds cost
memory, and stopping them all took longer than a pod's grace period.
EventSources and Replays: each object's Kopf daemon only puts its controller
on the queue and waits for Kopf to ask it to stop (deletion, peering pause,
exit) — returning at once, so Kopf never has to cancel it — and takes it off
again. Triggers have no daemon: their watch events put them on the queue
and take them off (tidings.operator.handlers).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]
from redis.exceptions import RedisError

from tidings.operator.context import CleanupPending, ObjectLog, Settings
from tidings.operator.pacing import TurnPending
from tidings.operator.world import Key, Stopped, Subscription, Wakeups, worth_reconciling

# Errors a later round may not meet again; anything else is a bug, logged with
# its traceback and retried like them.
RETRYABLE = (RedisError, OSError, ApiException, CleanupPending)
# Rounds in flight at once: as many as the shared Redis pool has connections
# (tidings.operator.main.REDIS_CONNECTIONS), so none waits long for one.
WORKERS = 32
# A controller waiting for its turn to write status is woken then
# (tidings.operator.pacing); it looks again after this at the latest (a safety
# net: a look is a full round, and a mass apply may hold 10,000 of them).
TURN_LOOK = 300.0
# A controller taken off the queue in the middle of a round (deletion, exit)
# waits this long for that round to end; a hung Redis call is left to its worker.
WITHDRAW_GRACE = 2.0

log = logging.getLogger(__name__)


class Controller(Protocol):
    """What the loop drives: one object's controller."""

    @property
    def key(self) -> Key: ...

    @property
    def log(self) -> ObjectLog: ...

    def generation(self) -> int:
        """The object's generation as last seen (Kopf's body is live)."""
        ...

    def dependencies(self) -> set[Key]:
        """The keys whose watch events should wake this controller."""
        ...

    async def reconcile(self) -> None:
        """Bring the world in line with the object (route, table entry, adapter)."""
        ...

    async def observe(self) -> float | None:
        """Read reports and write status if it changed; seconds until the next
        look, or None to wait for a wake-up or the resync."""
        ...

    def retired(self) -> None:
        """Taken off the queue: let go of what it holds (its status write's turn)."""
        ...


@dataclass(eq=False)
class _Slot:
    """One controller on the queue, and what the loop remembers between rounds."""

    controller: Controller
    subscription: Subscription
    reconciled: int | None = None  # the generation last reconciled; None: reconcile now
    next_resync: float = 0.0
    failures: int = 0
    due: float = 0.0  # loop time of the next round (when not queued or running)
    queued: bool = False
    running: bool = False
    hurried: bool = False  # asked to look again while its round was running
    removed: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # The round in flight of the controller this one replaced (a Trigger deleted
    # and created again): the first round waits for it, so it cannot land after.
    after: asyncio.Event | None = None


class WorkQueue:
    """Runs the rounds of every controller on `workers` tasks: a controller is
    due when woken, when its observe asked to look again, at its resync, or
    after a failure's backoff."""

    def __init__(self, *, wakeups: Wakeups, settings: Settings, workers: int = WORKERS) -> None:
        self._wakeups = wakeups
        self._settings = settings
        self._workers = workers
        self._slots: dict[Key, _Slot] = {}
        self._ready: deque[_Slot] = deque()
        self._has_ready = asyncio.Event()
        self._timers: list[tuple[float, int, _Slot]] = []  # (due, tiebreak, slot)
        self._timer_changed = asyncio.Event()
        self._order = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._halted: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    def __len__(self) -> int:
        return len(self._slots)

    async def drive(self, controller: Controller, stopped: Stopped) -> None:
        """A Kopf daemon's body: put `controller` on the queue until `stopped`, or
        until the queue halts (the operator is exiting: Kopf may still spawn a
        daemon after it stopped the others, and would wait 5 s for it)."""
        if self._closed:
            return
        self.add(controller)
        asked: asyncio.Future[object] = asyncio.ensure_future(stopped.wait())
        halted: asyncio.Future[object] = self._halted
        try:
            await asyncio.wait({asked, halted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            asked.cancel()
            await self.withdraw(controller.key)

    def controller(self, key: Key) -> Controller | None:
        """The controller of `key` on the queue, if any."""
        slot = self._slots.get(key)
        return slot.controller if slot is not None else None

    def controllers(self, kind: str) -> dict[Key, Controller]:
        """The controllers of `kind` on the queue, by key."""
        return {key: slot.controller for key, slot in self._slots.items() if key[0] == kind}

    def add(self, controller: Controller) -> None:
        """Put `controller` on the queue, due at once (replacing one of its key);
        nothing once the queue has halted."""
        if self._closed:
            return
        self._start()
        old = self._slots.pop(controller.key, None)
        slot = _Slot(controller, self._wakeups.subscribe())
        if old is not None:
            self._retire(old)
            slot.after = old.idle if old.running else None
        slot.subscription.on_fire = lambda: self._woken(slot)
        slot.subscription.follow({controller.key})
        slot.idle.set()
        self._slots[controller.key] = slot
        self._enqueue(slot)

    async def withdraw(self, key: Key, grace: float = WITHDRAW_GRACE) -> None:
        """Take the controller of `key` off the queue; wait (at most `grace`) for
        a round in flight to end."""
        await self.round_ended(self.drop(key), grace)

    def drop(self, key: Key) -> asyncio.Event | None:
        """Take the controller of `key` off the queue now; if a round of it is in
        flight, the event set when that round ends (see `round_ended`)."""
        slot = self._slots.pop(key, None)
        if slot is None:
            return None
        self._retire(slot)
        return slot.idle if slot.running else None

    @staticmethod
    async def round_ended(idle: asyncio.Event | None, grace: float = WITHDRAW_GRACE) -> None:
        """Wait (at most `grace`) for the round `drop` reported in flight."""
        if idle is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(idle.wait(), grace)

    def hurry(self, key: Key) -> None:
        """Run a round of `key`'s controller now (its observe reads what changed),
        or right after the one in flight; a key not on the queue, or whose last
        round failed (it waits for its retry), is ignored."""
        slot = self._slots.get(key)
        if slot is None or slot.failures:  # a failing one keeps its backoff
            return
        if slot.running:
            slot.hurried = True
        else:
            self._enqueue(slot)

    def reconcile_again(self, key: Key) -> None:
        """Make the next round of `key`'s controller reconcile in full (something
        it published was removed behind its back), and run it soon."""
        slot = self._slots.get(key)
        if slot is None:
            return
        slot.reconciled = None
        if slot.running:
            slot.hurried = True
        else:
            self._enqueue(slot)

    def drop_kind(self, kind: str) -> int:
        """Take every controller of `kind` off the queue at once (a round in
        flight ends on its own); how many were."""
        dropped = [key for key in self._slots if key[0] == kind]
        for key in dropped:
            self._retire(self._slots.pop(key))
        return len(dropped)

    def hurry_all(self, kind: str) -> None:
        """`hurry` every controller of `kind` (announcements may have been missed)."""
        for key in list(self._slots):
            if key[0] == kind:
                self.hurry(key)

    def halt(self) -> None:
        """Stop at once (the operator is exiting): cancel the rounds in flight, start
        no more, forget every controller — so each daemon returns without waiting."""
        self._closed = True
        if not self._halted.done():
            self._halted.set_result(None)
        for slot in list(self._slots.values()):
            self._retire(slot)
        self._slots.clear()
        for task in self._tasks:
            task.cancel()

    async def close(self) -> None:
        """`halt`, and wait until the workers have ended."""
        self.halt()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # --- scheduling ----------------------------------------------------------------------

    def _start(self) -> None:
        # Started from the first daemon, so the workers run in Kopf's context
        # (kopf.event finds its posting queue there).
        if self._tasks or self._closed:
            return
        self._tasks.append(asyncio.create_task(self._timer(), name="work queue timer"))
        for n in range(self._workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"work queue worker {n}"))

    def _retire(self, slot: _Slot) -> None:
        slot.removed = True
        slot.subscription.close()
        slot.controller.retired()

    def _woken(self, slot: _Slot) -> None:
        # While running, the round's end sees the fired keys and goes again at once.
        if not slot.running:
            self._enqueue(slot)

    def _enqueue(self, slot: _Slot) -> None:
        if slot.queued or slot.running or slot.removed:
            return
        slot.queued = True
        self._ready.append(slot)
        self._has_ready.set()

    def _schedule(self, slot: _Slot, delay: float) -> None:
        loop = asyncio.get_running_loop()
        slot.due = loop.time() + max(0.0, delay)
        if not self._timers or slot.due < self._timers[0][0]:
            self._timer_changed.set()
        heapq.heappush(self._timers, (slot.due, next(self._order), slot))

    async def _timer(self) -> None:
        """Moves controllers whose time has come to the ready queue."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._timers and self._timers[0][0] <= now:
                due, _, slot = heapq.heappop(self._timers)
                # An entry is stale if the slot was woken and rescheduled since.
                if due == slot.due and not slot.queued and not slot.running:
                    self._enqueue(slot)
            self._timer_changed.clear()
            wait = self._timers[0][0] - now if self._timers else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_changed.wait(), wait)

    async def _work(self) -> None:
        while True:
            while not self._ready:
                self._has_ready.clear()
                await self._has_ready.wait()
            slot = self._ready.popleft()
            slot.queued = False
            if slot.removed:
                continue
            slot.running = True
            slot.hurried = False
            slot.idle.clear()
            try:
                if slot.after is not None:
                    await self.round_ended(slot.after)
                    slot.after = None
                delay = await self._round(slot)
            finally:
                slot.running = False
                slot.idle.set()
            if slot.removed:
                continue
            if slot.subscription.pending() or slot.hurried:
                self._enqueue(slot)
            else:
                self._schedule(slot, delay)

    async def _round(self, slot: _Slot) -> float:
        """Reconcile if due, then observe; seconds until the next round."""
        controller = slot.controller
        clock = asyncio.get_running_loop().time
        fired = slot.subscription.take()
        try:
            generation = controller.generation()
            if (
                slot.reconciled is None
                or clock() >= slot.next_resync
                or worth_reconciling(fired, controller.key, generation, slot.reconciled)
            ):
                # Follow first, then read: a change after the read still wakes us.
                slot.subscription.follow(controller.dependencies())
                await controller.reconcile()
                slot.reconciled = generation
                slot.next_resync = clock() + self._settings.resync_interval * random.uniform(
                    0.8, 1.2
                )
            if slot.removed:
                return 0.0
            look_again = await controller.observe()
            slot.failures = 0
            delay = slot.next_resync - clock()
            if look_again is not None:
                delay = min(delay, look_again)
            return delay
        except TurnPending as pending:
            # Status to write, in its turn: woken then (a mass apply holds it).
            slot.failures = 0
            return min(pending.delay, TURN_LOOK)
        except RETRYABLE as error:
            return self._failed(slot, error)
        except Exception as error:  # a bug: keep its traceback, and the other controllers going
            controller.log.exception("reconcile failed")
            return self._failed(slot, error)

    def _failed(self, slot: _Slot, error: Exception) -> float:
        slot.failures += 1
        slot.reconciled = None
        delay = self._settings.retry_after(slot.failures)
        slot.controller.log.warning("will retry in %.1fs: %s", delay, error)
        return delay
