"""A Postgres source's lifecycle against real PostgreSQL 15, Redis and a real
kube-apiserver: an adapter outliving its deleted EventSource creates no slot or
publication again, and a replication slot created anew is recorded and reported
(slotRecreated) by this adapter and every later one."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from source_helpers import compiled, eventually, running, start_adapter, wait_for_events

from tidings.api import keys
from tidings.api.types import PostgresSource
from tidings.sources import journal, pgsetup, status
from tidings.sources.cli import SPEC_ENV, eventsource_still_wanted
from tidings.sources.kubeapi import KubeApi
from tidings.sources.postgres import PostgresAdapter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PG = Any
NAME = "users-db"
# Ours, so that a deleted EventSource stays with its deletionTimestamp, as it
# does while the operator's finalizer runs.
FINALIZER = "tests.tidings.dev/hold"


@pytest_asyncio.fixture
async def kube_api(kubeconfig: Path) -> AsyncIterator[KubeApi]:
    api = KubeApi.from_config(str(kubeconfig))
    yield api
    await api.close()


@pytest.fixture
def held_eventsource(
    tidings_crds: None,
    kubectl: Any,
    k8s_namespace: str,
    table_name: str,
    pg_cleanup: list[tuple[PostgresSource, str, str]],
) -> Any:
    """Apply the EventSource NAME capturing `table_name`, with our finalizer
    (removed after the test); returns its Postgres spec."""
    spec = {"connectionSecretRef": {"name": "db", "key": "dsn"}, "tables": [table_name]}
    manifest = {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": NAME, "namespace": k8s_namespace, "finalizers": [FINALIZER]},
        "spec": {"postgres": spec},
    }
    applied = kubectl("apply", "-f", "-", input=json.dumps(manifest))
    assert applied.returncode == 0, applied.stderr
    postgres = PostgresSource.model_validate(spec)
    pg_cleanup.append((postgres, k8s_namespace, NAME))
    yield postgres
    release = '{"metadata": {"finalizers": null}}'
    released = kubectl(
        "patch", "eventsource", NAME, "-n", k8s_namespace, "--type=merge", "-p", release
    )
    assert released.returncode == 0, released.stderr


def delete_eventsource(kubectl: Any, namespace: str) -> None:
    """`kubectl delete --wait=false`: the object stays, with a deletionTimestamp."""
    deleted = kubectl("delete", "eventsource", NAME, "-n", namespace, "--wait=false")
    assert deleted.returncode == 0, deleted.stderr
    shown = kubectl("get", "eventsource", NAME, "-n", namespace, "-o", "json")
    assert json.loads(shown.stdout)["metadata"].get("deletionTimestamp")


async def slot_and_publication(
    pg: PG, spec: PostgresSource, namespace: str, name: str = NAME
) -> tuple[bool, bool]:
    """Whether the source's replication slot and publication exist."""
    owned = pgsetup.names(spec, namespace, name)
    slots = await pg.execute(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (owned.slot,)
    )
    publications = await pg.execute(
        "SELECT count(*) FROM pg_publication WHERE pubname = %s", (owned.publication,)
    )
    return (await slots.fetchone())[0] == 1, (await publications.fetchone())[0] == 1


