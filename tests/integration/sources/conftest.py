"""Fixtures for the source adapters: a fresh EventSource identity per test (so
slots and publications never collide), the adapter running as a task, and the
events it wrote, read back from the real stream."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from tidings.api.types import PostgresSource
from tidings.cli.redis_server import RedisServer
from tidings.sources import pgsetup


@pytest.fixture(scope="session")
def sources_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server (AOF on) for these tests: other suites flush theirs."""
    server = RedisServer(tmp_path_factory.mktemp("sources-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(sources_redis: RedisServer) -> str:
    return sources_redis.url


@pytest_asyncio.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def source_name() -> tuple[str, str]:
    return "src", f"t{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture
async def pg(pg_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def table_name() -> str:
    return f"cdc_{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture
async def pg_cleanup(pg_dsn: str) -> AsyncIterator[list[tuple[PostgresSource, str, str]]]:
    """Register (spec, namespace, name): its slot and publication are dropped after the test."""
    owned: list[tuple[PostgresSource, str, str]] = []
    yield owned
    for spec, namespace, name in owned:
        await pgsetup.cleanup(spec, pg_dsn, namespace=namespace, name=name)


# --- a second PostgreSQL, with wal_level=replica, for the error test ---------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def replica_level_pg_dsn() -> Iterator[str]:
    """A throwaway PostgreSQL started with wal_level=replica (not logical)."""
    pg_bin = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
    if not (pg_bin / "initdb").exists():
        pytest.fail(f"no PostgreSQL binaries under {pg_bin}; set PG_BIN")
    root = Path(tempfile.mkdtemp(prefix="tidings-pg-replica-", dir="/var/tmp"))
    as_pg: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(root, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    port = _free_port()
    subprocess.run(
        [
            *as_pg,
            str(pg_bin / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        cwd="/",
    )
    options = (
        f"-c wal_level=replica -c port={port} -c listen_addresses=127.0.0.1 "
        "-c unix_socket_directories='' -c fsync=off"
    )
    subprocess.run(
        [
            *as_pg,
            str(pg_bin / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-w",
            "-l",
            str(root / "log"),
            "start",
        ],
        check=True,
        capture_output=True,
        cwd="/",
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_pg, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            cwd="/",
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tidings_crds(kubectl: Any) -> None:
    """The EventSource and Trigger CRDs, applied to the test cluster (idempotent)."""
    crds = Path(__file__).resolve().parents[3] / "crds"
    applied = kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    assert applied.returncode == 0, applied.stderr
    for name in ("eventsources.tidings.dev", "triggers.tidings.dev"):
        ready = kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s")
        assert ready.returncode == 0, ready.stderr
