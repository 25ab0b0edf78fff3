"""Kopf's start-up barrier (a ToggleSet all workers wait on) wakes them once."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable

from kopf._cogs.aiokits import aiotoggles

from tidings.operator import kopf_toggles


class CountingAll:
    """`all`, counting how often the set's state is computed (once per wake-up)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, states: Iterable[bool]) -> bool:
        self.calls += 1
        return all(states)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_dropping_toggles_wakes_the_waiters_only_when_the_set_is_ready() -> None:
    assert kopf_toggles.install()
    state = CountingAll()
    barrier = aiotoggles.ToggleSet(state)
    toggles = [await barrier.make_toggle(name=f"object {n}") for n in range(200)]
    waiters = [asyncio.create_task(barrier.wait_for(True)) for _ in range(200)]
    await settle()
    state.calls = 0

    for toggle in toggles[:-1]:
        await barrier.drop_toggle(toggle)
        await settle()
    # Two computations a drop; Kopf's own class woke all 200 waiters each time
    # (39,800 computations measured).
    assert state.calls <= 2 * 199
    assert not any(waiter.done() for waiter in waiters)

    await barrier.drop_toggle(toggles[-1])
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert barrier.is_on()


async def test_a_toggle_turned_on_still_wakes_the_waiters() -> None:
    # Peering pauses turn toggles of an `any` set on and off.
    assert kopf_toggles.install()
    paused = aiotoggles.ToggleSet(any)
    peer = await paused.make_toggle(name="peer")
    resumed = asyncio.create_task(paused.wait_for(False))
    pausing = asyncio.create_task(paused.wait_for(True))
    await settle()
    assert resumed.done() and not pausing.done()
    await peer.turn_to(True)
    await asyncio.wait_for(pausing, 5)
    await paused.drop_toggles([peer])
    await asyncio.wait_for(paused.wait_for(False), 5)


async def test_an_emptied_set_is_as_cheap_to_ask_as_a_new_one() -> None:
    # Every worker started before readiness asks the set again on each event.
    assert kopf_toggles.install()
    barrier = aiotoggles.ToggleSet(all)
    toggles = [await barrier.make_toggle(name=f"object {n}") for n in range(10_000)]
    for toggle in toggles:  # as Kopf's workers do, one by one
        await barrier.drop_toggle(toggle)
    assert barrier.is_on() and len(barrier) == 0
    assert sys.getsizeof(barrier._toggles) == sys.getsizeof(set())


async def test_install_is_idempotent() -> None:
    assert kopf_toggles.install()
    patched = aiotoggles.ToggleSet.drop_toggle
    assert kopf_toggles.install()
    assert aiotoggles.ToggleSet.drop_toggle is patched
