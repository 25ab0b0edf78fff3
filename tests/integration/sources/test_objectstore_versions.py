"""Poll mode on a versioned bucket (a Versity Gateway of this test with
--versioning-dir): events carry the object's versionId, an overwrite with the
same bytes is a new version (a new event), and a delete marker reads as a
deletion of the version it hides."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from minio.commonconfig import ENABLED
from minio.versioningconfig import VersioningConfig
from objectstore_helpers import S3, new_bucket_name, private_gateway, s3_from_env
from source_helpers import compiled, stream_events

from tidings.api.s3events import CREATED_TYPE, DELETED_TYPE
from tidings.sources.objectstore import ObjectStoreAdapter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def versioned_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    with private_gateway(
        s3_from_env(), tmp_path_factory.mktemp("versioned-s3"), versioning=True
    ) as s3:
        yield s3


def adapter_for(s3: S3, redis: aioredis.Redis, bucket: str) -> ObjectStoreAdapter:
    return ObjectStoreAdapter(
        compiled("src", f"v-{bucket}", "objectStore"),
        s3.spec(bucket, events=["created", "deleted"]),
        redis,
        credentials=s3.credentials,
    )


async def test_a_versioned_bucket_fills_version_id(
    versioned_store: S3, redis_client: aioredis.Redis
) -> None:
    client = versioned_store.client()
    bucket = new_bucket_name()
    client.make_bucket(bucket)
    client.put_object(bucket, "before.txt", io.BytesIO(b"old"), 3)  # before versioning
    client.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
    adapter = adapter_for(versioned_store, redis_client, bucket)
    first = await adapter.poll()  # initialSync: skip
    assert first.listed == 1 and first.appended == 0

    v1 = client.put_object(bucket, "a.txt", io.BytesIO(b"same"), 4).version_id
    await adapter.poll()
    v2 = client.put_object(bucket, "a.txt", io.BytesIO(b"same"), 4).version_id
    await adapter.poll()
    client.remove_object(bucket, "a.txt")  # a delete marker on top of v2
    client.remove_object(bucket, "before.txt")
    await adapter.poll()

    assert v1 and v2 and v1 != v2
    events = [
        (e.type, e.subject, e.data["versionId"])  # type: ignore[index]
        for e in await stream_events(redis_client, adapter.source)
    ]
    assert events[:2] == [(CREATED_TYPE, "a.txt", v1), (CREATED_TYPE, "a.txt", v2)]
    # Written before versioning: version "null", reported as null like an unversioned bucket.
    assert sorted(events[2:]) == [(DELETED_TYPE, "a.txt", v2), (DELETED_TYPE, "before.txt", None)]


async def test_an_unversioned_bucket_keeps_version_id_null_and_lists_without_versions(
    versioned_store: S3, redis_client: aioredis.Redis
) -> None:
    client = versioned_store.client()
    bucket = new_bucket_name()
    client.make_bucket(bucket)
    adapter = adapter_for(versioned_store, redis_client, bucket)
    await adapter.poll()
    client.put_object(bucket, "b.txt", io.BytesIO(b"x"), 1)
    second = await adapter.poll()
    assert second.s3_requests == 1  # ListObjectsV2 only: versioning was asked once, at start
    [event] = await stream_events(redis_client, adapter.source)
    assert event.data["versionId"] is None  # type: ignore[index]
