"""The components the integration tests run against are up, and really what
production runs on: Redis 7 with AOF, PostgreSQL with logical decoding, and a
Kubernetes API server that enforces RBAC."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable

import psycopg
import pytest
import redis.asyncio as aioredis

pytestmark = pytest.mark.integration

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
NOBODY = "--as=system:serviceaccount:default:nobody"


def can_i(kubectl: Kubectl, *args: str) -> str:
    """`kubectl auth can-i` answers on stdout and exits 1 for "no"."""
    result = kubectl("auth", "can-i", *args)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip()


async def test_redis_is_7_or_newer_with_aof_every_second(redis_client: aioredis.Redis) -> None:
    version = (await redis_client.info("server"))["redis_version"]
    assert int(str(version).split(".")[0]) >= 7, version
    config = await redis_client.config_get("append*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"


async def test_redis_client_starts_on_an_empty_database(redis_client: aioredis.Redis) -> None:
    assert await redis_client.dbsize() == 0


def test_postgres_is_15_or_newer_and_decodes_logically(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('server_version_num', 'wal_level', 'max_replication_slots', 'max_wal_senders')"
            ).fetchall()
        )
        assert int(settings["server_version_num"]) // 10000 >= 15, settings
        assert settings["wal_level"] == "logical"
        assert int(settings["max_replication_slots"]) >= 20
        assert int(settings["max_wal_senders"]) >= 20
        # A temporary pgoutput slot: the plugin the source uses, gone with the session.
        slot = f"probe_{uuid.uuid4().hex[:8]}"
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput', true)", (slot,))
        row = conn.execute(
            "SELECT plugin, temporary FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
        assert row == ("pgoutput", True)


def test_kube_apiserver_is_the_pinned_version(kubectl: Kubectl) -> None:
    result = kubectl("get", "--raw", "/version")
    assert result.returncode == 0, result.stderr
    minor = ".".join(os.environ.get("TIDINGS_K8S_VERSION", "1.34").split(".")[:2])
    assert json.loads(result.stdout)["gitVersion"].startswith(f"v{minor}.")


def test_rbac_denies_an_unprivileged_service_account(kubectl: Kubectl) -> None:
    assert can_i(kubectl, "get", "secrets") == "yes"
    assert can_i(kubectl, "get", "secrets", NOBODY) == "no"


def test_a_rolebinding_grants_only_its_own_namespace(kubectl: Kubectl, k8s_namespace: str) -> None:
    ns = ("-n", k8s_namespace)
    for args in (
        ("role", "read-secrets", "--verb=get", "--resource=secrets"),
        ("rolebinding", "nobody", "--role=read-secrets", "--serviceaccount=default:nobody"),
    ):
        created = kubectl("create", *args, *ns)
        assert created.returncode == 0, created.stderr
    assert can_i(kubectl, "get", "secrets", NOBODY, *ns) == "yes"
    assert can_i(kubectl, "get", "secrets", NOBODY, "-n", "default") == "no"


def test_pods_and_deployments_are_accepted_without_a_controller_manager(
    kubectl: Kubectl, k8s_namespace: str
) -> None:
    for args in (("run", "web", "--image=nginx"), ("create", "deployment", "web", "--image=nginx")):
        result = kubectl(*args, "-n", k8s_namespace)
        assert result.returncode == 0, result.stderr
