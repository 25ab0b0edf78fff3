"""Safe to share a cluster, on the real kube-apiserver with the real operator:
a Trigger delivers into another namespace only with that namespace's
TriggerGrant (granting and revoking take effect at once, no restart), and a
subscriber the destination policy refuses is never routed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import (
    Cluster,
    OperatorProcess,
    eventually,
    http_source,
    routing_table,
    service,
    trigger,
)
from redis.asyncio import Redis

from tidings.cli.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def mail(kubectl: Any, cluster: Cluster) -> Iterator[Cluster]:
    """A second namespace: the one Triggers of the test's namespace deliver into."""
    name = f"mail-{uuid.uuid4().hex[:6]}"
    created = kubectl("create", "namespace", name)
    assert created.returncode == 0, created.stderr
    yield Cluster(kubectl, name)
    kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def operator_of_both(
    cluster: Cluster,
    mail: Cluster,
    operator_redis: RedisServer,
    kubeconfig: Path,
    seal_key: str,
    tmp_path: Path,
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        namespaces=[cluster.namespace, mail.namespace],
        redis_url=operator_redis.url,
        kubeconfig=kubeconfig,
        seal_key=seal_key,
        log_path=tmp_path / "operator.log",
    ).start()
    yield process
    process.stop()
    print("----- operator log (tail) -----")
    print("\n".join(process.logs().splitlines()[-150:]))


def trigger_to(name: str, subscriber: dict[str, Any]) -> dict[str, Any]:
    manifest = trigger(name, "users")
    manifest["spec"]["subscriber"] = subscriber
    return manifest


def ready(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.condition("trigger", name, "Ready") or {}


def grant(name: str, *namespaces: str, service: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "TriggerGrant",
        "metadata": {"name": name},
        "spec": {
            "from": [{"namespace": n} for n in namespaces],
            "to": [{"kind": "Service", **({"name": service} if service else {})}],
        },
    }


async def test_a_ref_into_another_namespace_is_routed_only_while_a_grant_there_admits_it(
    cluster: Cluster, mail: Cluster, operator_of_both: OperatorProcess, redis: Redis
) -> None:
    shop, target = cluster.namespace, mail.namespace
    mail.apply(service("mailer", 8080))
    cluster.apply(
        http_source("users"),
        trigger_to("welcome", {"ref": {"name": "mailer", "namespace": target}}),
    )
    refused = await eventually(
        lambda: (
            ready(cluster, "welcome").get("reason") == "CrossNamespaceNotAllowed"
            and ready(cluster, "welcome")
        ),
        within=60,
    )
    assert refused["status"] == "False"
    assert (
        f"no TriggerGrant in namespace {target} admits Triggers of namespace {shop}"
        in (refused["message"])
    )
    assert f"{shop}/welcome" not in (await routing_table(redis)).routes

    # A grant for another namespace, or another Service, changes nothing.
    mail.apply(grant("others", "billing"), grant("not-mailer", shop, service="archive"))
    # The grant that admits it: routed, without restarting anything.
    mail.apply(grant("shop-to-mailer", shop, service="mailer"))
    await eventually(lambda: ready(cluster, "welcome").get("status") == "True", within=60)
    route = (await routing_table(redis)).routes[f"{shop}/welcome"]
    assert route.subscriber_url == f"http://mailer.{target}.svc.cluster.local:8080"

    # Revoked: withdrawn from the routing table, and status says why.
    mail.delete("triggergrant", "shop-to-mailer")
    await eventually(
        lambda: ready(cluster, "welcome").get("reason") == "CrossNamespaceNotAllowed", within=60
    )
    await eventually(lambda: _absent(redis, f"{shop}/welcome"), within=30, interval=0.3)
    assert operator_of_both.starts == 1 and operator_of_both.alive()


async def _absent(redis: Redis, route_id: str) -> bool:
    return route_id not in (await routing_table(redis)).routes


@pytest.mark.parametrize(
    ("uri", "rule"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://127.0.0.1:8080/hook", "loopback"),  # a cluster's default
    ],
)
async def test_a_subscriber_the_destination_policy_refuses_is_never_routed(
    cluster: Cluster, operator: OperatorProcess, redis: Redis, uri: str, rule: str
) -> None:
    cluster.apply(http_source("users"), trigger_to("grab", {"uri": uri}))
    condition = await eventually(
        lambda: (
            ready(cluster, "grab").get("reason") == "DestinationNotAllowed"
            and ready(cluster, "grab")
        ),
        within=60,
    )
    assert condition["status"] == "False"
    assert f"(rule {rule};" in condition["message"]
    assert condition["message"].startswith(f"spec.subscriber.uri: {uri}: ")
    resolved = cluster.condition("trigger", "grab", "SubscriberResolved") or {}
    assert resolved.get("reason") == "DestinationNotAllowed"
    assert f"{cluster.namespace}/grab" not in (await routing_table(redis)).routes
