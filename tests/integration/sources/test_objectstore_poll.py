"""The object-store source in poll mode against a real S3 server (Versity
Gateway from hack/s3.sh) and a real Redis: exactly the expected events, once
per object version, and each error reason with its recovery."""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import yaml
from objectstore_helpers import (
    S3,
    PrivateGateway,
    delete_many,
    new_bucket_name,
    put_many,
    s3_from_env,
)
from source_helpers import (
    compiled,
    eventually,
    running,
    start_adapter,
    stream_events,
    wait_for_events,
)

from tidings.api import keys
from tidings.api.s3events import CREATED_TYPE, DELETED_TYPE
from tidings.sources import status
from tidings.sources.objectstore import Credentials, ObjectStoreAdapter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="session")
def s3() -> S3:
    return s3_from_env()


@pytest.fixture
def bucket(s3: S3) -> Iterator[str]:
    name = new_bucket_name()
    s3.client().make_bucket(name)
    yield name


def adapter_for(
    s3: S3,
    redis: aioredis.Redis,
    bucket: str,
    credentials: Credentials | None = None,
    **spec: object,
) -> ObjectStoreAdapter:
    source = compiled("src", f"os-{bucket}", "objectStore")
    return ObjectStoreAdapter(
        source,
        s3.spec(bucket, **spec),
        redis,
        credentials=credentials or s3.credentials,
        backoff_max=0.5,
    )


def by_subject(events: list) -> dict[tuple[str, str], int]:  # type: ignore[type-arg]
    counts: dict[tuple[str, str], int] = {}
    for event in events:
        counts[(event.type, event.subject)] = counts.get((event.type, event.subject), 0) + 1
    return counts


async def test_poll_emits_created_changed_and_deleted_objects_once_each(
    s3: S3, bucket: str, redis_client: aioredis.Redis
) -> None:
    client = s3.client()
    put_many(client, bucket, {f"incoming/old-{i}.csv": b"x" for i in range(10)})
    adapter = adapter_for(
        s3, redis_client, bucket, prefix="incoming/", suffix=".csv", events=["created", "deleted"]
    )
    first = await adapter.poll()
    assert first.listed == 10 and first.appended == 0  # initialSync: skip
    assert await stream_events(redis_client, adapter.source) == []

    wanted = {f"incoming/f-{i:03d}.csv": f"v1-{i}".encode() for i in range(200)}
    other_prefix = {f"archive/f-{i:03d}.csv": b"a" for i in range(50)}
    wrong_suffix = {f"incoming/f-{i:03d}.txt": b"t" for i in range(50)}
    put_many(client, bucket, {**wanted, **other_prefix, **wrong_suffix})
    second = await adapter.poll()
    assert (second.listed, second.appended) == (210, 200)
    # 210 objects in one page; 200 changes in one atomic write.
    assert second.s3_requests == 1 and second.redis_calls == 1

    overwritten = [f"incoming/f-{i:03d}.csv" for i in range(20)]
    deleted = [f"incoming/f-{i:03d}.csv" for i in range(100, 130)]
    put_many(client, bucket, {key: b"v2" for key in overwritten})
    delete_many(client, bucket, deleted + [f"archive/f-{i:03d}.csv" for i in range(10)])
    third = await adapter.poll()
    assert third.appended == 50

    quiet = await adapter.poll()
    assert (quiet.changes, quiet.appended, quiet.redis_calls) == (0, 0, 0)

    events = await stream_events(redis_client, adapter.source)
    counts = by_subject(events)
    expected = {(CREATED_TYPE, key): 1 for key in wanted}
    for key in overwritten:
        expected[(CREATED_TYPE, key)] = 2
    for key in deleted:
        expected[(DELETED_TYPE, key)] = 1
    assert counts == expected
    last = next(e for e in reversed(events) if e.subject == overwritten[0])
    assert last.source == f"s3://{bucket}"
    assert last.data == {
        "bucket": bucket,
        "key": overwritten[0],
        "size": 2,
        "etag": last.data["etag"],
        "versionId": None,
        "eventName": "ObjectCreated:*",
    }
    assert len(last.data["etag"]) == 32
    assert len({e.id for e in events}) == len(events)
    # Each event is in the source's id index, at its stream id's ms (`tidings trace`).
    index = keys.event_index(adapter.source.namespace, adapter.source.name)
    entries = await redis_client.xrange(adapter.source.stream)
    scores = await redis_client.zmscore(index, [e.id for e in events])
    assert scores == [int(entry_id.split(b"-")[0]) for entry_id, _ in entries]


