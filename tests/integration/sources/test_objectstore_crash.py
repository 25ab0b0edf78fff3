"""The poll adapter as a real process (`tidings source objectStore`), killed
with SIGKILL three times while 2,000 objects are uploaded: every object
version is in the stream exactly once, none is missed."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import yaml
from objectstore_helpers import S3, new_bucket_name, put_many, s3_from_env
from source_helpers import compiled, eventually, start_adapter, stream_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def write_manifest(path: Path, namespace: str, name: str, bucket: str, s3: S3) -> None:
    documents = [
        {
            "apiVersion": "tidings.dev/v1alpha1",
            "kind": "EventSource",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "objectStore": {
                    "endpoint": s3.endpoint,
                    "bucket": bucket,
                    "mode": "poll",
                    "pollInterval": "200ms",
                    "credentialsSecretRef": {"name": "s3-creds"},
                }
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-creds", "namespace": namespace},
            "stringData": {
                "accessKeyId": s3.access_key_id,
                "secretAccessKey": s3.secret_access_key,
            },
        },
    ]
    path.write_text(yaml.safe_dump_all(documents))


async def test_sigkill_three_times_during_2000_uploads_loses_and_repeats_nothing(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    s3 = s3_from_env()
    bucket = new_bucket_name()
    s3.client().make_bucket(bucket)
    namespace, name = "crash", f"os-{bucket}"
    source = compiled(namespace, name, "objectStore")
    manifest = tmp_path / "source.yaml"
    write_manifest(manifest, namespace, name, bucket, s3)

    def start() -> object:
        return start_adapter(
            "objectStore", f"{namespace}/{name}", redis_url, "--manifest", manifest
        )

    process = start()

    async def synced() -> bool:
        return await redis_client.hget(f"tidings:{{{namespace}/{name}}}:adapter", "synced") == b"1"  # type: ignore[misc]

    await eventually(synced, within=30)
    uploads = {f"up/{i:05d}.bin": str(i).encode() for i in range(2000)}

    def upload_slowly() -> None:  # ~300 objects/s, so the kills land mid-run
        client = s3.client()
        for key, data in uploads.items():
            put_many(client, bucket, {key: data}, threads=1)
            time.sleep(0.002)

    uploader = threading.Thread(target=upload_slowly)
    uploader.start()
    for threshold in (300, 900, 1500):
        # Kill it right after it wrote past the threshold, while uploads go on.
        async def past(threshold: int = threshold) -> bool:
            return len(await stream_events(redis_client, source)) >= threshold

        await eventually(past, within=60, interval=0.02)
        process.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
        process.wait()  # type: ignore[attr-defined]
        process = start()
    await asyncio.to_thread(uploader.join)

    async def all_there() -> bool:
        return len(await stream_events(redis_client, source)) >= 2000

    try:
        await eventually(all_there, within=90, interval=0.5)
        await asyncio.sleep(1.0)  # a few more polls: nothing more may come
    finally:
        process.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        process.wait(timeout=20)  # type: ignore[attr-defined]
    subjects = [e.subject for e in await stream_events(redis_client, source)]
    assert len(subjects) == 2000
    assert sorted(subjects) == sorted(uploads)
