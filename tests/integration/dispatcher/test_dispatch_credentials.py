"""Subscriber credentials in the data plane (a Dispatcher on a real Redis, real
subscribers on loopback): basic auth and headersFrom reach the subscriber,
a route update swaps them in place, and a dead-letter sink gets none of them."""

from __future__ import annotations

import base64

import pytest
from aiohttp import web
from dispatch_harness import Plane, Subscriber, wait_until

pytestmark = pytest.mark.integration


def refuse(request: web.Request) -> tuple[int, dict[str, str], float]:
    return 400, {}, 0.0


async def test_basic_auth_and_headers_from_secrets_reach_the_subscriber_only(
    plane: Plane, subscriber: Subscriber
) -> None:
    sink = await Subscriber().start()
    try:
        ns = plane.namespace
        plane.world.secrets[(ns, "login", "username")] = "ann"
        plane.world.secrets[(ns, "login", "password")] = "pw-1"
        plane.world.secrets[(ns, "keys", "apiKey")] = "key-1"
        delivery = {
            "auth": {"basic": {"secretRef": {"name": "login"}}},
            "headersFrom": [
                {"name": "X-Api-Key", "secretKeyRef": {"name": "keys", "key": "apiKey"}}
            ],
            "deadLetter": {"uri": sink.url},
            "retry": {"retryOn": ["network"]},
        }
        await plane.add_source()
        await plane.dispatcher()
        await plane.add_trigger("t", subscriber.url, delivery=delivery)
        await plane.publish(1, prefix="one")
        await wait_until(lambda: subscriber.received, 10, "delivered")
        headers = subscriber.received[0].headers
        assert headers["Authorization"] == "Basic " + base64.b64encode(b"ann:pw-1").decode()
        assert headers["X-Api-Key"] == "key-1"

        # Rotated: the operator recompiles and republishes; the worker swaps in place.
        plane.world.secrets[(ns, "login", "password")] = "pw-2"
        rotated = await plane.add_trigger("t", subscriber.url, delivery=delivery, wait=False)
        worker = plane.dispatchers[0].workers[rotated.id]
        await wait_until(lambda: worker.route == rotated, 10, "the new route swapped in")
        subscriber.behaviour = refuse
        await plane.publish(1, prefix="two")
        await wait_until(lambda: sink.received, 15, "dead-lettered to the sink")
        refused = subscriber.attempts[-1].headers
        assert refused["Authorization"] == "Basic " + base64.b64encode(b"ann:pw-2").decode()
        to_sink = sink.received[0].headers
        assert "Authorization" not in to_sink and "X-Api-Key" not in to_sink
    finally:
        await sink.stop()
