"""EventSources: stream, table entry, generated token, ingest URL, adapter
Deployment, and what their deletion removes."""

from __future__ import annotations

import base64
import json

import pytest
from operator_harness import Cluster, OperatorProcess, eventually, http_source, routing_table
from redis.asyncio import Redis

from tidings.api import keys
from tidings.api.sealing import Sealer
from tidings.sources.status import StatusReporter

pytestmark = pytest.mark.integration


def ready(cluster: Cluster, name: str) -> bool:
    condition = cluster.condition("eventsource", name, "Ready")
    return condition is not None and condition["status"] == "True"


async def test_an_http_source_gets_a_stream_a_generated_token_and_its_url(
    cluster: Cluster, operator: OperatorProcess, redis: Redis, seal_key: str
) -> None:
    ns = cluster.namespace
    cluster.apply(http_source("web"))
    await eventually(lambda: ready(cluster, "web"))

    source = cluster.get("eventsource", "web") or {}
    assert source["status"]["url"] == (
        f"http://tidings-ingest.tidings.svc.cluster.local/sources/{ns}/web"
    )
    token_secret = cluster.get("secret", "web-ingest-token") or {}
    token = base64.b64decode(token_secret["data"]["token"]).decode()
    assert len(token) >= 32
    assert token_secret["metadata"]["ownerReferences"][0]["uid"] == source["metadata"]["uid"]

    compiled = (await routing_table(redis)).sources[f"{ns}/web"]
    assert compiled.kind == "http"
    assert compiled.ingest is not None and compiled.ingest.token_sealed is not None
    assert Sealer(seal_key).unseal(compiled.ingest.token_sealed) == token
    assert token not in str(await redis.hgetall(keys.SOURCES))
    assert await redis.exists(compiled.stream)
    assert await redis.xlen(compiled.stream) == 0  # created empty


async def test_a_user_made_token_secret_is_never_replaced(
    cluster: Cluster, operator: OperatorProcess, redis: Redis, seal_key: str
) -> None:
    ns = cluster.namespace
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "web-ingest-token"},
            "stringData": {"token": "mine"},
        },
        http_source("web"),
    )
    await eventually(lambda: ready(cluster, "web"))
    compiled = (await routing_table(redis)).sources[f"{ns}/web"]
    assert compiled.ingest is not None and compiled.ingest.token_sealed is not None
    assert Sealer(seal_key).unseal(compiled.ingest.token_sealed) == "mine"


