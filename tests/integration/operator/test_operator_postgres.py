"""A Postgres EventSource under the real operator, with the real adapter
(`tidings source postgres`), real PostgreSQL 15 and the real kube-apiserver:
the adapter's errors reach the EventSource's status, and deleting the
EventSource drops its replication slot and publication.

No kubelet runs here: the adapter runs as a subprocess of the test, the way
the pod would run it, and the test reports its Deployment available the way
the Deployment controller would."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from operator_harness import REPO, Cluster, OperatorProcess, eventually, secret, service, trigger

from tidings.api.types import PostgresSource
from tidings.cli.redis_server import RedisServer
from tidings.sources import pgsetup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
async def sql(pg_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def table() -> str:
    return f"op_users_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def operator(
    cluster: Cluster,
    operator_redis: RedisServer,
    kubeconfig: Path,
    seal_key: str,
    tmp_path: Path,
) -> Iterator[OperatorProcess]:
    """The operator, giving up on an unreachable database after 3 attempts (1 s + 2 s),
    and reading a stopped adapter's slot every second."""
    process = OperatorProcess(
        namespaces=[cluster.namespace],
        redis_url=operator_redis.url,
        kubeconfig=kubeconfig,
        seal_key=seal_key,
        log_path=tmp_path / "operator.log",
        args=["--cleanup-attempts", "3", "--wal-check-interval", "1"],
    )
    process.start()
    yield process
    process.stop()
    print("----- operator log (tail) -----")
    print("\n".join(process.logs().splitlines()[-150:]))


class Adapter:
    """`tidings source postgres --eventsource NS/NAME`, reading the EventSource
    and its Secret from the API, as a pod of the adapter Deployment would."""

    def __init__(self, namespace: str, name: str, redis_url: str, kubeconfig: Path, log: Path):
        self.name = name
        self.log = log
        command = [sys.executable, "-m", "tidings.cli", "source", "postgres"]
        command += ["--eventsource", f"{namespace}/{name}", "--kubeconfig", str(kubeconfig)]
        command += ["--redis-url", redis_url, "--lease-seconds", "6"]
        env = {k: v for k, v in os.environ.items() if k not in ("TIDINGS_PG_DSN",)}
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        print("----- adapter log (tail) -----")
        print("\n".join(self.log.read_text(errors="replace").splitlines()[-60:]))


@pytest.fixture
async def run_adapter(
    cluster: Cluster, operator_redis: RedisServer, kubeconfig: Path, tmp_path: Path, pg_dsn: str
) -> AsyncIterator[Any]:
    """Starts adapters; afterwards stops them and drops the slots and publications
    they made (the operator stops before the test's EventSources are deleted, and
    the test server has max_replication_slots = 32)."""
    started: list[Adapter] = []

    def start(name: str) -> Adapter:
        adapter = Adapter(
            cluster.namespace, name, operator_redis.url, kubeconfig, tmp_path / f"{name}.log"
        )
        started.append(adapter)
        return adapter

    yield start
    for adapter in started:
        adapter.stop()
    for adapter in started:
        spec = PostgresSource.model_validate(postgres_source(adapter.name, "t")["spec"]["postgres"])
        await pgsetup.cleanup(spec, pg_dsn, namespace=cluster.namespace, name=adapter.name)


def postgres_source(name: str, table: str, **postgres: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": name},
        "spec": {
            "postgres": {
                "connectionSecretRef": {"name": "db", "key": "dsn"},
                "tables": [f"public.{table}"],
                **postgres,
            }
        },
    }


def deployment_available(cluster: Cluster, source: str) -> None:
    """What the Deployment controller reports once the adapter pod runs."""
    cluster.ok(
        "patch",
        "-n",
        cluster.namespace,
        "deployment",
        f"tidings-source-{source}",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"replicas": 1, "availableReplicas": 1, "readyReplicas": 1}}),
    )


def reason(cluster: Cluster, kind: str, name: str, type_: str) -> tuple[str, str] | None:
    condition = cluster.condition(kind, name, type_)
    return (condition["status"], condition["reason"]) if condition else None


async def replication_objects(
    sql: psycopg.AsyncConnection[Any], names: pgsetup.Names
) -> tuple[int, int]:
    slots = await (
        await sql.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (names.slot,)
        )
    ).fetchone()
    publications = await (
        await sql.execute(
            "SELECT count(*) FROM pg_publication WHERE pubname = %s", (names.publication,)
        )
    ).fetchone()
    assert slots is not None and publications is not None
    return int(slots[0]), int(publications[0])


