"""Kopf's peering pause, followed for the controllers that are not Kopf daemons
(Triggers): the real Kopf daemon killer runs with the pause set Kopf would
hand it, and a peer's toggle turning on pauses us."""

from __future__ import annotations

import asyncio

import kopf
import pytest
from kopf._cogs.aiokits import aiotoggles
from kopf._core.engines import daemons
from kopf._core.reactor import inventory

from tidings.operator import kopf_pause


async def test_the_pause_is_followed_through_kopfs_daemon_killer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(daemons, "daemon_killer", daemons.daemon_killer)  # restored after
    pauses: list[str] = []
    assert kopf_pause.install(lambda: None) is not None
    pause = kopf_pause.install(lambda: pauses.append("pause"), lambda: pauses.append("resume"))
    assert pause is not None  # installed twice: wraps Kopf's own, not the first wrapper
    paused_by_peers = aiotoggles.ToggleSet(any)  # as Kopf's running.spawn_tasks makes it
    conflict = await paused_by_peers.make_toggle(False, name="peering conflict")
    killer = asyncio.create_task(
        daemons.daemon_killer(
            settings=kopf.OperatorSettings(),
            memories=inventory.ResourceMemories(),
            operator_paused=paused_by_peers,
        )
    )
    try:
        await asyncio.sleep(0.01)
        assert not pause.paused and pauses == []
        await conflict.turn_to(True)  # a live peer of higher priority
        await asyncio.sleep(0.01)
        assert pause.paused and pauses == ["pause"]
        await conflict.turn_to(False)  # it left: resume (Kopf lists everything again)
        await asyncio.sleep(0.01)
        assert not pause.paused and pauses == ["pause", "resume"]
        await conflict.turn_to(True)
        await asyncio.sleep(0.01)
        assert pauses == ["pause", "resume", "pause"]  # each change, once
    finally:
        killer.cancel()
        await asyncio.gather(killer, return_exceptions=True)
