"""The real operator on a real 3-master Redis Cluster (hack/redis-cluster.sh),
with `--redis-cluster`: it publishes Triggers and EventSources into the routing
table there, tells its adapters the URL is a cluster's, reads the delivery state
a real `tidings dispatcher --redis-cluster` writes back, and cleans a deleted
EventSource's keys off whichever master holds its slot."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import REPO, Cluster, OperatorProcess, eventually, http_source
from redis.asyncio import RedisCluster
from test_operator_end_to_end import Subscriber, post_event

from tidings.api import keys, table
from tidings.cli.redis_server import free_port
from tidings.operator.adapters import adapter_name

pytestmark = pytest.mark.integration


@pytest.fixture
async def subscriber() -> AsyncIterator[Subscriber]:
    server = Subscriber()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def cluster_operator(
    cluster: Cluster, redis_cluster_url: str, kubeconfig: Path, seal_key: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        namespaces=[cluster.namespace],
        redis_url=redis_cluster_url,
        kubeconfig=kubeconfig,
        seal_key=seal_key,
        log_path=tmp_path / "operator.log",
        args=["--destinations-loopback=allow"],
    )
    process.env["TIDINGS_REDIS_CLUSTER"] = "true"
    process.start()
    yield process
    process.stop()
    print("----- operator log (tail) -----")
    print("\n".join(process.logs().splitlines()[-100:]))


@pytest.fixture
def cluster_dispatcher(redis_cluster_url: str, seal_key: str, tmp_path: Path) -> Iterator[str]:
    """`tidings dispatcher --redis-cluster` with the operator's seal key; yields
    its ingest base URL."""
    port = free_port()
    log = tmp_path / "dispatcher.log"
    command = [sys.executable, "-m", "tidings.cli", "dispatcher", "--redis-cluster"]
    command += ["--redis-url", redis_cluster_url, "--listen", f"127.0.0.1:{port}"]
    command += ["--destinations-loopback=allow"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TIDINGS_SEAL_KEY": seal_key},
            cwd=REPO,
        )
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    print("----- dispatcher log (tail) -----")
    print("\n".join(log.read_text(errors="replace").splitlines()[-60:]))


def schedule_source(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": name},
        "spec": {"schedule": {"cron": "@hourly"}},
    }


async def test_the_operator_and_a_dispatcher_run_a_trigger_on_a_redis_cluster(
    cluster: Cluster,
    cluster_operator: OperatorProcess,
    cluster_dispatcher: str,
    subscriber: Subscriber,
    redis_cluster_url: str,
) -> None:
    ns = cluster.namespace
    cluster.apply(
        http_source("users"),
        schedule_source("tick"),
        {
            "apiVersion": "tidings.dev/v1alpha1",
            "kind": "Trigger",
            "metadata": {"name": "t"},
            "spec": {
                "source": "users",
                "subscriber": {"uri": f"http://127.0.0.1:{subscriber.port}/hook"},
            },
        },
    )
    await eventually(
        lambda: (cluster.condition("trigger", "t", "Ready") or {}).get("status") == "True",
        within=60,
    )
    redis = RedisCluster.from_url(redis_cluster_url)
    try:
        # The table's slot lives on another master than the URL's: a plain
        # client would get MOVED.
        await redis.initialize()
        node = redis.get_node_from_key(keys.ROUTES)
        assert f"{node.host}:{node.port}" not in redis_cluster_url
        routing = await table.load(redis)  # type: ignore[arg-type]
        assert f"{ns}/users" in routing.sources
        assert f"{ns}/t" in routing.routes

        # The adapter Deployment's config says the URL is a cluster's.
        config = await eventually(lambda: cluster.get("secret", adapter_name("tick")), within=30)
        data = {k: base64.b64decode(v).decode() for k, v in config["data"].items()}
        assert data["REDIS_URL"] == redis_cluster_url
        assert data["TIDINGS_REDIS_CLUSTER"] == "true"

        token_secret = cluster.get("secret", "users-ingest-token") or {}
        token = base64.b64decode(token_secret["data"]["token"]).decode()
        assert await post_event(cluster_dispatcher, ns, token) == 202
        await eventually(lambda: len(subscriber.received) == 1, within=30)

        # The dispatcher's state HASH (on the source's master) reaches status.
        def delivery() -> dict[str, object]:
            return ((cluster.get("trigger", "t") or {}).get("status") or {}).get("delivery") or {}

        await eventually(lambda: delivery().get("state") == "Delivering", within=30)

        # Deleting the EventSource (and its Trigger) removes its keys from its master.
        stream = keys.stream(ns, "users")
        assert await redis.exists(stream) == 1
        cluster.delete("trigger", "t", wait=True)
        cluster.delete("eventsource", "users", wait=True)

        async def cleaned() -> bool:
            routing = await table.load(redis)  # type: ignore[arg-type]
            return await redis.exists(stream) == 0 and f"{ns}/users" not in routing.sources

        await eventually(cleaned, within=30)
    finally:
        await redis.aclose()
    logs = cluster_operator.logs()
    assert "CROSSSLOT" not in logs and "RedisClusterException" not in logs
