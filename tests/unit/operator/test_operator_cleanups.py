"""A deleted Trigger's cleanup and a new Trigger of the same name: the new one
waits for it (`Context.cleaned_up`), a second deletion runs after the first,
and a round that would wait too long is retried later (CleanupPending)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from tidings.operator.adapters import AdapterSettings
from tidings.operator.context import CleanupPending, Context, Settings
from tidings.operator.world import Key

KEY: Key = ("Trigger", "shop", "welcome")


def context() -> Context:
    # Only the cleanup bookkeeping is used here: no clients.
    unused = cast(Any, None)
    settings = Settings(adapters=AdapterSettings(image="tidings", redis_url="redis://"))
    return Context(settings=settings, redis=unused, kube=unused, sealer=unused)


async def test_a_new_object_waits_for_its_predecessors_cleanup_which_run_in_turn() -> None:
    ctx = context()
    order: list[str] = []
    first_may_end = asyncio.Event()

    async def cleanup(name: str, gate: asyncio.Event | None = None) -> None:
        order.append(f"{name} started")
        if gate is not None:
            await gate.wait()
        order.append(f"{name} ended")

    await ctx.cleaned_up(KEY)  # nothing running: returns at once
    ctx.clean_up(KEY, lambda: cleanup("first", first_may_end))
    ctx.clean_up(KEY, lambda: cleanup("second"))  # deleted again meanwhile: after the first
    ctx.clean_up(("Trigger", "shop", "other"), lambda: cleanup("other"))
    with pytest.raises(CleanupPending):
        await ctx.cleaned_up(KEY, limit=0.05)
    assert order == ["first started", "other started", "other ended"]

    first_may_end.set()
    await ctx.cleaned_up(KEY, limit=1.0)
    assert order[3:] == ["first ended", "second started", "second ended"]
    assert not ctx._cleanups  # forgotten once done
