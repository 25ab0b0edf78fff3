"""`tidings source postgres` as the operator runs it: EventSource and Secret read
from a real kube-apiserver, the Lease held, and a spec change picked up."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from source_helpers import compiled, eventually, start_adapter, wait_for_events

from tidings.api.types import PostgresSource
from tidings.sources import pgsetup
from tidings.sources.kubeapi import KubeApi
from tidings.sources.lease import lease_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_the_adapter_reads_its_eventsource_and_secret_and_follows_spec_changes(
    tidings_crds: None,
    kubectl: Any,
    k8s_namespace: str,
    kubeconfig: Path,
    redis_client: aioredis.Redis,
    redis_url: str,
    pg: Any,
    pg_dsn: str,
    table_name: str,
) -> None:
    name = "users-db"
    await pg.execute(f"CREATE TABLE {table_name}_a (id int PRIMARY KEY)")
    await pg.execute(f"CREATE TABLE {table_name}_b (id int PRIMARY KEY)")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "shop-db", "namespace": k8s_namespace},
        "stringData": {"dsn": pg_dsn},
    }
    spec: dict[str, Any] = {
        "postgres": {
            "connectionSecretRef": {"name": "shop-db", "key": "dsn"},
            "tables": [f"public.{table_name}_a"],
        }
    }
    eventsource = {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": name, "namespace": k8s_namespace},
        "spec": spec,
    }
    for manifest in (secret, eventsource):
        applied = kubectl("apply", "-f", "-", input=json.dumps(manifest))
        assert applied.returncode == 0, applied.stderr
    source = compiled(k8s_namespace, name, "postgres")
    postgres = PostgresSource.model_validate(spec["postgres"])
    names = pgsetup.names(postgres, k8s_namespace, name)
    slot, publication = names.slot, names.publication
    # No TIDINGS_PG_DSN: the DSN must come from the Secret, through the API.
    process = start_adapter(
        "postgres",
        f"{k8s_namespace}/{name}",
        redis_url,
        "--kubeconfig",
        kubeconfig,
        "--spec-poll-seconds",
        "0.5",
        "--lease-seconds",
        "3",
        without=("TIDINGS_PG_DSN", "TIDINGS_EVENTSOURCE_SPEC"),
    )
    api = KubeApi.from_config(str(kubeconfig))
    try:

        async def streaming_pid() -> int | None:
            # The walsender's pid only: while the slot is being created, the
            # creating SQL session holds it, and a pid change from that to the
            # stream is no restart.
            cursor = await pg.execute(
                "SELECT s.active_pid FROM pg_replication_slots s "
                "JOIN pg_stat_activity a ON a.pid = s.active_pid "
                "WHERE s.slot_name = %s AND a.backend_type = 'walsender'",
                (slot,),
            )
            row = await cursor.fetchone()
            return row[0] if row else None

        first_pid = await eventually(streaming_pid, within=60)
        lease = await api.get(
            f"/apis/coordination.k8s.io/v1/namespaces/{k8s_namespace}/leases/{lease_name(name)}"
        )
        assert lease["spec"]["holderIdentity"].endswith(f"_{process.pid}")
        await pg.execute(f"INSERT INTO {table_name}_a VALUES (1)")
        await wait_for_events(redis_client, source, 1)

        spec["postgres"]["tables"].append(f"public.{table_name}_b")
        applied = kubectl("apply", "-f", "-", input=json.dumps(eventsource))
        assert applied.returncode == 0, applied.stderr

        async def restarted_with_b() -> bool:
            # A row written before the publication holds the table is never
            # published, so the new session must have set it (any restart for
            # another reason, a lost Lease under load, is not enough).
            cursor = await pg.execute(
                "SELECT count(*) FROM pg_publication_tables WHERE pubname = %s AND tablename = %s",
                (publication, f"{table_name}_b"),
            )
            row = await cursor.fetchone()
            pid = await streaming_pid()
            return bool(row and row[0]) and pid is not None and pid != first_pid

        await eventually(restarted_with_b, within=60)
        await pg.execute(f"INSERT INTO {table_name}_b VALUES (2)")
        await pg.execute(f"INSERT INTO {table_name}_a VALUES (3)")
        events = await wait_for_events(redis_client, source, 3, within=60)
        assert [(e.subject, e.data["new"]["id"]) for e in events] == [
            (f"public.{table_name}_a", 1),
            (f"public.{table_name}_b", 2),
            (f"public.{table_name}_a", 3),
        ]
    finally:
        await api.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        await pgsetup.cleanup(postgres, pg_dsn, namespace=k8s_namespace, name=name)
