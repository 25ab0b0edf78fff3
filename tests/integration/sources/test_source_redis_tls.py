"""`tidings source` (the objectStore poll adapter, as a real process) appends to a
Redis that speaks only TLS to its ACL user (hack/redis-tls.sh), with the
settings the operator hands it: REDIS_USERNAME, REDIS_PASSWORD and the CA as
PEM in REDIS_TLS_CA (no file: adapters run without the operator's volumes)."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest
import yaml
from objectstore_helpers import put_many, s3_from_env
from source_helpers import compiled, eventually, start_adapter, stream_events

from secure_redis import TlsRedis
from tidings.api.process import connect_redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def test_an_adapter_appends_through_tls_and_acl_with_the_ca_as_pem(
    tmp_path: Path, tls_redis: TlsRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = s3_from_env()
    bucket = f"tls-{uuid.uuid4().hex[:12]}"
    s3.client().make_bucket(bucket)
    put_many(s3.client(), bucket, {"a.txt": b"a", "b.txt": b"b"})
    namespace, name = "tls", f"os-{bucket}"
    manifest = tmp_path / "source.yaml"
    manifest.write_text(
        yaml.safe_dump_all(
            [
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
                            "initialSync": "emit",
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
        )
    )
    # As the operator's config Secret gives them: the CA as PEM, not a file.
    monkeypatch.setenv("REDIS_USERNAME", tls_redis.username)
    monkeypatch.setenv("REDIS_PASSWORD", tls_redis.password)
    monkeypatch.setenv("REDIS_TLS_CA", tls_redis.ca_pem())
    monkeypatch.delenv("REDIS_TLS_CA_FILE", raising=False)
    process = start_adapter(
        "objectStore", f"{namespace}/{name}", tls_redis.url, "--manifest", manifest
    )
    redis = connect_redis(tls_redis.connection())
    source = compiled(namespace, name, "objectStore")
    try:

        async def both() -> bool:
            return len(await stream_events(redis, source)) == 2

        await eventually(both, within=90)
        keys_seen = sorted(e.subject or "" for e in await stream_events(redis, source))
        assert keys_seen == ["a.txt", "b.txt"]
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        await redis.delete(source.stream)
        await redis.aclose()