async def test_initial_sync_emit_sends_the_objects_present(
    s3: S3, bucket: str, redis_client: aioredis.Redis
) -> None:
    put_many(s3.client(), bucket, {f"k{i}": b"x" for i in range(25)})
    adapter = adapter_for(s3, redis_client, bucket, initialSync="emit")
    assert (await adapter.poll()).appended == 25
    assert (await adapter.poll()).appended == 0


async def test_a_restarted_adapter_and_a_twin_emit_nothing_twice(
    s3: S3, bucket: str, redis_client: aioredis.Redis
) -> None:
    adapter = adapter_for(s3, redis_client, bucket)
    await adapter.poll()
    put_many(s3.client(), bucket, {f"k{i}": b"x" for i in range(40)})
    twin = adapter_for(s3, redis_client, bucket)  # loads the state before either writes
    await twin.poll()
    assert (await adapter.poll()).appended == 0  # the twin wrote them; all already applied
    restarted = adapter_for(s3, redis_client, bucket)
    assert (await restarted.poll()).appended == 0
    assert len(await stream_events(redis_client, adapter.source)) == 40


async def test_a_crash_between_chunks_of_a_first_sync_resumes_it(
    s3: S3, bucket: str, redis_client: aioredis.Redis
) -> None:
    put_many(s3.client(), bucket, {f"k{i:03d}": b"x" for i in range(120)})
    adapter = adapter_for(s3, redis_client, bucket, initialSync="emit")
    adapter.chunk = 50
    real_write = adapter._write
    calls = 0

    async def dies_after_two(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectionError("killed")
        return await real_write(*args, **kwargs)

    adapter._write = dies_after_two  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await adapter.poll()
    assert len(await stream_events(redis_client, adapter.source)) == 100
    again = adapter_for(s3, redis_client, bucket, initialSync="emit")
    assert (await again.poll()).appended == 20
    events = await stream_events(redis_client, adapter.source)
    assert sorted(e.subject for e in events) == [f"k{i:03d}" for i in range(120)]


async def test_pagination_covers_more_than_one_page(
    s3: S3, bucket: str, redis_client: aioredis.Redis
) -> None:
    put_many(s3.client(), bucket, {f"p/{i:05d}": b"x" for i in range(2100)}, threads=16)
    adapter = adapter_for(s3, redis_client, bucket, initialSync="emit")
    result = await adapter.poll()
    # A first poll asks whether the bucket is versioned (GetBucketVersioning), then 3 pages.
    assert (result.listed, result.appended, result.s3_requests) == (2100, 2100, 4)
    assert result.redis_calls >= 3  # 1,000 changes per write


async def reason_of(redis: aioredis.Redis, adapter: ObjectStoreAdapter) -> str | None:
    current = await status.read(redis, adapter.source.namespace, adapter.source.name)
    return current.reason if current else None


async def wait_reason(redis: aioredis.Redis, adapter: ObjectStoreAdapter, reason: str) -> None:
    async def reached() -> bool:
        return await reason_of(redis, adapter) == reason

    await eventually(reached, within=30)


async def test_a_missing_bucket_is_reported_and_recovers_once_created(
    s3: S3, redis_client: aioredis.Redis
) -> None:
    name = new_bucket_name()
    adapter = adapter_for(s3, redis_client, name)
    async with running(adapter, redis_client, adapter.source, ready=False):
        await wait_reason(redis_client, adapter, "BucketNotFound")
        current = await status.read(redis_client, "src", adapter.source.name)
        assert current is not None and "spec.objectStore.bucket" in current.message
        s3.client().make_bucket(name)
        await wait_reason(redis_client, adapter, "Polling")


async def test_wrong_credentials_and_denied_access_are_told_apart(
    s3: S3, bucket: str, redis_client: aioredis.Redis
) -> None:
    wrong = adapter_for(
        s3, redis_client, bucket, Credentials(s3.access_key_id, "not-the-secret-0000000000")
    )
    async with running(wrong, redis_client, wrong.source, ready=False):
        await wait_reason(redis_client, wrong, "InvalidCredentials")
    unknown = adapter_for(s3, redis_client, bucket, Credentials("nobody", "whatever00000"))
    async with running(unknown, redis_client, unknown.source, ready=False):
        await wait_reason(redis_client, unknown, "InvalidCredentials")
    s3.create_user(f"u{bucket}", "user-secret-000000")
    denied = adapter_for(s3, redis_client, bucket, Credentials(f"u{bucket}", "user-secret-000000"))
    async with running(denied, redis_client, denied.source, ready=False):
        await wait_reason(redis_client, denied, "AccessDenied")


async def test_an_adapter_with_wrong_credentials_recovers_once_restarted_with_the_fix(
    s3: S3, bucket: str, redis_url: str, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """`tidings source objectStore` reads its keys once, at start: a fixed Secret
    takes effect when the process restarts (in a cluster the operator rolls the
    adapter Deployment, whose pod template carries a digest of the Secret;
    `tidings dev` restarts it when the manifests' keys change)."""
    namespace, name = "src", f"keys-{bucket}"
    source = compiled(namespace, name, "objectStore")
    manifest = tmp_path / "source.yaml"

    def write(secret_access_key: str) -> None:
        eventsource = {
            "apiVersion": "tidings.dev/v1alpha1",
            "kind": "EventSource",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"objectStore": s3.spec(bucket, pollInterval="200ms").to_wire()},
        }
        keys_secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-creds", "namespace": namespace},
            "stringData": {
                "accessKeyId": s3.access_key_id,
                "secretAccessKey": secret_access_key,
            },
        }
        manifest.write_text(yaml.safe_dump_all([eventsource, keys_secret]))

    async def reason_is(wanted: str) -> bool:
        current = await status.read(redis_client, namespace, name)
        return current is not None and current.reason == wanted

    write("not-the-secret-0000000000")
    process = start_adapter("objectStore", f"{namespace}/{name}", redis_url, "-f", manifest)
    try:
        await eventually(lambda: reason_is("InvalidCredentials"), within=30)
        current = await status.read(redis_client, namespace, name)
        assert current is not None and current.state == "Retrying"
        assert "spec.objectStore.credentialsSecretRef" in current.message
        write(s3.secret_access_key)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        process = start_adapter("objectStore", f"{namespace}/{name}", redis_url, "-f", manifest)
        await eventually(lambda: reason_is("Polling"), within=30)
        put_many(s3.client(), bucket, {f"after-fix-{i}": b"x" for i in range(3)})

        async def three() -> bool:
            return len(await stream_events(redis_client, source)) == 3

        await eventually(three, within=30)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    subjects = sorted(e.subject for e in await stream_events(redis_client, source))
    assert subjects == [f"after-fix-{i}" for i in range(3)]


