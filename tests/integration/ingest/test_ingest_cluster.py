"""Ingest on a real 3-master Redis Cluster: one source's stream and dedupe keys
share a hash tag, so the append script is legal and lands on one slot."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from redis.asyncio import RedisCluster

from tidings.api import table
from tidings.api.events import CloudEvent
from tidings.api.routes import CompiledIngest, CompiledSource
from tidings.api.sealing import Sealer, new_key
from tidings.cli.redis_server import RedisServer
from tidings.dispatcher import streams
from tidings.dispatcher.ingest import build_app
from tidings.dispatcher.routing import TableWatcher


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for port in random.sample(range(20000, 55000), 200):
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("cluster")
    nodes = [
        RedisServer(
            root / f"node{i}",
            port=cluster_port(),
            extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
        )
        for i in range(3)
    ]
    for node in nodes:
        node.start()
    try:
        created = subprocess.run(
            [
                *("redis-cli", "--cluster", "create"),
                *(f"127.0.0.1:{n.port}" for n in nodes),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        for _ in range(100):
            info = subprocess.run(
                ["redis-cli", "-p", str(nodes[0].port), "cluster", "info"],
                capture_output=True,
                text=True,
            ).stdout
            if "cluster_state:ok" in info:
                break
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{nodes[0].port}/0"
    finally:
        for node in nodes:
            node.stop()


def source(name: str) -> CompiledSource:
    from tidings.api import keys

    return CompiledSource(
        namespace="shop",
        name=name,
        kind="http",
        stream=keys.stream("shop", name),
        ingest=CompiledIngest(allow_anonymous=True),
        retention_max_age=3600,
        retention_max_events=1000,
    )


@pytest.fixture
async def client(cluster: str) -> AsyncIterator[RedisCluster]:
    redis = RedisCluster.from_url(cluster)
    yield redis
    await redis.aclose()


async def test_append_single_and_batch_with_dedupe_on_a_cluster(client: RedisCluster) -> None:
    # Several sources, so their streams hash to different masters.
    for name in ("orders", "users", "payments", "audit"):
        compiled = source(name)
        one = CloudEvent(id="1", source="/s", type="t")
        first = await streams.append(client, compiled, [one])  # type: ignore[arg-type]
        batch = [CloudEvent(id=str(i), source="/s", type="t") for i in range(250)]
        result = await streams.append(client, compiled, batch)  # type: ignore[arg-type]
        assert not first.events[0].duplicate
        assert [e.duplicate for e in result.events] == [i == 1 for i in range(250)]
        assert await client.xlen(compiled.stream) == 250


async def test_ingest_serves_http_on_a_cluster(client: RedisCluster) -> None:
    compiled = source("hooks")
    await table.put_source(client, compiled)  # type: ignore[arg-type]
    watcher = TableWatcher(client)  # type: ignore[arg-type]
    await watcher.refresh()
    app = build_app(client, watcher, CollectorRegistry(), Sealer(new_key()))  # type: ignore[arg-type]
    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        batch = [
            {"specversion": "1.0", "id": str(i), "source": "/s", "type": "t"} for i in range(3)
        ]
        response = await http.post(
            "/sources/shop/hooks",
            data=json.dumps(batch),
            headers={"Content-Type": "application/cloudevents-batch+json"},
        )
        assert response.status == 202, await response.text()
        assert (await http.get("/readyz")).status == 200
    assert await client.xlen(compiled.stream) == 3


async def test_waiting_for_replicas_on_a_cluster_is_refused_at_startup(
    client: RedisCluster,
) -> None:
    watcher = TableWatcher(client)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not supported with Redis Cluster"):
        build_app(client, watcher, CollectorRegistry(), Sealer(new_key()), wait_replicas=1)  # type: ignore[arg-type]
