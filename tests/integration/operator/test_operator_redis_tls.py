"""The real operator against the real kube-apiserver, with a Redis that speaks
only TLS to its ACL user (hack/redis-tls.sh): it publishes routes there, and
hands its adapters the user, the password and the CA in their config Secret."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import Cluster, OperatorProcess, eventually, http_source

from secure_redis import TlsRedis
from tidings.api import table
from tidings.api.process import connect_redis
from tidings.operator.adapters import adapter_name

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_operator(
    cluster: Cluster, tls_redis: TlsRedis, kubeconfig: Path, seal_key: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        namespaces=[cluster.namespace],
        redis_url=tls_redis.url,
        kubeconfig=kubeconfig,
        seal_key=seal_key,
        log_path=tmp_path / "operator.log",
    )
    process.env.update(tls_redis.env())
    process.start()
    yield process
    process.stop()
    print("----- operator log (tail) -----")
    print("\n".join(process.logs().splitlines()[-100:]))


def schedule_source(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": name},
        "spec": {"schedule": {"cron": "@hourly"}},
    }


async def test_the_operator_publishes_through_tls_and_gives_adapters_its_credentials(
    cluster: Cluster, tls_operator: OperatorProcess, tls_redis: TlsRedis
) -> None:
    ns = cluster.namespace
    cluster.apply(http_source("users"), schedule_source("tick"))
    redis = connect_redis(tls_redis.connection())
    try:

        async def published() -> bool:
            return f"{ns}/users" in (await table.load(redis)).sources

        await eventually(published, within=60)
    finally:
        await redis.aclose()
    ready = await eventually(
        lambda: (cluster.condition("eventsource", "users", "Ready") or {}).get("status") == "True",
        within=30,
    )
    assert ready

    config = await eventually(lambda: cluster.get("secret", adapter_name("tick")), within=30)
    data = {k: base64.b64decode(v).decode() for k, v in config["data"].items()}
    assert data["REDIS_URL"] == tls_redis.url
    assert data["REDIS_USERNAME"] == tls_redis.username
    assert data["REDIS_PASSWORD"] == tls_redis.password
    assert data["REDIS_TLS_CA"] == tls_redis.ca_pem()
    deployment = await eventually(lambda: cluster.get("deployment", adapter_name("tick")))
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": adapter_name("tick")}}]
    assert tls_redis.password not in tls_operator.logs()
