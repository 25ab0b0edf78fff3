"""Kopf's peering pause, for the controllers that are not Kopf daemons.

When a replica of higher priority is alive, Kopf pauses this one: it stops
its watches and its daemons (EventSources, Replays). Triggers have no daemon
(tidings.operator.handlers): their controllers sit on the work queue, and
must leave it too, or a paused replica would go on publishing routes from
bodies it no longer sees change.

Kopf keeps the pause in a private `ToggleSet` it hands only to its daemon
killer. `install()` wraps that task to follow the same set: `Pause.paused`
reads it, `on_pause` runs each time the replica pauses and `on_resume` each
time it resumes. It relies on
Kopf 1.45's private `daemons.daemon_killer(operator_paused=...)`; without it
(another Kopf version) `install()` returns None, and the operator refuses to
run with peering rather than run two active replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

from kopf._cogs.aiokits import aiotoggles
from kopf._core.engines import daemons

log = logging.getLogger(__name__)


class Pause:
    """Whether Kopf has paused this replica, and what to do when it does."""

    def __init__(
        self, on_pause: Callable[[], None], on_resume: Callable[[], None] = lambda: None
    ) -> None:
        self.on_pause, self.on_resume = on_pause, on_resume
        self._toggles: aiotoggles.ToggleSet | None = None

    @property
    def paused(self) -> bool:
        return self._toggles is not None and self._toggles.is_on()

    async def follow(self, toggles: aiotoggles.ToggleSet) -> None:
        """Run `on_pause` each time `toggles` turns on, `on_resume` each time it
        turns off again, until cancelled."""
        self._toggles = toggles
        while True:
            await toggles.wait_for(True)
            self.on_pause()
            await toggles.wait_for(False)
            self.on_resume()


_ORIGINAL = "_tidings_original"


def install(
    on_pause: Callable[[], None], on_resume: Callable[[], None] = lambda: None
) -> Pause | None:
    """Follow Kopf's pause from now on (the newest `install` wins); None if this
    Kopf has no daemon killer to follow it through."""
    current = daemons.daemon_killer
    original = getattr(current, _ORIGINAL, current)
    if "operator_paused" not in inspect.signature(original).parameters:
        log.warning("Kopf's daemon killer has changed: its peering pause cannot be followed")
        return None
    pause = Pause(on_pause, on_resume)

    async def daemon_killer(*, operator_paused: aiotoggles.ToggleSet, **kwargs: Any) -> None:
        follower = asyncio.create_task(pause.follow(operator_paused), name="peering pause")
        try:
            await original(operator_paused=operator_paused, **kwargs)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    setattr(daemon_killer, _ORIGINAL, original)
    daemons.daemon_killer = daemon_killer
    return pause