async def test_a_deleted_source_takes_its_stream_and_every_key_under_its_tag(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    cluster.apply(http_source("web"), http_source("keep"))
    await eventually(lambda: ready(cluster, "web") and ready(cluster, "keep"))
    await redis.xadd(keys.stream(ns, "web"), {"e": "{}", "t": "0"})
    await redis.set(keys.dedupe(ns, "web", "abc"), "1-0")
    await redis.hset(keys.trigger_state(ns, "web", "t"), mapping={"state": "Delivering"})
    await redis.xadd(keys.stream(ns, "keep"), {"e": "{}", "t": "0"})

    cluster.delete("eventsource", "web", wait=True)

    assert cluster.get("eventsource", "web") is None
    assert [k async for k in redis.scan_iter(match=f"tidings:{{{ns}/web}}:*")] == []
    assert f"{ns}/web" not in (await routing_table(redis)).sources
    assert cluster.get("secret", "web-ingest-token") is None
    assert await redis.xlen(keys.stream(ns, "keep")) == 1  # the neighbour is untouched
    # Its controller returned when asked: stopped, not cancelled.
    assert "Will escalate" not in operator.logs()


async def test_a_postgres_source_runs_its_adapter_deployment_and_is_ready_when_available(
    cluster: Cluster, operator: OperatorProcess, redis: Redis, pg_dsn: str
) -> None:
    ns = cluster.namespace
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "shop-db"},
            # A real database: deleting the EventSource connects to drop its slot.
            "stringData": {"dsn": pg_dsn},
        },
        {
            "apiVersion": "tidings.dev/v1alpha1",
            "kind": "EventSource",
            "metadata": {"name": "users-db"},
            "spec": {
                "postgres": {
                    "connectionSecretRef": {"name": "shop-db", "key": "dsn"},
                    "tables": ["public.users"],
                }
            },
        },
    )
    deployment = await eventually(lambda: cluster.get("deployment", "tidings-source-users-db"))
    source = cluster.get("eventsource", "users-db") or {}
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == source["metadata"]["uid"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "tidings:test"
    assert container["args"] == ["source", "postgres", "--eventsource", f"{ns}/users-db"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TIDINGS_PG_DSN"]["valueFrom"]["secretKeyRef"] == {"name": "shop-db", "key": "dsn"}
    assert json.loads(env["TIDINGS_EVENTSOURCE_SPEC"]["value"])["postgres"]["tables"] == [
        "public.users"
    ]
    config = cluster.get("secret", "tidings-source-users-db") or {}
    assert base64.b64decode(config["data"]["REDIS_URL"]).decode().startswith("redis://")

    # No kubelet runs here: nothing becomes available, and status says so.
    condition = await eventually(
        lambda: (
            (cluster.condition("eventsource", "users-db", "Ready") or {}).get("reason")
            == "AdapterUnavailable"
            and cluster.condition("eventsource", "users-db", "Ready")
        )
    )
    assert condition["status"] == "False"
    assert f"{ns}/users-db" in (await routing_table(redis)).sources  # the stream is ready

    # What the Deployment controller would report once the pod runs.
    cluster.ok(
        "patch",
        "-n",
        ns,
        "deployment",
        "tidings-source-users-db",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"replicas": 1, "availableReplicas": 1, "readyReplicas": 1}}),
    )
    # Available, but the adapter has not said it captures: not Ready yet.
    await eventually(
        lambda: (
            (cluster.condition("eventsource", "users-db", "Ready") or {}).get("reason")
            == "AdapterNotReporting"
        )
    )
    # What the adapter reports once it streams (its own reporting code).
    reporter = StatusReporter(redis, ns, "users-db")
    await reporter.report("Running", "Streaming", "streaming replication slot s", slot="s")
    await eventually(lambda: ready(cluster, "users-db"))
    adapter = cluster.condition("eventsource", "users-db", "AdapterReady") or {}
    assert adapter["status"] == "True"
    capturing = cluster.condition("eventsource", "users-db", "Capturing") or {}
    assert (capturing.get("status"), capturing.get("reason")) == ("True", "Streaming")

    cluster.delete("eventsource", "users-db", wait=True)
    assert cluster.get("deployment", "tidings-source-users-db") is None  # adapter stopped
    assert cluster.get("secret", "tidings-source-users-db") is None
    assert cluster.get("secret", "shop-db") is not None  # the user's Secret is theirs


async def test_an_adapter_spec_change_rolls_the_deployment_and_a_deleted_one_comes_back(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    def schedule(cron: str) -> dict[str, object]:
        return {
            "apiVersion": "tidings.dev/v1alpha1",
            "kind": "EventSource",
            "metadata": {"name": "tick"},
            "spec": {"schedule": {"cron": cron}},
        }

    cluster.apply(schedule("*/5 * * * *"))
    first = await eventually(lambda: cluster.get("deployment", "tidings-source-tick"))
    hash_key = "tidings.dev/template-hash"

    cluster.apply(schedule("0 * * * *"))
    await eventually(
        lambda: (
            (cluster.get("deployment", "tidings-source-tick") or first)["metadata"]["annotations"][
                hash_key
            ]
            != first["metadata"]["annotations"][hash_key]
        )
    )

    cluster.delete("deployment", "tidings-source-tick")
    await eventually(lambda: cluster.get("deployment", "tidings-source-tick"), within=10)