def names_of(cluster: Cluster, name: str, table: str) -> pgsetup.Names:
    spec = PostgresSource.model_validate(postgres_source(name, table)["spec"]["postgres"])
    return pgsetup.names(spec, cluster.namespace, name)


async def streaming_source(
    cluster: Cluster,
    run_adapter: Any,
    sql: psycopg.AsyncConnection[Any],
    table: str,
    pg_dsn: str,
    name: str,
    **postgres: Any,
) -> Adapter:
    """A table, its EventSource, and its adapter streaming: the source is Ready."""
    await sql.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, pad text)")
    cluster.apply(secret("db", dsn=pg_dsn), postgres_source(name, table, **postgres))
    await eventually(lambda: cluster.get("deployment", f"tidings-source-{name}"))
    deployment_available(cluster, name)
    adapter: Adapter = run_adapter(name)
    await eventually(
        lambda: reason(cluster, "eventsource", name, "Ready") == ("True", "Ready"), within=30
    )
    assert reason(cluster, "eventsource", name, "Capturing") == ("True", "Streaming")
    return adapter


async def test_a_missing_table_shows_in_ready_and_on_triggers_until_it_is_created(
    cluster: Cluster,
    operator: OperatorProcess,
    run_adapter: Any,
    sql: psycopg.AsyncConnection[Any],
    table: str,
    pg_dsn: str,
) -> None:
    cluster.apply(
        secret("db", dsn=pg_dsn),
        postgres_source("users-db", table),
        service("mailer"),
        trigger("welcome", "users-db"),
    )
    await eventually(lambda: cluster.get("deployment", "tidings-source-users-db"))
    deployment_available(cluster, "users-db")
    run_adapter("users-db")

    await eventually(
        lambda: reason(cluster, "eventsource", "users-db", "Ready") == ("False", "TableNotFound"),
        within=30,
    )
    ready = cluster.condition("eventsource", "users-db", "Ready") or {}
    assert f"public.{table}" in ready["message"] and "spec.postgres.tables[0]" in ready["message"]
    assert reason(cluster, "eventsource", "users-db", "Capturing") == ("False", "TableNotFound")
    assert reason(cluster, "eventsource", "users-db", "AdapterReady") == (
        "True",
        "AdapterAvailable",
    )
    # A Trigger on it says why its source is not Ready, in the adapter's words.
    await eventually(
        lambda: (
            f"public.{table}"
            in (cluster.condition("trigger", "welcome", "SourceReady") or {}).get("message", "")
        )
    )

    await sql.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, email text)")
    # The adapter retries with a doubling delay; the operator reads its report
    # every health interval.
    await eventually(
        lambda: reason(cluster, "eventsource", "users-db", "Ready") == ("True", "Ready"),
        within=40,
    )
    assert reason(cluster, "eventsource", "users-db", "Capturing") == ("True", "Streaming")
    await eventually(
        lambda: reason(cluster, "trigger", "welcome", "SourceReady") == ("True", "SourceReady")
    )


@pytest.mark.parametrize("failure", ["ConnectionFailed", "MissingReplicationPrivilege"])
async def test_the_adapters_connection_errors_show_in_ready_with_the_fix(
    failure: str,
    cluster: Cluster,
    operator: OperatorProcess,
    run_adapter: Any,
    sql: psycopg.AsyncConnection[Any],
    table: str,
    pg_dsn: str,
) -> None:
    await sql.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    role = f"{table}_role"
    if failure == "ConnectionFailed":
        dsn, fix = "postgresql://nobody:pw@127.0.0.1:1/nodb", "connectionSecretRef"
    else:
        await sql.execute(f"CREATE ROLE {role} LOGIN NOREPLICATION")
        dsn, fix = psycopg.conninfo.make_conninfo(pg_dsn, user=role), "WITH REPLICATION"
    try:
        cluster.apply(secret("db", dsn=dsn), postgres_source("broken-db", table))
        await eventually(lambda: cluster.get("deployment", "tidings-source-broken-db"))
        run_adapter("broken-db")
        await eventually(
            lambda: reason(cluster, "eventsource", "broken-db", "Ready") == ("False", failure),
            within=30,
        )
        ready = cluster.condition("eventsource", "broken-db", "Ready") or {}
        assert fix in ready["message"].replace('"', "")
        assert reason(cluster, "eventsource", "broken-db", "Capturing") == ("False", failure)
    finally:
        if failure != "ConnectionFailed":
            await sql.execute(f"DROP ROLE IF EXISTS {role}")