async def stays_gone(pg: PG, spec: PostgresSource, namespace: str, seconds: float) -> None:
    """Neither the slot nor the publication appears during `seconds`."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while loop.time() < until:
        assert await slot_and_publication(pg, spec, namespace) == (False, False)
        await asyncio.sleep(0.1)


def adapter_for(
    spec: PostgresSource, namespace: str, redis: aioredis.Redis, dsn: str, **options: Any
) -> PostgresAdapter:
    options.setdefault("backoff_max", 0.5)
    return PostgresAdapter(compiled(namespace, NAME, "postgres"), spec, redis, dsn=dsn, **options)


async def assert_stopped_as_deleted(
    task: asyncio.Task[None], adapter: PostgresAdapter, redis: aioredis.Redis, namespace: str
) -> None:
    await asyncio.wait_for(task, 15)  # run() returned on its own: no stop() was called
    assert adapter.deleted
    reported = await status.read(redis, namespace, NAME)
    assert reported is not None
    assert (reported.state, reported.reason) == ("Stopped", "EventSourceDeleted")


# --- deletion ------------------------------------------------------------------------


async def test_an_adapter_outliving_its_deleted_eventsource_does_not_recreate_the_dropped_slot(
    pg: PG,
    table_name: str,
    held_eventsource: PostgresSource,
    kubectl: Any,
    k8s_namespace: str,
    kube_api: KubeApi,
    redis_client: aioredis.Redis,
    pg_dsn: str,
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    spec = held_eventsource
    adapter = adapter_for(
        spec,
        k8s_namespace,
        redis_client,
        pg_dsn,
        still_wanted=eventsource_still_wanted(kube_api, k8s_namespace, NAME),
    )
    async with running(adapter, redis_client, adapter.source) as task:
        assert await slot_and_publication(pg, spec, k8s_namespace) == (True, True)

        # What the operator's finalizer does, while the adapter pod still runs.
        delete_eventsource(kubectl, k8s_namespace)
        dropped = await pgsetup.cleanup(spec, pg_dsn, namespace=k8s_namespace, name=NAME)
        assert (dropped.slot_dropped, dropped.publication_dropped) == (True, True)

        # The terminated walsender makes the adapter reconnect after 1 s.
        await stays_gone(pg, spec, k8s_namespace, 3.0)
        await assert_stopped_as_deleted(task, adapter, redis_client, k8s_namespace)


async def test_an_adapter_whose_slot_came_just_after_the_operators_drop_drops_it_again(
    pg: PG,
    table_name: str,
    held_eventsource: PostgresSource,
    kubectl: Any,
    k8s_namespace: str,
    kube_api: KubeApi,
    redis_client: aioredis.Redis,
    pg_dsn: str,
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    spec = held_eventsource
    check = eventsource_still_wanted(kube_api, k8s_namespace, NAME)
    answers: list[bool] = []

    async def operator_acts_right_after_the_first_check() -> bool:
        # The race: the session's first check passes, then the operator deletes
        # the EventSource and drops (nothing yet), then the adapter creates.
        wanted = await check()
        if not answers:
            delete_eventsource(kubectl, k8s_namespace)
            await pgsetup.cleanup(spec, pg_dsn, namespace=k8s_namespace, name=NAME)
        answers.append(wanted)
        return wanted

    adapter = adapter_for(
        spec,
        k8s_namespace,
        redis_client,
        pg_dsn,
        still_wanted=operator_acts_right_after_the_first_check,
    )
    async with running(adapter, redis_client, adapter.source, ready=False) as task:
        await assert_stopped_as_deleted(task, adapter, redis_client, k8s_namespace)
    assert answers == [True, False]  # the check after creating saw the deletion
    assert await slot_and_publication(pg, spec, k8s_namespace) == (False, False)


async def test_an_adapter_started_after_the_deletion_began_creates_nothing(
    pg: PG,
    table_name: str,
    held_eventsource: PostgresSource,
    kubectl: Any,
    k8s_namespace: str,
    kube_api: KubeApi,
    redis_client: aioredis.Redis,
    pg_dsn: str,
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    spec = held_eventsource
    delete_eventsource(kubectl, k8s_namespace)
    adapter = adapter_for(
        spec,
        k8s_namespace,
        redis_client,
        pg_dsn,
        still_wanted=eventsource_still_wanted(kube_api, k8s_namespace, NAME),
    )
    async with running(adapter, redis_client, adapter.source, ready=False) as task:
        await assert_stopped_as_deleted(task, adapter, redis_client, k8s_namespace)
    assert await slot_and_publication(pg, spec, k8s_namespace) == (False, False)


async def test_an_eventsource_that_is_gone_or_unreachable_answers_still_wanted_safely(
    tidings_crds: None, k8s_namespace: str, kube_api: KubeApi, kubeconfig: Path
) -> None:
    assert await eventsource_still_wanted(kube_api, k8s_namespace, "never-created")() is False
    # An API that cannot answer must not stop the capture.
    away = KubeApi.from_config(str(kubeconfig))
    away.host = "http://127.0.0.1:1"
    try:
        assert await eventsource_still_wanted(away, k8s_namespace, NAME)() is True
    finally:
        await away.close()


async def test_tidings_source_exits_0_once_its_eventsource_is_deleted_while_it_streams(
    pg: PG,
    table_name: str,
    held_eventsource: PostgresSource,
    kubectl: Any,
    k8s_namespace: str,
    kubeconfig: Path,
    redis_url: str,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    spec = held_eventsource
    slot = pgsetup.names(spec, k8s_namespace, NAME).slot
    # As the operator runs it: the spec in the environment (so it does not poll
    # the EventSource), the DSN too.
    monkeypatch.setenv(SPEC_ENV, json.dumps({"postgres": spec.model_dump(by_alias=True)}))
    monkeypatch.setenv("TIDINGS_PG_DSN", pg_dsn)
    process = start_adapter(
        "postgres",
        f"{k8s_namespace}/{NAME}",
        redis_url,
        "--kubeconfig",
        kubeconfig,
        "--lease-seconds",
        "3",
    )
    try:

        async def slot_active() -> bool:
            cursor = await pg.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            )
            row = await cursor.fetchone()
            return bool(row and row[0])

        await eventually(slot_active, within=60)
        delete_eventsource(kubectl, k8s_namespace)
        await pgsetup.cleanup(spec, pg_dsn, namespace=k8s_namespace, name=NAME)
        await stays_gone(pg, spec, k8s_namespace, 3.0)
        assert await asyncio.to_thread(process.wait, 20) == 0
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
    assert await slot_and_publication(pg, spec, k8s_namespace) == (False, False)


# --- a slot created anew ---------------------------------------------------------------


async def test_a_slot_dropped_by_hand_is_reported_as_recreated_by_this_and_later_adapters(
    pg: PG,
    table_name: str,
    source_name: tuple[str, str],
    redis_client: aioredis.Redis,
    pg_dsn: str,
    pg_cleanup: list[tuple[PostgresSource, str, str]],
) -> None:
    namespace, name = source_name
    spec = PostgresSource.model_validate(
        {"connectionSecretRef": {"name": "db", "key": "dsn"}, "tables": [table_name]}
    )
    pg_cleanup.append((spec, namespace, name))
    source = compiled(namespace, name, "postgres")
    slot = pgsetup.names(spec, namespace, name).slot
    status_key = keys.adapter_state(namespace, name)

    def adapter(dsn: str = pg_dsn) -> PostgresAdapter:
        return PostgresAdapter(source, spec, redis_client, dsn=dsn, backoff_max=0.5)

    async def report_of_a_new_adapter(dsn: str = pg_dsn) -> status.AdapterStatus:
        await redis_client.hdel(status_key, status.FIELD)  # type: ignore[misc]
        async with running(adapter(dsn), redis_client, source):
            reported = await status.read(redis_client, namespace, name)
        assert reported is not None and reported.state == "Running"
        return reported

    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    first = await report_of_a_new_adapter()
    assert "slotRecreated" not in first.details  # a first slot misses nothing
    async with running(adapter(), redis_client, source):
        await pg.execute(f"INSERT INTO {table_name} VALUES (1)")
        await wait_for_events(redis_client, source, 1)
    streamed_up_to = (await journal.read_state(redis_client, source))["lsn"]
    assert streamed_up_to != "0/0"

    async def slot_released() -> bool:
        # The adapter has stopped; its walsender lets go of the slot a moment later.
        cursor = await pg.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        )
        row = await cursor.fetchone()
        return row is not None and not row[0]

    await eventually(slot_released)
    await pg.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    await pg.execute(f"INSERT INTO {table_name} VALUES (2)")  # nobody captures this one
    before = datetime.now(UTC).replace(microsecond=0)

    await redis_client.hdel(status_key, status.FIELD)  # type: ignore[misc]
    async with running(adapter(), redis_client, source):
        reported = await status.read(redis_client, namespace, name)
        await pg.execute(f"INSERT INTO {table_name} VALUES (3)")
        events = await wait_for_events(redis_client, source, 2)
    assert reported is not None and reported.state == "Running"  # the first Running report
    recreated = reported.details["slotRecreated"]
    assert recreated["afterLsn"] == streamed_up_to
    at = datetime.strptime(recreated["at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= at <= datetime.now(UTC) + timedelta(seconds=1)
    assert [e.data["new"]["id"] for e in events] == [1, 3]

    # A restarted adapter reports it again, from the state in Redis...
    assert (await report_of_a_new_adapter()).details["slotRecreated"] == recreated
    # ...even in its first report, an error before it reached the database.
    await redis_client.hdel(status_key, status.FIELD)  # type: ignore[misc]
    unreachable = adapter("postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=2")
    async with running(unreachable, redis_client, source, ready=False):

        async def retrying() -> status.AdapterStatus | None:
            current = await status.read(redis_client, namespace, name)
            return current if current and current.state == "Retrying" else None

        failing = await eventually(retrying)
    assert failing.details["slotRecreated"] == recreated


async def test_tidings_source_reading_the_api_exits_0_at_once_for_an_eventsource_being_deleted(
    pg: PG,
    table_name: str,
    held_eventsource: PostgresSource,
    kubectl: Any,
    k8s_namespace: str,
    kubeconfig: Path,
    redis_url: str,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    delete_eventsource(kubectl, k8s_namespace)
    monkeypatch.setenv("TIDINGS_PG_DSN", pg_dsn)
    process = start_adapter(
        "postgres",
        f"{k8s_namespace}/{NAME}",
        redis_url,
        "--kubeconfig",
        kubeconfig,
        "--lease-seconds",
        "3",
        without=(SPEC_ENV,),
    )
    try:
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
    assert await slot_and_publication(pg, held_eventsource, k8s_namespace) == (False, False)
