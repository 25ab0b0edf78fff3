"""The reconcile loop every controller runs (one Kopf daemon per object).

A controller reconciles (compiles and publishes what the object wants) when
woken — by a watch event on the object or on anything it depends on
(tidings.operator.world.Wakeups), so a missing Service created later is
routed within a watch round trip — and on a slow, jittered resync, the
safety net for a Redis that lost its data. In between it observes: reads
what the data plane reports and writes status when that changed.

A Redis or API error ends the round; the next one comes after a doubling
delay (Settings.retry_after) and reconciles in full. The loop returns when
Kopf asks the daemon to stop (deletion, peering pause, exit), so the daemon
is stopped gracefully, not cancelled.
"""

from __future__ import annotations

import asyncio
import random
from typing import Protocol

from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]
from redis.exceptions import RedisError

from tidings.operator.context import ObjectLog, Settings
from tidings.operator.world import Key, Stopped, Wakeups, worth_reconciling

# Errors a later round may not meet again; anything else is a bug for Kopf to log.
RETRYABLE = (RedisError, OSError, ApiException)


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


async def keep_reconciling(
    controller: Controller, *, wakeups: Wakeups, settings: Settings, stopped: Stopped
) -> None:
    """Reconcile and observe `controller` until `stopped`."""
    clock = asyncio.get_running_loop().time
    subscription = wakeups.subscribe()
    subscription.follow({controller.key})
    fired: set[Key] = set()
    reconciled: int | None = None  # the generation last reconciled; None: reconcile now
    next_resync, failures = 0.0, 0
    try:
        while not stopped:
            try:
                generation = controller.generation()
                if (
                    reconciled is None
                    or clock() >= next_resync
                    or worth_reconciling(fired, controller.key, generation, reconciled)
                ):
                    # Follow first, then read: a change after the read still wakes us.
                    subscription.follow(controller.dependencies())
                    await controller.reconcile()
                    reconciled = generation
                    next_resync = clock() + settings.resync_interval * random.uniform(0.8, 1.2)
                look_again = await controller.observe()
                failures = 0
                delay = next_resync - clock()
                if look_again is not None:
                    delay = min(delay, look_again)
            except RETRYABLE as error:
                failures += 1
                reconciled, delay = None, settings.retry_after(failures)
                controller.log.warning("will retry in %.1fs: %s", delay, error)
            fired = await subscription.wait(max(0.0, delay), stopped)
    finally:
        subscription.close()
