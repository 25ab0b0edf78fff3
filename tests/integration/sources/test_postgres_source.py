"""The Postgres source against a real PostgreSQL 15 (wal_level=logical) and a
real Redis: operations, types, transactions, restarts, WAL, errors, cleanup."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from source_helpers import compiled, eventually, running, stream_events, wait_for_events

from tidings.api import keys
from tidings.api.types import PostgresSource, SecretKeyRef
from tidings.sources import pgsetup, status
from tidings.sources.postgres import PostgresAdapter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PG = Any


def spec_for(*tables: str, **extra: Any) -> PostgresSource:
    return PostgresSource(
        connection_secret_ref=SecretKeyRef(name="db", key="dsn"),
        tables=list(tables),
        **extra,
    )


@pytest.fixture
def make_adapter(
    redis_client: aioredis.Redis,
    pg_dsn: str,
    source_name: tuple[str, str],
    pg_cleanup: list[tuple[PostgresSource, str, str]],
) -> Any:
    def make(spec: PostgresSource, dsn: str | None = None, **options: Any) -> PostgresAdapter:
        namespace, name = source_name
        pg_cleanup.append((spec, namespace, name))
        options.setdefault("backoff_max", 0.5)
        return PostgresAdapter(
            compiled(namespace, name, "postgres"),
            spec,
            redis_client,
            dsn=dsn or pg_dsn,
            **options,
        )

    return make


async def test_insert_update_delete_become_cloudevents_in_commit_order(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, email text, plan text)")
    adapter = make_adapter(spec_for(f"public.{table_name}"))
    async with running(adapter, redis_client, adapter.source):
        await pg.execute(f"INSERT INTO {table_name} VALUES (1, 'a@x.io', 'free')")
        await pg.execute(f"UPDATE {table_name} SET plan = 'pro' WHERE id = 1")
        await pg.execute(f"DELETE FROM {table_name} WHERE id = 1")
        events = await wait_for_events(redis_client, adapter.source, 3)

    assert [e.type for e in events] == [
        "dev.tidings.postgres.insert",
        "dev.tidings.postgres.update",
        "dev.tidings.postgres.delete",
    ]
    assert {e.subject for e in events} == {f"public.{table_name}"}
    assert {e.source for e in events} == {adapter.source.api_path}
    insert, update, delete = (e.data for e in events)
    assert insert["new"] == {"id": 1, "email": "a@x.io", "plan": "free"}
    assert insert["old"] is None
    assert update["new"] == {"id": 1, "email": "a@x.io", "plan": "pro"}
    assert update["old"] is None  # REPLICA IDENTITY DEFAULT, key unchanged
    assert delete["new"] is None
    assert delete["old"] == {"id": 1}  # DEFAULT: the key columns only
    for data in (insert, update, delete):
        assert data["schema"] == "public" and data["table"] == table_name
        assert isinstance(data["xid"], int)
        assert data["commitTime"].endswith("Z")
        assert "/" in data["lsn"]
    assert len({e.id for e in events}) == 3
    assert events[0].time == insert["commitTime"]


async def test_column_types_are_decoded_faithfully(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis
) -> None:
    await pg.execute("DROP TYPE IF EXISTS cdc_mood CASCADE")
    await pg.execute("CREATE TYPE cdc_mood AS ENUM ('happy', 'sad')")
    await pg.execute(
        f"""CREATE TABLE {table_name} (
            id bigint PRIMARY KEY, flag boolean, small smallint, big bigint, ratio real,
            precise double precision, money_amount numeric(30, 10), not_a_number numeric,
            name text, code char(3), label varchar(10), uid uuid, doc json, docb jsonb,
            born date, at_time time, at_tz timetz, created timestamp, changed timestamptz,
            forever timestamptz, span interval, raw bytea, tags text[], grid int[][],
            stamps timestamptz[], mood cdc_mood, moods cdc_mood[], addr inet, nothing text
        )"""
    )
    adapter = make_adapter(spec_for(table_name))
    async with running(adapter, redis_client, adapter.source):
        await pg.execute(
            f"""INSERT INTO {table_name} VALUES (
                9007199254740993, true, -3, 9223372036854775807, 1.5, 0.1,
                12345678901234567890.0123456789, 'NaN', 'héllo "q"', 'ab', 'xyz',
                'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{"a": [1, 2.5]}}', '{{"b": null}}',
                '2024-05-01', '12:30:00.25', '12:30:00+02', '2024-05-01 12:30:00.5',
                '2024-05-01 12:30:00+02', 'infinity', '1 day 2 hours', '\\x00ff41',
                ARRAY['a b', NULL, ''], '{{{{1,2}},{{3,4}}}}',
                ARRAY['2024-05-01 00:00:00+00'::timestamptz], 'sad', '{{happy,sad}}',
                '10.0.0.1/8', NULL
            )"""
        )
        (event,) = await wait_for_events(redis_client, adapter.source, 1)

    assert event.data["new"] == {
        "id": 9007199254740993,
        "flag": True,
        "small": -3,
        "big": 9223372036854775807,
        "ratio": 1.5,
        "precise": 0.1,
        "money_amount": "12345678901234567890.0123456789",
        "not_a_number": "NaN",
        "name": 'héllo "q"',
        "code": "ab ",
        "label": "xyz",
        "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "doc": {"a": [1, 2.5]},
        "docb": {"b": None},
        "born": "2024-05-01",
        "at_time": "12:30:00.25",
        "at_tz": "12:30:00+02:00",
        "created": "2024-05-01T12:30:00.5",
        "changed": "2024-05-01T10:30:00Z",
        "forever": "infinity",
        "span": "P1DT2H",
        "raw": base64.b64encode(b"\x00\xffA").decode(),
        "tags": ["a b", None, ""],
        "grid": [[1, 2], [3, 4]],
        "stamps": ["2024-05-01T00:00:00Z"],
        "mood": "sad",
        "moods": ["happy", "sad"],
        "addr": "10.0.0.1/8",
        "nothing": None,
    }


async def test_a_transaction_is_appended_atomically_and_in_order(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis, redis_url: str
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v text)")
    adapter = make_adapter(spec_for(table_name))
    rows = 2000
    seen_lengths: set[int] = set()
    async with running(adapter, redis_client, adapter.source):
        watcher = aioredis.from_url(redis_url)

        done = asyncio.Event()

        async def watch() -> None:
            # Stopped by a flag, not cancelled: redis-py can hang on a command
            # cancelled while its reply is being read.
            while not done.is_set():
                seen_lengths.add(await watcher.xlen(adapter.source.stream))
                await asyncio.sleep(0)

        watching = asyncio.create_task(watch())
        async with pg.transaction():
            for start in range(0, rows, 500):
                await pg.execute(
                    f"INSERT INTO {table_name} SELECT g, 'row ' || g "
                    f"FROM generate_series({start + 1}, {start + 500}) g"
                )
        await pg.execute(f"INSERT INTO {table_name} VALUES (0, 'after')")
        events = await wait_for_events(redis_client, adapter.source, rows + 1)
        done.set()
        await watching
        await watcher.aclose()

    # Readers only ever saw none of the transaction or all of it.
    assert seen_lengths <= {0, rows, rows + 1}
    assert [e.data["new"]["id"] for e in events] == [*range(1, rows + 1), 0]
    assert len({e.data["xid"] for e in events[:rows]}) == 1


async def test_a_huge_transaction_is_written_in_chunks_without_loss(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    adapter = make_adapter(spec_for(table_name), batch_events=100)
    async with running(adapter, redis_client, adapter.source):
        await pg.execute(f"INSERT INTO {table_name} SELECT generate_series(1, 350)")
        events = await wait_for_events(redis_client, adapter.source, 350)
    assert [e.data["new"]["id"] for e in events] == list(range(1, 351))
    assert [e.id.rsplit(":", 1)[1] for e in events] == [str(i) for i in range(350)]


async def test_unchanged_toast_is_told_apart_from_null(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, big text, note text)")
    full = f"{table_name}_full"
    await pg.execute(f"CREATE TABLE {full} (id int PRIMARY KEY, big text, note text)")
    await pg.execute(f"ALTER TABLE {full} REPLICA IDENTITY FULL")
    # Random text does not compress, so it is stored out of line (TOASTed).
    big = "".join(f"{n:08x}" for n in range(5000)) + os.urandom(8).hex()
    adapter = make_adapter(spec_for(table_name, full))
    async with running(adapter, redis_client, adapter.source):
        for table in (table_name, full):
            await pg.execute(f"INSERT INTO {table} VALUES (1, %s, NULL)", (big,))
            await pg.execute(f"UPDATE {table} SET note = 'touched' WHERE id = 1")
            await pg.execute(f"UPDATE {table} SET note = NULL, big = NULL WHERE id = 1")
        events = await wait_for_events(redis_client, adapter.source, 6)

    _, touched, nulled, _, touched_full, _ = (e.data for e in events)
    assert "big" not in touched["new"]
    assert touched["unchangedToast"] == ["big"]
    assert touched["new"]["note"] == "touched"
    assert nulled["new"] == {"id": 1, "big": None, "note": None}
    assert "unchangedToast" not in nulled
    # With REPLICA IDENTITY FULL the old row carries the value, so it is filled in.
    assert touched_full["new"]["big"] == big
    assert "unchangedToast" not in touched_full
    assert touched_full["old"] == {"id": 1, "big": big, "note": None}


async def test_replica_identity_full_sends_the_whole_old_row(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v text)")
    await pg.execute(f"ALTER TABLE {table_name} REPLICA IDENTITY FULL")
    adapter = make_adapter(spec_for(table_name))
    async with running(adapter, redis_client, adapter.source):
        await pg.execute(f"INSERT INTO {table_name} VALUES (1, 'a')")
        await pg.execute(f"UPDATE {table_name} SET v = 'b'")
        await pg.execute(f"DELETE FROM {table_name}")
        _, update, delete = await wait_for_events(redis_client, adapter.source, 3)
    assert update.data["old"] == {"id": 1, "v": "a"}
    assert update.data["new"] == {"id": 1, "v": "b"}
    assert delete.data["old"] == {"id": 1, "v": "b"}


async def test_only_the_listed_operations_and_columns_are_captured(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, email text, secret text)")
    spec = spec_for(
        table_name,
        operations=["insert", "truncate"],
        columns={table_name: ["id", "email"]},
    )
    adapter = make_adapter(spec)
    async with running(adapter, redis_client, adapter.source):
        await pg.execute(f"INSERT INTO {table_name} VALUES (1, 'a@x.io', 'hunter2')")
        await pg.execute(f"UPDATE {table_name} SET email = 'b@x.io'")
        await pg.execute(f"DELETE FROM {table_name}")
        await pg.execute(f"TRUNCATE {table_name}")
        events = await wait_for_events(redis_client, adapter.source, 2)
        await pg.execute(f"INSERT INTO {table_name} VALUES (2, 'c@x.io', 'x')")
        events = await wait_for_events(redis_client, adapter.source, 3)
    assert [e.type for e in events] == [
        "dev.tidings.postgres.insert",
        "dev.tidings.postgres.truncate",
        "dev.tidings.postgres.insert",
    ]
    assert events[0].data["new"] == {"id": 1, "email": "a@x.io"}
    assert events[1].data["new"] is None and events[1].data["table"] == table_name


async def test_excluded_columns_never_leave_the_database_and_updates_still_work(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis
) -> None:
    await pg.execute(
        f"CREATE TABLE {table_name} (id int PRIMARY KEY, email text, password_hash text)"
    )
    spec = spec_for(table_name, columns={table_name: ["email"]})
    adapter = make_adapter(spec)
    async with running(adapter, redis_client, adapter.source):
        # PostgreSQL 15 column list: the wanted column plus the key, which
        # UPDATE/DELETE publishing needs (without it the app's UPDATEs fail).
        cursor = await pg.execute(
            "SELECT attnames::text[] FROM pg_publication_tables "
            "WHERE pubname = %s AND tablename = %s",
            (adapter.names.publication, table_name),
        )
        assert (await cursor.fetchone())[0] == ["id", "email"]
        await pg.execute(f"INSERT INTO {table_name} VALUES (1, 'a@x.io', 'h1')")
        await pg.execute(f"UPDATE {table_name} SET email = 'b@x.io', password_hash = 'h2'")
        await pg.execute(f"DELETE FROM {table_name}")
        events = await wait_for_events(redis_client, adapter.source, 3)
    assert [e.data["new"] for e in events] == [{"email": "a@x.io"}, {"email": "b@x.io"}, None]
    assert "h1" not in str([e.data for e in events]) and "h2" not in str([e.data for e in events])


async def test_a_generated_column_in_the_column_list_does_not_break_the_publication(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis
) -> None:
    await pg.execute(
        f"CREATE TABLE {table_name} (id int PRIMARY KEY, price int, "
        "total int GENERATED ALWAYS AS (price * 2) STORED)"
    )
    spec = spec_for(table_name, columns={table_name: ["price", "total"]})
    adapter = make_adapter(spec)
    async with running(adapter, redis_client, adapter.source):
        await pg.execute(f"INSERT INTO {table_name} (id, price) VALUES (1, 21)")
        (insert,) = await wait_for_events(redis_client, adapter.source, 1)
    # PostgreSQL 15 does not publish generated columns at all.
    assert insert.data["new"] == {"price": 21}


async def test_a_restart_resumes_with_no_loss_and_no_duplicates(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    spec = spec_for(table_name)
    first = make_adapter(spec)
    async with running(first, redis_client, first.source):
        await pg.execute(f"INSERT INTO {table_name} SELECT generate_series(1, 10)")
        await wait_for_events(redis_client, first.source, 10)
    # Changes while no adapter runs stay in the slot.
    await pg.execute(f"INSERT INTO {table_name} SELECT generate_series(11, 20)")
    second = make_adapter(spec)
    async with running(second, redis_client, second.source):
        await pg.execute(f"INSERT INTO {table_name} SELECT generate_series(21, 30)")
        await wait_for_events(redis_client, second.source, 30)
        await asyncio.sleep(0.5)  # room for a duplicate to show up, if one were coming
        events = await stream_events(redis_client, second.source)
    assert [e.data["new"]["id"] for e in events] == list(range(1, 31))


async def test_transactions_the_server_sends_again_are_not_appended_twice(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis
) -> None:
    """Transactions already in Redis that the server sends again (after a crash
    between the Redis write and the slot confirmation, or inside a transaction
    written in chunks) are skipped by the position guard. A copy of the slot
    taken earlier, with the resume LSN in Redis rolled back, replays them on purpose."""
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    first = make_adapter(spec_for(table_name))
    async with running(first, redis_client, first.source):
        await pg.execute(f"INSERT INTO {table_name} SELECT generate_series(1, 5)")
        await wait_for_events(redis_client, first.source, 5)
    behind = f"{first.names.slot[:50]}_copy"
    await pg.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", (first.names.slot, behind))
    try:
        second = make_adapter(spec_for(table_name))
        async with running(second, redis_client, second.source):
            await pg.execute(f"INSERT INTO {table_name} SELECT generate_series(6, 10)")
            await wait_for_events(redis_client, second.source, 10)
        # This slot was confirmed only up to row 5: it sends rows 6..10 again.
        state_key = keys.adapter_state(first.source.namespace, first.source.name)
        await redis_client.hset(state_key, "lsn", "0/0")
        replaying = make_adapter(spec_for(table_name, slot_name=behind))
        async with running(replaying, redis_client, replaying.source):
            await pg.execute(f"INSERT INTO {table_name} VALUES (11)")
            await wait_for_events(redis_client, replaying.source, 11)
            await asyncio.sleep(0.5)
        assert replaying.events_skipped == 5
        events = await stream_events(redis_client, replaying.source)
        assert [e.data["new"]["id"] for e in events] == list(range(1, 12))
    finally:
        # The server ends the stopped adapter's walsender a moment later; a drop
        # before that fails with ObjectInUse and would hide the test's own verdict.
        for _ in range(100):
            cursor = await pg.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active", (behind,)
            )
            if not await cursor.fetchall():
                break
            await asyncio.sleep(0.1)
        await pg.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (behind,),
        )


async def test_the_slot_is_confirmed_only_up_to_what_redis_holds(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    adapter = make_adapter(spec_for(table_name))
    async with running(adapter, redis_client, adapter.source):
        await pg.execute(f"INSERT INTO {table_name} VALUES (1)")
        await wait_for_events(redis_client, adapter.source, 1)
        state = await redis_client.hgetall(
            keys.adapter_state(adapter.source.namespace, adapter.source.name)
        )

        async def confirmed() -> Any:
            cursor = await pg.execute(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                (adapter.names.slot,),
            )
            row = await cursor.fetchone()
            return row[0] if row and row[0] == state[b"lsn"].decode() else None

        await eventually(confirmed)


async def test_an_idle_source_confirms_wal_written_to_other_tables(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis, pg_dsn: str
) -> None:
    """Keepalives move the slot on when the captured tables are quiet, so a busy
    database does not pile up WAL for a quiet source."""
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    await pg.execute(f"CREATE TABLE {table_name}_other (id int PRIMARY KEY)")
    # Keepalives every second instead of every 30 s.
    dsn = f"{pg_dsn}?options=-c%20wal_sender_timeout%3D2s"
    adapter = make_adapter(spec_for(table_name), dsn=dsn, status_interval=0.5)
    async with running(adapter, redis_client, adapter.source):
        await pg.execute(f"INSERT INTO {table_name}_other SELECT generate_series(1, 1000)")
        cursor = await pg.execute("SELECT pg_current_wal_lsn()::text")
        written = (await cursor.fetchone())[0]

        async def caught_up() -> bool:
            cursor = await pg.execute(
                "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (written, adapter.names.slot),
            )
            return bool((await cursor.fetchone())[0])

        await eventually(caught_up, within=15)
    assert await stream_events(redis_client, adapter.source) == []


async def test_wal_retention_over_the_threshold_is_reported(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis, pg_dsn: str
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, pad text)")
    spec = spec_for(table_name, max_retained_wal_bytes=1 << 20)
    adapter = make_adapter(spec, wal_check_interval=0.2)
    async with running(adapter, redis_client, adapter.source):
        pass
    # The adapter is down; about 3 MB of WAL pile up for its slot.
    await pg.execute(
        f"INSERT INTO {table_name} SELECT g, repeat('x', 1000) FROM generate_series(1, 3000) g"
    )
    namespace, name = adapter.source.namespace, adapter.source.name
    retention = await pgsetup.check_wal_retention(spec, pg_dsn, namespace=namespace, name=name)
    assert retention.exists and not retention.active
    assert retention.over_threshold and retention.retained_bytes > 1 << 20

    restarted = make_adapter(spec, wal_check_interval=0.2)
    async with running(restarted, redis_client, restarted.source):

        async def reported() -> Any:
            current = await status.read(redis_client, namespace, name)
            return current if current and "walRetainedBytes" in current.details else None

        current = await eventually(reported)
    conditions = {c.type: c for c in status.conditions(current)}
    assert conditions["Capturing"].status == "True"
    assert conditions["WalRetained"].reason in ("RetainedWalOverThreshold", "WithinThreshold")
    assert str(1 << 20) in conditions["WalRetained"].message


async def test_cleanup_drops_the_slot_and_the_publication_it_created(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis, pg_dsn: str
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    spec = spec_for(table_name)
    adapter = make_adapter(spec)
    names = adapter.names
    # A cleanup while the adapter still streams ends its walsender first.
    async with running(adapter, redis_client, adapter.source):
        result = await pgsetup.cleanup(
            spec, pg_dsn, namespace=adapter.source.namespace, name=adapter.source.name
        )
        await adapter.stop()
    assert result == pgsetup.Cleanup(slot_dropped=True, publication_dropped=True)
    cursor = await pg.execute(
        "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s), "
        "(SELECT count(*) FROM pg_publication WHERE pubname = %s)",
        (names.slot, names.publication),
    )
    assert await cursor.fetchone() == (0, 0)
    again = await pgsetup.cleanup(
        spec, pg_dsn, namespace=adapter.source.namespace, name=adapter.source.name
    )
    assert again == pgsetup.Cleanup(slot_dropped=False, publication_dropped=False)


async def test_a_publication_tidings_did_not_create_is_used_and_left_alone(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis, pg_dsn: str
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    publication = f"{table_name}_mine"
    await pg.execute(f"CREATE PUBLICATION {publication} FOR TABLE {table_name}")
    try:
        spec = spec_for(table_name, publication_name=publication)
        adapter = make_adapter(spec)
        async with running(adapter, redis_client, adapter.source):
            await pg.execute(f"INSERT INTO {table_name} VALUES (1)")
            await wait_for_events(redis_client, adapter.source, 1)
        result = await pgsetup.cleanup(
            spec, pg_dsn, namespace=adapter.source.namespace, name=adapter.source.name
        )
        assert result == pgsetup.Cleanup(slot_dropped=True, publication_dropped=False)
        cursor = await pg.execute(
            "SELECT count(*) FROM pg_publication WHERE pubname = %s", (publication,)
        )
        assert (await cursor.fetchone())[0] == 1
    finally:
        await pg.execute(f"DROP PUBLICATION IF EXISTS {publication}")


# --- errors a user can cause: reported with a reason, retried, recovered from ------


async def reported_error(
    adapter: PostgresAdapter, redis_client: aioredis.Redis, reason: str
) -> status.AdapterStatus:
    task = asyncio.create_task(adapter.run())
    try:

        async def failed() -> status.AdapterStatus | None:
            current = await status.read(redis_client, adapter.source.namespace, adapter.source.name)
            return current if current and current.reason == reason else None

        current: status.AdapterStatus = await eventually(failed)
        assert current.state == "Retrying"
        return current
    finally:
        await adapter.stop()
        await asyncio.wait_for(task, 20)


async def test_a_wrong_dsn_is_reported_as_connection_failed(
    make_adapter: Any, redis_client: aioredis.Redis, table_name: str
) -> None:
    adapter = make_adapter(
        spec_for(table_name), dsn="postgresql://nobody:secret-pw@127.0.0.1:1/nodb"
    )
    current = await reported_error(adapter, redis_client, "ConnectionFailed")
    assert "connectionSecretRef" in current.message
    assert "secret-pw" not in current.message


async def test_a_role_without_replication_is_told_how_to_grant_it(
    pg: PG, make_adapter: Any, redis_client: aioredis.Redis, pg_dsn: str, table_name: str
) -> None:
    role = f"{table_name}_role"
    await pg.execute(f"CREATE ROLE {role} LOGIN NOREPLICATION")
    try:
        dsn = psycopg.conninfo.make_conninfo(pg_dsn, user=role)
        adapter = make_adapter(spec_for(table_name), dsn=dsn)
        current = await reported_error(adapter, redis_client, "MissingReplicationPrivilege")
        assert f"ALTER ROLE {role} WITH REPLICATION" in current.message.replace('"', "")
    finally:
        await pg.execute(f"DROP ROLE {role}")


async def test_wal_level_not_logical_is_reported(
    replica_level_pg_dsn: str, make_adapter: Any, redis_client: aioredis.Redis
) -> None:
    adapter = make_adapter(spec_for("public.users"), dsn=replica_level_pg_dsn)
    current = await reported_error(adapter, redis_client, "WalLevelNotLogical")
    assert "wal_level=replica" in current.message
    assert "wal_level = logical" in current.message


async def test_a_missing_table_is_reported_then_picked_up_once_created(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis
) -> None:
    await pg.execute(f"CREATE TABLE {table_name}_a (id int PRIMARY KEY)")
    adapter = make_adapter(spec_for(f"{table_name}_a", f"public.{table_name}"))
    task = asyncio.create_task(adapter.run())
    try:

        async def reason() -> str | None:
            current = await status.read(redis_client, adapter.source.namespace, adapter.source.name)
            return current.reason if current else None

        assert await eventually(reason) == "TableNotFound"
        current = await status.read(redis_client, adapter.source.namespace, adapter.source.name)
        assert current is not None
        assert f"spec.postgres.tables[1]: table public.{table_name} not found" in current.message
        await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")

        async def streaming() -> bool:
            return await reason() == "Streaming"

        await eventually(streaming)
        await pg.execute(f"INSERT INTO {table_name} VALUES (7)")
        (event,) = await wait_for_events(redis_client, adapter.source, 1)
        assert event.data["new"] == {"id": 7}
    finally:
        await adapter.stop()
        await asyncio.wait_for(task, 20)


async def test_a_table_without_primary_key_is_refused_before_it_breaks_updates(
    pg: PG, table_name: str, make_adapter: Any, redis_client: aioredis.Redis
) -> None:
    await pg.execute(f"CREATE TABLE {table_name} (id int, v text)")
    adapter = make_adapter(spec_for(table_name))
    current = await reported_error(adapter, redis_client, "NoReplicaIdentity")
    assert "REPLICA IDENTITY FULL" in current.message
    # Nothing was published, so the application's updates still work.
    await pg.execute(f"INSERT INTO {table_name} VALUES (1, 'a')")
    await pg.execute(f"UPDATE {table_name} SET v = 'b'")
