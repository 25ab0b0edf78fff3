"""The real S3 server of the tests (Versity Gateway, started by hack/s3.sh via
hack/test-env.sh): its address and root keys, fresh buckets, uploads."""

from __future__ import annotations

import io
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from minio import Minio

from tidings.api.types import ObjectStoreSource
from tidings.sources.objectstore import Credentials

HOW_TO_START = "start it with `hack/s3.sh up` (or hack/test-env.sh) and export its env"


@dataclass(frozen=True)
class S3:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    versitygw: str

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.access_key_id, self.secret_access_key)

    def client(self, access: str | None = None, secret: str | None = None) -> Minio:
        return Minio(
            urlsplit(self.endpoint).netloc,
            access_key=access or self.access_key_id,
            secret_key=secret or self.secret_access_key,
            secure=False,
            region="us-east-1",
        )

    def spec(self, bucket: str, **fields: object) -> ObjectStoreSource:
        return ObjectStoreSource.model_validate(
            {
                "endpoint": self.endpoint,
                "bucket": bucket,
                "mode": "poll",
                "credentialsSecretRef": {"name": "s3-creds"},
                **fields,
            }
        )

    def create_user(self, access: str, secret: str) -> None:
        """An IAM user of role `user`: it owns nothing, so others' buckets deny it."""
        done = subprocess.run(
            [
                self.versitygw,
                "admin",
                "--access",
                self.access_key_id,
                "--secret",
                self.secret_access_key,
                "--endpoint-url",
                self.endpoint,
                "create-user",
                "--access",
                access,
                "--secret",
                secret,
                "--role",
                "user",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr + done.stdout


def s3_from_env() -> S3:
    missing = [
        name
        for name in ("S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "VERSITYGW")
        if not os.environ.get(name)
    ]
    if missing:
        pytest.fail(
            f"the S3 server is not running: {HOW_TO_START} ({', '.join(missing)} not set)",
            pytrace=False,
        )
    return S3(
        os.environ["S3_ENDPOINT"],
        os.environ["AWS_ACCESS_KEY_ID"],
        os.environ["AWS_SECRET_ACCESS_KEY"],
        os.environ["VERSITYGW"],
    )


def new_bucket_name() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def put_many(client: Minio, bucket: str, items: dict[str, bytes], threads: int = 8) -> None:
    def put(item: tuple[str, bytes]) -> None:
        key, data = item
        client.put_object(bucket, key, io.BytesIO(data), len(data))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, items.items()))


def delete_many(client: Minio, bucket: str, keys: list[str], threads: int = 8) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda key: client.remove_object(bucket, key), keys))
