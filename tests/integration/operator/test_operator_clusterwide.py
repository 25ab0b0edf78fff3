"""All namespaces, the default mode, on a private control plane of its own
(hack/control-plane.sh with its own state directory): watching every namespace
would touch other tests' objects on the shared one. The operator runs as a
ServiceAccount holding exactly the cluster-wide form of the documented RBAC,
with cluster-wide peering (ClusterKopfPeering)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import (
    REPO,
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
from tidings.operator import rbac

pytestmark = pytest.mark.integration


@pytest.fixture
def private_cluster(tmp_path: Path, kubectl: Any) -> Iterator[tuple[Path, Any]]:
    """A control plane of this test's own, with the CRDs: (admin kubeconfig, its kubectl)."""
    env = {**os.environ, "TIDINGS_STATE_DIR": str(tmp_path / "state")}
    script = str(REPO / "hack" / "control-plane.sh")
    up = subprocess.run(["bash", script, "up"], env=env, capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    config = tmp_path / "state" / "control-plane" / "kubeconfig"
    run = type(kubectl)(kubectl.binary, config)
    try:
        peering = subprocess.run(
            [sys.executable, "-m", "tidings.cli", "operator", "--print-peering-crds"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        ).stdout
        for args, stdin in (
            (("apply", "-f", str(REPO / "crds")), None),
            (("apply", "-f", "-"), peering),
            (("wait", "--for=condition=Established", "crd", "--all"), None),
        ):
            done = run(*args, input=stdin)
            assert done.returncode == 0, done.stderr
        # Established is not yet discoverable on a fresh server: wait until it is.
        for _ in range(100):
            if run("get", "eventsources,triggers", "-A").returncode == 0:
                break
            time.sleep(0.1)
        yield config, run
    finally:
        subprocess.run(["bash", script, "down"], env=env, capture_output=True, check=False)


def operator_kubeconfig(admin: Path, run: Any, tmp_path: Path) -> Path:
    """A ServiceAccount with the cluster-wide RBAC: a kubeconfig with its token."""
    subject = {"kind": "ServiceAccount", "name": "tidings-operator", "namespace": "default"}
    role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole"}
    objects = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "tidings-operator", "namespace": "default"},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "tidings-operator"},
            "rules": rbac.NAMESPACED_RULES + rbac.CLUSTER_RULES + rbac.PEERING_CLUSTER_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "tidings-operator"},
            "roleRef": role_ref | {"name": "tidings-operator"},
            "subjects": [subject],
        },
    ]
    done = run("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(o) for o in objects))
    assert done.returncode == 0, done.stderr
    token = run("create", "token", "tidings-operator", "-n", "default", "--duration=1h")
    assert token.returncode == 0, token.stderr
    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token.stdout.strip()}}]
    config["contexts"][0]["context"]["user"] = "operator"
    path = tmp_path / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_all_namespaces_with_cluster_peering_and_cluster_rbac(
    private_cluster: tuple[Path, Any],
    operator_redis: RedisServer,
    seal_key: str,
    redis: Redis,
    tmp_path: Path,
) -> None:
    admin, run = private_cluster
    namespaces = ["shop", "billing"]
    for ns in namespaces:
        assert run("create", "namespace", ns).returncode == 0

    operator = OperatorProcess(
        namespaces=[],  # all of them
        redis_url=operator_redis.url,
        kubeconfig=operator_kubeconfig(admin, run, tmp_path),
        seal_key=seal_key,
        log_path=tmp_path / "clusterwide-operator.log",
    ).start()
    try:
        for ns in namespaces:
            Cluster(run, ns).apply(http_source("users"), service("mailer"), trigger("t", "users"))
        for ns in namespaces:
            cluster = Cluster(run, ns)
            await eventually(
                lambda c=cluster: (
                    (c.condition("trigger", "t", "Ready") or {}).get("status") == "True"
                ),
                within=30,
            )
        routes = (await routing_table(redis)).routes
        assert {"shop/t", "billing/t"} <= set(routes)
        peers = run("get", "clusterkopfpeering", "tidings", "-o", "yaml")
        assert peers.returncode == 0 and "lastseen" in peers.stdout  # peering is live
        Cluster(run, "shop").delete("trigger", "t", wait=True)

        async def removed() -> bool:
            return "shop/t" not in (await routing_table(redis)).routes

        await eventually(removed)
    finally:
        operator.stop()
        logs = operator.logs()
        print("\n".join(logs.splitlines()[-80:]))
    # Every 403 the API server sends reads "Forbidden" in the operator's log; the bare
    # digits are not searched for (timestamps and peering priorities contain them).
    refusals = re.findall(r"forbidden|not enough permissions", logs.lower())
    assert not refusals, refusals
