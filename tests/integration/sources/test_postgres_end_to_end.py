"""End to end, with nothing in the writing service: a row inserted with plain
SQL reaches an HTTP subscriber through a Trigger — PostgreSQL, the `tidings
source postgres` process, Redis, the routing table and a Dispatcher, all real."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry
from source_helpers import eventually, start_adapter

from tidings.api import table
from tidings.api.destinations import LOCAL
from tidings.api.routes import compile_source, compile_trigger
from tidings.api.sealing import Sealer, new_key
from tidings.api.types import EventSourceSpec, PostgresSource, SecretKeyRef, TriggerSpec
from tidings.dispatcher.engine import Dispatcher
from tidings.dispatcher.routing import TableWatcher
from tidings.sources import pgsetup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class World:
    def __init__(self, sources: dict[tuple[str, str], EventSourceSpec]) -> None:
        self.sources = sources

    def source(self, namespace: str, name: str) -> EventSourceSpec | None:
        return self.sources.get((namespace, name))

    def service_ports(self, namespace: str, name: str) -> list[int] | None:
        return None

    def secret(self, namespace: str, name: str, key: str) -> str | None:
        return None


async def test_an_inserted_row_reaches_the_subscriber_of_a_trigger(
    pg: Any,
    table_name: str,
    tmp_path: Path,
    redis_client: aioredis.Redis,
    redis_url: str,
    pg_dsn: str,
    source_name: tuple[str, str],
) -> None:
    namespace, name = source_name
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, email text, plan text)")
    received: list[tuple[dict[str, str], dict[str, Any], float]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.json(), time.time()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks/signup", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    # What the operator would publish for these manifests.
    spec = EventSourceSpec(
        postgres=PostgresSource(
            connection_secret_ref=SecretKeyRef(name="db", key="dsn"),
            tables=[f"public.{table_name}"],
        )
    )
    world = World({(namespace, name): spec})
    sealer = Sealer(new_key())
    source = compile_source(namespace=namespace, name=name, spec=spec, world=world, sealer=sealer)
    trigger = TriggerSpec.model_validate(
        {
            "source": name,
            "filter": {
                "types": ["dev.tidings.postgres.insert"],
                "expression": 'event.data.new.plan == "pro"',
            },
            "subscriber": {"uri": f"http://127.0.0.1:{port}/hooks/signup"},
        }
    )
    route = compile_trigger(
        namespace=namespace,
        name="welcome-email",
        spec=trigger,
        world=world,
        sealer=sealer,
        destinations=LOCAL,
    )
    await table.put_source(redis_client, source)
    await table.put_route(redis_client, route)

    dispatcher_redis = aioredis.from_url(redis_url)
    watcher = TableWatcher(dispatcher_redis, resync_interval=1.0)
    await watcher.start()
    dispatcher = Dispatcher(
        dispatcher_redis, watcher, sealer=sealer, registry=CollectorRegistry(), destinations=LOCAL
    )
    await dispatcher.start()

    manifest = tmp_path / "source.yaml"
    manifest.write_text(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "db", "namespace": namespace},
                    "stringData": {"dsn": pg_dsn},
                },
                {
                    "apiVersion": "tidings.dev/v1alpha1",
                    "kind": "EventSource",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": json.loads(json.dumps(spec.to_wire())),
                },
            ]
        )
    )
    adapter = start_adapter("postgres", f"{namespace}/{name}", redis_url, "--manifest", manifest)
    try:

        async def ready() -> bool:
            groups = (
                await redis_client.xinfo_groups(source.stream)
                if await redis_client.exists(source.stream)
                else []
            )
            cursor = await pg.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active",
                (pgsetup.names(spec.postgres, namespace, name).slot,),  # type: ignore[arg-type]
            )
            slot_active = bool((await cursor.fetchone())[0])
            return slot_active and any(g["name"] == b"welcome-email" for g in groups)

        await eventually(ready)
        # The signup service only writes its rows.
        await pg.execute(f"INSERT INTO {table_name} VALUES (1, 'free@x.io', 'free')")
        await pg.execute(f"INSERT INTO {table_name} VALUES (2, 'pro@x.io', 'pro')")
        committed = time.time()

        async def delivered() -> bool:
            return len(received) >= 1

        await eventually(delivered)
        await eventually(lambda: _settled(redis_client, source.stream), within=5)
        headers, body, at = received[0]
        assert len(received) == 1
        assert headers["ce-type"] == "dev.tidings.postgres.insert"
        assert headers["ce-subject"] == f"public.{table_name}"
        assert headers["ce-source"] == source.api_path
        assert body["new"] == {"id": 2, "email": "pro@x.io", "plan": "pro"}
        assert at - committed < 5
    finally:
        adapter.terminate()
        adapter.wait(10)
        await dispatcher.stop(grace=1.0)
        await watcher.stop()
        await dispatcher_redis.aclose()
        await runner.cleanup()
        await pgsetup.cleanup(spec.postgres, pg_dsn, namespace=namespace, name=name)  # type: ignore[arg-type]


async def _settled(redis: aioredis.Redis, stream: str) -> bool:
    """Both events were read and acknowledged (the free one filtered out)."""
    groups = await redis.xinfo_groups(stream)
    return bool(groups) and groups[0]["pending"] == 0 and groups[0]["lag"] == 0
