"""The operator's subscription to the dispatchers' announcements (health.follow_news),
on a real Redis: each subscription, the first one too, makes every known Trigger look
again, since announcements made before it were not heard."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from operator_harness import eventually
from redis.asyncio import Redis

from tidings.api import keys
from tidings.operator import health

pytestmark = pytest.mark.integration


async def test_each_subscription_the_first_too_says_announcements_were_missed(
    redis_client: Redis,
) -> None:
    heard: list[tuple[str, str]] = []
    missed: list[int] = []
    following = asyncio.create_task(
        health.follow_news(
            redis_client, lambda ns, name: heard.append((ns, name)), lambda: missed.append(1)
        )
    )
    try:
        # The first subscription: Triggers read before it (the operator was starting)
        # rest until announced, and an announcement before it was not heard.
        await eventually(lambda: len(missed) == 1, within=5)
        await redis_client.publish(keys.REPORT_NEWS, "shop/mailer")
        await eventually(lambda: heard == [("shop", "mailer")], within=5)

        # Lost and made again: missed once more, and news heard again.
        await eventually(lambda: redis_client.client_kill_filter(_type="pubsub"), within=5)
        await eventually(lambda: len(missed) == 2, within=10)
        await redis_client.publish(keys.REPORT_NEWS, "shop/billing")
        await eventually(lambda: heard[-1] == ("shop", "billing"), within=5)
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