async def test_missing_credentials_report_secret_not_found(
    s3: S3, bucket: str, redis_client: aioredis.Redis
) -> None:
    adapter = adapter_for(s3, redis_client, bucket)
    adapter.credentials = None
    async with running(adapter, redis_client, adapter.source, ready=False):
        await wait_reason(redis_client, adapter, "SecretNotFound")


async def test_a_store_that_is_down_and_comes_back_loses_and_repeats_nothing(
    tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    """One adapter polls a gateway of its own, which is stopped for a while and
    started again on the same port and data: meanwhile the adapter reports
    EndpointUnreachable, retries with backoff and emits nothing; afterwards
    every change (made just before the outage, and after it) arrives exactly
    once through the same adapter, and it reports Polling again."""
    with PrivateGateway(s3_from_env(), tmp_path / "s3") as gateway:
        client = gateway.store.client()
        bucket = new_bucket_name()
        client.make_bucket(bucket)
        source = compiled("src", f"os-{bucket}", "objectStore")
        # 3 s between polls: time to change the bucket and stop the store before the next.
        spec = gateway.store.spec(bucket, pollInterval="3s", events=["created", "deleted"])
        adapter = ObjectStoreAdapter(
            source, spec, redis_client, credentials=gateway.store.credentials, backoff_max=2.0
        )
        reports: list[tuple[float, str, str]] = []  # every report, told or not to Redis
        adapter.status.on_report = lambda s: reports.append((time.monotonic(), s.state, s.reason))

        def failures() -> list[float]:
            return [at for at, _, reason in reports if reason == "EndpointUnreachable"]

        async def polled_since(count: int) -> bool:
            return any(reason == "Polling" for _, _, reason in reports[count:])

        async with running(adapter, redis_client, source) as task:
            before = {f"before/{i:02d}": b"1" for i in range(20)}
            put_many(client, bucket, before)
            await wait_for_events(redis_client, source, 20)
            seen = len(reports)
            await eventually(lambda: polled_since(seen))  # a poll just ended
            unseen = {f"unseen/{i:02d}": b"1" for i in range(10)}
            put_many(client, bucket, unseen)
            gateway.stop()
            assert len(await stream_events(redis_client, source)) == 20, "polled too soon"

            async def retried(times: int) -> bool:
                return len(failures()) >= times

            await eventually(lambda: retried(4), within=30)
            current = await status.read(redis_client, "src", source.name)
            assert current is not None
            assert (current.state, current.reason) == ("Retrying", "EndpointUnreachable")
            assert gateway.store.endpoint in current.message
            # Backoff: 1 s, then 2 s (doubled), then capped at backoff_max.
            at = failures()
            gaps = [later - earlier for earlier, later in itertools.pairwise(at)]
            assert gaps[0] >= 0.9 and all(1.8 <= gap < 5.0 for gap in gaps[1:]), gaps
            assert len(await stream_events(redis_client, source)) == 20
            assert not task.done()

            gateway.start()
            overwritten = [f"before/{i:02d}" for i in range(3)]
            deleted = [f"before/{i:02d}" for i in range(10, 15)]
            after = {f"after/{i:02d}": b"1" for i in range(15)}
            put_many(client, bucket, {**after, **{key: b"2" for key in overwritten}})
            delete_many(client, bucket, deleted)
            await wait_for_events(redis_client, source, 20 + 10 + 15 + 3 + 5, within=30)
            seen = len(reports)
            await eventually(lambda: polled_since(seen), within=30)  # one more: nothing twice
            current = await status.read(redis_client, "src", source.name)
            assert current is not None and (current.state, current.reason) == ("Running", "Polling")
            assert not task.done()
        events = await stream_events(redis_client, source)
    expected = {(CREATED_TYPE, key): 1 for key in [*before, *unseen, *after]}
    for key in overwritten:
        expected[(CREATED_TYPE, key)] = 2
    for key in deleted:
        expected[(DELETED_TYPE, key)] = 1
    assert by_subject(events) == expected
    assert len({e.id for e in events}) == len(events)


async def test_a_new_prefix_starts_a_new_first_listing(
    s3: S3, bucket: str, redis_client: aioredis.Redis
) -> None:
    put_many(s3.client(), bucket, {"a/1": b"x", "b/1": b"x"})
    await adapter_for(s3, redis_client, bucket, prefix="a/").poll()
    moved = adapter_for(s3, redis_client, bucket, prefix="b/", events=["created", "deleted"])
    assert (await moved.poll()).appended == 0  # no deletion of a/1, no creation of b/1
    objects = await redis_client.hkeys(keys.adapter_objects("src", moved.source.name))  # type: ignore[misc]
    assert objects == [b"b/1"]
