"""`tidings dispatcher` serves ingest and delivers in one process."""

from __future__ import annotations

import aiohttp
from dispatch_harness import Plane, Subscriber, wait_until

from tidings.cli.redis_server import free_port


async def test_one_process_takes_events_over_http_and_delivers_them(
    plane: Plane, subscriber: Subscriber
) -> None:
    port = free_port()
    await plane.add_source()
    plane.spawn("solo", "--listen", f"127.0.0.1:{port}")
    route = await plane.add_trigger("t", subscriber.url)
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            try:
                async with http.get(f"{base}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ready, 20, "the dispatcher's ingest is ready")
        async with http.post(
            f"{base}/sources/{plane.namespace}/src?type=com.example.signup",
            json={"email": "a@example.com"},
        ) as response:
            assert response.status == 202
            event_id = (await response.json())["accepted"][0]
        await wait_until(lambda: subscriber.received, 10, "delivered")
        assert subscriber.received[0].id == event_id
        assert subscriber.received[0].headers["ce-type"] == "com.example.signup"
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
        assert f'tidings_deliveries_total{{outcome="delivered",trigger="{route.id}"}} 1.0' in text
