"""`tidings source --listen`: the adapter process's /healthz, /readyz and
/metrics, scraped over HTTP from real adapter processes (Redis, PostgreSQL and
a kube-apiserver are real)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import redis.asyncio as aioredis
import yaml
from prometheus_client.parser import text_string_to_metric_families
from source_helpers import compiled, eventually, start_adapter

from tidings.api.types import PostgresSource
from tidings.sources import journal
from tidings.sources.kubeapi import KubeApi
from tidings.sources.lease import LeaseElector, lease_name
from tidings.sources.schedule import SINCE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TIMEOUT = aiohttp.ClientTimeout(total=2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_manifests(path: Path, *documents: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(documents))
    return path


def eventsource(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


async def get(base: str, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.get(base + path) as response,
    ):
        return response.status, await response.text()


async def scrape(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, keyed by (name, labels)."""
    status, text = await get(base, "/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def serving(base: str, process: subprocess.Popen[bytes]) -> None:
    async def up() -> bool:
        assert process.poll() is None, f"the adapter exited with {process.returncode}"
        try:
            status, _ = await get(base, "/healthz")
        except (aiohttp.ClientError, TimeoutError):
            return False
        return status == 200

    await eventually(up, within=30)


async def ready(base: str) -> bool:
    status, _ = await get(base, "/readyz")
    return status == 200


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGCONT)  # in case a test stopped it
        process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0


async def test_a_standby_is_alive_but_not_ready_until_it_holds_the_lease_then_counts_ticks(
    tidings_crds: None,
    kubectl: Any,
    k8s_namespace: str,
    kubeconfig: Path,
    redis_client: aioredis.Redis,
    redis_url: str,
) -> None:
    name = "ticks"
    spec = {"schedule": {"cron": "* * * * *", "maxCatchUp": 3}}
    applied = kubectl("apply", "-f", "-", input=json.dumps(eventsource(k8s_namespace, name, spec)))
    assert applied.returncode == 0, applied.stderr
    # Counting since ten minutes ago: once it runs, it fires the 3 newest missed ticks.
    source = compiled(k8s_namespace, name, "schedule")
    await journal.set_state(redis_client, source, {SINCE: repr(time.time() - 600)})
    api = KubeApi.from_config(str(kubeconfig))
    other = LeaseElector(api, k8s_namespace, lease_name(name), "other-replica", duration=30.0)
    assert await other.try_acquire()
    base = f"http://127.0.0.1:{free_port()}"
    process = start_adapter(
        "schedule",
        f"{k8s_namespace}/{name}",
        redis_url,
        "--kubeconfig",
        kubeconfig,
        "--lease-seconds",
        "3",
        "--listen",
        base.removeprefix("http://"),
        without=("TIDINGS_EVENTSOURCE_SPEC",),
    )
    try:
        await serving(base, process)
        await asyncio.sleep(1.0)  # a few Lease attempts: it stays a standby
        status, body = await get(base, "/readyz")
        assert status == 503
        assert json.loads(body)["state"] == "Standby" and "Lease" in json.loads(body)["reason"]
        samples = await scrape(base)
        labels = {"eventsource": f"{k8s_namespace}/{name}"}
        assert sample(samples, "tidings_source_state", **labels, state="Standby") == 1
        assert sample(samples, "tidings_source_events_total", **labels) == 0
        assert await redis_client.xlen(source.stream) == 0

        await other.release()
        await eventually(lambda: ready(base), within=30)
        status, body = await get(base, "/readyz")
        assert json.loads(body) == {
            "ready": True,
            "eventsource": f"{k8s_namespace}/{name}",
            "state": "Running",
        }

        async def ticks_counted() -> dict[Any, float] | None:
            found = await scrape(base)
            written = sample(found, "tidings_source_events_total", **labels)
            return found if written is not None and written >= 3 else None

        # The 3 missed ticks at once (and one more should a minute begin meanwhile).
        samples = await eventually(ticks_counted, within=10)
        written = sample(samples, "tidings_source_events_total", **labels)
        assert written is not None and written <= await redis_client.xlen(source.stream) <= 4
        assert sample(samples, "tidings_source_state", **labels, state="Running") == 1
        assert sample(samples, "tidings_source_state", **labels, state="Standby") == 0
        last = sample(samples, "tidings_source_last_event_timestamp_seconds", **labels)
        assert last is not None and time.time() - 30 < last <= time.time()
    finally:
        stop(process)
        await api.close()


