"""The documented RBAC (tidings.operator.rbac) is enough: the operator runs as a
ServiceAccount holding exactly those rules through a whole lifecycle, and the
API server (real RBAC) refuses nothing it asks."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import (
    Cluster,
    OperatorProcess,
    eventually,
    http_source,
    routing_table,
    secret,
    service,
    trigger,
)
from redis.asyncio import Redis

from tidings.api import keys
from tidings.cli.redis_server import RedisServer
from tidings.operator import rbac

pytestmark = pytest.mark.integration


@pytest.fixture
def least_privilege_kubeconfig(
    cluster: Cluster, kubeconfig: Path, tmp_path: Path
) -> Iterator[Path]:
    ns = cluster.namespace
    cluster_role = f"tidings-operator-test-{uuid.uuid4().hex[:8]}"
    subject = {"kind": "ServiceAccount", "name": "tidings-operator", "namespace": ns}
    namespaced: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "tidings-operator"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "tidings-operator"},
            "rules": rbac.NAMESPACED_RULES + rbac.PEERING_NAMESPACED_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "tidings-operator"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "tidings-operator",
            },
            "subjects": [subject],
        },
    ]
    cluster.apply(*namespaced)
    cluster_scoped = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": cluster_role},
            "rules": rbac.CLUSTER_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": cluster_role},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": cluster_role,
            },
            "subjects": [subject],
        },
    ]
    cluster.ok("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(o) for o in cluster_scoped))
    token = cluster.ok("create", "token", "tidings-operator", "-n", ns, "--duration=1h").strip()
    config = yaml.safe_load(kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    config["contexts"] = [
        {
            "name": "operator",
            "context": {"cluster": config["clusters"][0]["name"], "user": "operator"},
        }
    ]
    config["current-context"] = "operator"
    path = tmp_path / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    yield path
    cluster.run("delete", "clusterrolebinding,clusterrole", cluster_role)


async def test_the_documented_rbac_is_enough_for_a_whole_lifecycle(
    cluster: Cluster,
    least_privilege_kubeconfig: Path,
    operator_redis: RedisServer,
    seal_key: str,
    redis: Redis,
    tmp_path: Path,
    pg_dsn: str,
) -> None:
    ns = cluster.namespace
    # Peering is on: the operator creates its KopfPeering object itself.
    operator = OperatorProcess(
        namespaces=[ns],
        redis_url=operator_redis.url,
        kubeconfig=least_privilege_kubeconfig,
        seal_key=seal_key,
        log_path=tmp_path / "rbac-operator.log",
    ).start()
    try:
        signing = {"signing": {"secretRef": {"name": "hook", "key": "secret"}}}
        cluster.apply(
            http_source("users"),
            service("mailer"),
            secret("hook", secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            # A real database: deleting the EventSource connects to drop its slot.
            secret("db", dsn=pg_dsn),
            trigger("t", "users", delivery=signing),
            {
                "apiVersion": "tidings.dev/v1alpha1",
                "kind": "EventSource",
                "metadata": {"name": "db"},
                "spec": {
                    "postgres": {
                        "connectionSecretRef": {"name": "db", "key": "dsn"},
                        "tables": ["public.users"],
                    }
                },
            },
        )
        await eventually(
            lambda: (cluster.condition("trigger", "t", "Ready") or {}).get("status") == "True",
            within=30,
        )
        await eventually(lambda: cluster.get("deployment", "tidings-source-db"))
        assert f"{ns}/t" in (await routing_table(redis)).routes
        # A Backoff report, so the operator records an Event.
        await redis.hset(
            keys.trigger_state(ns, "users", "t"),
            mapping={keys.STATE_STATE: "Backoff", keys.STATE_UPDATED: int(time.time() * 1000)},
        )
        await redis.publish(keys.REPORT_NEWS, f"{ns}/t")  # a first report is announced
        await eventually(
            lambda: any(e["reason"] == "BackoffStarted" for e in cluster.events("t")), within=10
        )

        cluster.delete("trigger", "t", wait=True)
        cluster.delete("eventsource", "users", wait=True)
        cluster.delete("eventsource", "db", wait=True)
        assert cluster.get("deployment", "tidings-source-db") is None
        assert cluster.get("secret", "users-ingest-token") is None
    finally:
        operator.stop()
        logs = operator.logs()
        print(logs[-20000:])
    # Every 403 the API server sends reads "Forbidden" in the operator's log; the bare
    # digits are not searched for (timestamps and peering priorities contain them).
    refusals = re.findall(r"forbidden|not enough permissions", logs.lower())
    assert not refusals, refusals
