"""kill -9 of the `tidings source postgres` process while rows stream in:
after restarts, every row is in the stream exactly once, in commit order."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from source_helpers import compiled, eventually, start_adapter, stream_events

from tidings.api.types import PostgresSource, SecretKeyRef
from tidings.sources import pgsetup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROWS = 3000


def write_manifest(path: Path, namespace: str, name: str, table: str, dsn: str) -> None:
    documents = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db", "namespace": namespace},
            "stringData": {"dsn": dsn},
        },
        {
            "apiVersion": "tidings.dev/v1alpha1",
            "kind": "EventSource",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "postgres": {
                    "connectionSecretRef": {"name": "db", "key": "dsn"},
                    "tables": [f"public.{table}"],
                }
            },
        },
    ]
    path.write_text(yaml.safe_dump_all(documents))


def start(manifest: Path, namespace: str, name: str, redis_url: str) -> subprocess.Popen[bytes]:
    return start_adapter("postgres", f"{namespace}/{name}", redis_url, "--manifest", manifest)


async def test_kill_9_mid_stream_loses_nothing_and_repeats_nothing(
    pg: Any,
    table_name: str,
    tmp_path: Path,
    redis_client: aioredis.Redis,
    redis_url: str,
    pg_dsn: str,
    source_name: tuple[str, str],
) -> None:
    namespace, name = source_name
    source = compiled(namespace, name, "postgres")
    spec = PostgresSource(
        connection_secret_ref=SecretKeyRef(name="db", key="dsn"), tables=[f"public.{table_name}"]
    )
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, note text)")
    manifest = tmp_path / "source.yaml"
    write_manifest(manifest, namespace, name, table_name, pg_dsn)
    process = start(manifest, namespace, name, redis_url)
    try:
        # The slot exists once the adapter has set up; rows before that are not captured.
        async def slot_ready() -> bool:
            cursor = await pg.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active",
                (pgsetup.names(spec, namespace, name).slot,),
            )
            return bool((await cursor.fetchone())[0])

        await eventually(slot_ready)

        async def write_rows() -> None:
            row = 0
            while row < ROWS:
                # mostly one-row transactions, some larger
                size = min(1 if row % 7 else 25, ROWS - row)
                async with pg.transaction():
                    await pg.execute(
                        f"INSERT INTO {table_name} SELECT g, 'n' || g "
                        f"FROM generate_series({row + 1}, {row + size}) g"
                    )
                row += size
                await asyncio.sleep(0.001)

        writer = asyncio.create_task(write_rows())
        kills = 0
        for threshold in (300, 1200, 2200):

            async def reached(threshold: int = threshold) -> bool:
                return await redis_client.xlen(source.stream) >= threshold

            await eventually(reached, within=60)
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            kills += 1
            process = start(manifest, namespace, name, redis_url)
        await writer

        async def all_rows() -> bool:
            return await redis_client.xlen(source.stream) >= ROWS

        await eventually(all_rows, within=90)
        await asyncio.sleep(1.0)  # a duplicate written late would show up here
        ids = [e.data["new"]["id"] for e in await stream_events(redis_client, source)]
        assert kills == 3
        assert len(ids) == ROWS, f"{len(ids) - len(set(ids))} duplicates"
        assert ids == list(range(1, ROWS + 1))
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        await pgsetup.cleanup(spec, pg_dsn, namespace=namespace, name=name)