async def test_deleting_the_source_drops_its_slot_and_publication_while_the_adapter_streams(
    cluster: Cluster,
    operator: OperatorProcess,
    run_adapter: Any,
    sql: psycopg.AsyncConnection[Any],
    table: str,
    pg_dsn: str,
) -> None:
    adapter = await streaming_source(cluster, run_adapter, sql, table, pg_dsn, "orders-db")
    names = names_of(cluster, "orders-db", table)
    assert await replication_objects(sql, names) == (1, 1)

    # The adapter keeps running after its Deployment is deleted, as a pod in
    # its grace period would: it must not bring the slot back.
    cluster.delete("eventsource", "orders-db", wait=True)
    assert cluster.get("eventsource", "orders-db") is None
    assert await replication_objects(sql, names) == (0, 0)
    await asyncio.sleep(3)  # time for the adapter to reconnect, were it to
    assert await replication_objects(sql, names) == (0, 0)
    assert await eventually(lambda: adapter.process.poll() is not None, within=20) is True
    assert adapter.process.returncode == 0

    dropped = [e for e in cluster.events("orders-db") if e["reason"] == "ReplicationDropped"]
    assert dropped and names.slot in dropped[0]["message"]
    assert names.publication in dropped[0]["message"]


async def test_an_unreachable_database_is_retried_then_released_with_a_warning(
    cluster: Cluster,
    operator: OperatorProcess,
    sql: psycopg.AsyncConnection[Any],
    table: str,
    pg_dsn: str,
) -> None:
    # Port 1 on loopback: connection refused at once.
    cluster.apply(
        secret("db", dsn="postgresql://tidings@127.0.0.1:1/nowhere?connect_timeout=2"),
        postgres_source("gone-db", table),
    )
    await eventually(lambda: cluster.get("deployment", "tidings-source-gone-db"))
    cluster.delete("eventsource", "gone-db")
    # Attempts after 0, 1 and 2 more seconds, then the EventSource is released.
    await eventually(lambda: cluster.get("eventsource", "gone-db") is None, within=30)
    events = cluster.events("gone-db")
    failed = [e for e in events if e["reason"] == "CleanupFailed"]
    abandoned = [e for e in events if e["reason"] == "CleanupAbandoned"]
    assert len(failed) >= 1 and "ConnectionFailed" in failed[0]["message"]
    assert len(abandoned) == 1 and abandoned[0]["type"] == "Warning"
    slot = names_of(cluster, "gone-db", table).slot
    assert f"SELECT pg_drop_replication_slot('{slot}')" in abandoned[0]["message"]
    assert "after 3 attempts" in abandoned[0]["message"]


async def test_a_source_left_by_a_namespace_deletion_is_cleaned_with_the_remembered_dsn(
    cluster: Cluster,
    operator: OperatorProcess,
    run_adapter: Any,
    sql: psycopg.AsyncConnection[Any],
    table: str,
    pg_dsn: str,
) -> None:
    adapter = await streaming_source(cluster, run_adapter, sql, table, pg_dsn, "audit-db")
    names = names_of(cluster, "audit-db", table)
    assert await replication_objects(sql, names) == (1, 1)
    adapter.stop()  # the pod is gone

    # A namespace deletion removes the Secret before (or while) the EventSource
    # finalizer runs.
    cluster.delete("secret", "db", wait=True)
    cluster.delete("eventsource", "audit-db", wait=True)
    assert await replication_objects(sql, names) == (0, 0)


async def test_wal_piling_up_behind_a_stopped_adapter_is_a_warning_condition_and_event(
    cluster: Cluster,
    operator: OperatorProcess,
    run_adapter: Any,
    sql: psycopg.AsyncConnection[Any],
    table: str,
    pg_dsn: str,
) -> None:
    adapter = await streaming_source(
        cluster, run_adapter, sql, table, pg_dsn, "events-db", maxRetainedWalBytes=1 << 20
    )
    adapter.stop()  # the adapter is down: only the operator can still notice the WAL
    await eventually(
        lambda: reason(cluster, "eventsource", "events-db", "Capturing") == ("False", "Stopped")
    )
    await sql.execute(
        f"INSERT INTO {table} SELECT g, repeat('x', 1000) FROM generate_series(1, 3000) g"
    )
    await eventually(
        lambda: (
            reason(cluster, "eventsource", "events-db", "WalRetained")
            == ("True", "RetainedWalOverThreshold")
        ),
        within=20,
    )
    condition = cluster.condition("eventsource", "events-db", "WalRetained") or {}
    assert "maxRetainedWalBytes=1048576" in condition["message"]
    warnings = await eventually(
        lambda: [
            e for e in cluster.events("events-db") if e["reason"] == "RetainedWalOverThreshold"
        ]
    )
    assert warnings[0]["type"] == "Warning"
    assert reason(cluster, "eventsource", "events-db", "Ready") == ("False", "Stopped")