async def test_a_stopped_process_fails_the_liveness_check_and_passes_again_when_continued(
    tmp_path: Path, redis_client: aioredis.Redis, redis_url: str
) -> None:
    manifest = write_manifests(
        tmp_path / "source.yaml", eventsource("demo", "ticks", {"schedule": {"cron": "@hourly"}})
    )
    base = f"http://127.0.0.1:{free_port()}"
    process = start_adapter(
        "schedule", "demo/ticks", redis_url, "-f", manifest, "--listen", base[7:]
    )
    try:
        await serving(base, process)
        await eventually(lambda: ready(base), within=30)
        process.send_signal(signal.SIGSTOP)  # as wedged as a process gets
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await get(base, "/healthz")
        assert time.monotonic() - started < 5  # the probe's timeoutSeconds
        process.send_signal(signal.SIGCONT)
        assert await get(base, "/healthz") == (200, '{"ok": true}')
        assert await ready(base)
    finally:
        stop(process)


async def test_an_adapter_that_cannot_reach_redis_is_alive_not_ready_and_counts_its_errors(
    tmp_path: Path,
) -> None:
    manifest = write_manifests(
        tmp_path / "source.yaml", eventsource("demo", "ticks", {"schedule": {"cron": "@hourly"}})
    )
    base = f"http://127.0.0.1:{free_port()}"
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    process = start_adapter("schedule", "demo/ticks", nowhere, "-f", manifest, "--listen", base[7:])
    try:
        await serving(base, process)

        async def two_errors() -> dict[Any, float] | None:
            found = await scrape(base)
            count = sample(
                found,
                "tidings_source_errors_total",
                eventsource="demo/ticks",
                reason="RedisUnavailable",
            )
            return found if count is not None and count >= 2 else None

        samples = await eventually(two_errors, within=20)
        assert sample(samples, "tidings_source_state", eventsource="demo/ticks", state="Retrying")
        status, body = await get(base, "/readyz")
        assert status == 503
        assert "Retrying (RedisUnavailable)" in json.loads(body)["reason"]
        assert (await get(base, "/healthz"))[0] == 200
    finally:
        stop(process)


async def test_postgres_rows_are_counted_and_the_slot_gauges_are_served(
    tmp_path: Path,
    redis_client: aioredis.Redis,
    redis_url: str,
    pg: psycopg.AsyncConnection[Any],
    pg_dsn: str,
    table_name: str,
    source_name: tuple[str, str],
    pg_cleanup: list[tuple[PostgresSource, str, str]],
) -> None:
    namespace, name = source_name
    await pg.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, note text)")
    spec = {
        "postgres": {
            "connectionSecretRef": {"name": "db", "key": "dsn"},
            "tables": [f"public.{table_name}"],
        }
    }
    pg_cleanup.append((PostgresSource.model_validate(spec["postgres"]), namespace, name))
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": namespace},
        "stringData": {"dsn": pg_dsn},
    }
    manifest = write_manifests(tmp_path / "source.yaml", secret, eventsource(namespace, name, spec))
    base = f"http://127.0.0.1:{free_port()}"
    process = start_adapter(
        "postgres", f"{namespace}/{name}", redis_url, "-f", manifest, "--listen", base[7:]
    )
    labels = {"eventsource": f"{namespace}/{name}"}
    try:
        await serving(base, process)
        await eventually(lambda: ready(base), within=60)
        await pg.execute(f"INSERT INTO {table_name} SELECT i, 'bulk' FROM generate_series(1, 20) i")
        for i in range(21, 26):
            await pg.execute(f"INSERT INTO {table_name} VALUES ({i}, 'one')")

        async def all_counted() -> dict[Any, float] | None:
            found = await scrape(base)
            written = sample(found, "tidings_source_events_total", **labels)
            confirmed = sample(found, "tidings_source_postgres_confirmed_lsn_bytes", **labels)
            return found if written == 25 and confirmed else None

        samples = await eventually(all_counted, within=30)
        assert await redis_client.xlen(compiled(namespace, name, "postgres").stream) == 25
        cursor = await pg.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        row = await cursor.fetchone()
        assert row is not None
        confirmed = sample(samples, "tidings_source_postgres_confirmed_lsn_bytes", **labels)
        assert confirmed is not None and 0 < confirmed <= row[0]
        # Read when the stream starts (then every minute): present from the start.
        retained = sample(samples, "tidings_source_postgres_wal_retained_bytes", **labels)
        assert retained is not None and retained >= 0
        assert sample(samples, "tidings_source_events_skipped_total", **labels) == 0
        assert sample(samples, "tidings_source_state", **labels, state="Running") == 1
    finally:
        stop(process)
