"""Kopf's start-up barrier without the thundering herd.

At start-up Kopf holds every object's handlers until all indexes are filled:
each listed object gets a toggle in one `ToggleSet`, and its worker drops the
toggle, then waits for the whole set. Every drop wakes every worker already
waiting (`asyncio.Condition.notify_all`), and each wakes only to find the set
still not ready: O(N²) wake-ups, about a quarter of the operator's CPU through
a restart at 10,000 Triggers (py-spy, docs/benchmarks.md).

`install()` makes a `ToggleSet` wake its waiters when adding or dropping a
toggle changes the set's state, the only thing they wait for. A toggle's own
`turn_to` (peering pauses) still wakes them as before. The patch relies on two
private attributes of Kopf's class; without them (another Kopf version) it
leaves Kopf as it is and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kopf._cogs.aiokits import aiotoggles

log = logging.getLogger(__name__)

_PATCHED = "_tidings_wakes_on_change"


async def _make_toggle(
    self: aiotoggles.ToggleSet, __val: bool = False, *, name: str | None = None
) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggle(self: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
    await _drop_toggles(self, (toggle,))


async def _drop_toggles(self: aiotoggles.ToggleSet, toggles: Iterable[aiotoggles.Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        _shrink(self)
        if self.is_on() != before:
            self._condition.notify_all()


def _shrink(toggle_set: aiotoggles.ToggleSet) -> None:
    # A set never shrinks its table: emptied after 10,000 toggles it keeps 65,536
    # slots, and every later is_on() (each worker, each event) scans them all.
    if not toggle_set._toggles:
        toggle_set._toggles = set()


def install() -> bool:
    """Patch Kopf's `ToggleSet` (idempotent); False if this Kopf lacks what it needs."""
    toggle_set = aiotoggles.ToggleSet
    if getattr(toggle_set, _PATCHED, False):
        return True
    probe = toggle_set(all)
    if not (hasattr(probe, "_condition") and isinstance(getattr(probe, "_toggles", None), set)):
        log.warning(
            "Kopf's ToggleSet has changed: its start-up barrier keeps waking every waiting "
            "worker on each change (slow restarts with many objects)"
        )
        return False
    setattr(toggle_set, "make_toggle", _make_toggle)  # noqa: B010 (mypy: no method assignment)
    setattr(toggle_set, "drop_toggle", _drop_toggle)  # noqa: B010
    setattr(toggle_set, "drop_toggles", _drop_toggles)  # noqa: B010
    setattr(toggle_set, _PATCHED, True)
    return True
