"""The real S3 server of the tests (Versity Gateway, started by hack/s3.sh via
hack/test-env.sh): its address and root keys, fresh buckets, uploads."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import urllib3
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

    ca_pem: str | None = None  # an https endpoint's CA

    def client(self, access: str | None = None, secret: str | None = None) -> Minio:
        https = self.endpoint.startswith("https://")
        pool = None
        if https:
            context = ssl.create_default_context(cadata=self.ca_pem)
            pool = urllib3.PoolManager(ssl_context=context)
        return Minio(
            urlsplit(self.endpoint).netloc,
            access_key=access or self.access_key_id,
            secret_key=secret or self.secret_access_key,
            secure=https,
            region="us-east-1",
            http_client=pool,
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateGateway:
    """A Versity Gateway of one test (the binary hack/s3.sh built, its root
    keys) on a free loopback port: with `tls` (cert, key) it serves https, with
    `versioning` buckets can keep versions (--versioning-dir). `stop` and
    `start` again serve the same port and data directory: an outage."""

    def __init__(
        self,
        shared: S3,
        root: Path,
        *,
        tls: tuple[Path, Path] | None = None,
        ca_pem: str | None = None,
        versioning: bool = False,
    ) -> None:
        for sub in ("data", "iam", "versions"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        port = _free_port()
        self.args = [
            shared.versitygw,
            "--port",
            f"127.0.0.1:{port}",
            "--iam-dir",
            str(root / "iam"),
        ]
        if tls is not None:
            self.args += ["--cert", str(tls[0]), "--key", str(tls[1])]
        self.args += ["--quiet", "posix"]
        if versioning:
            self.args += ["--versioning-dir", str(root / "versions")]
        self.args.append(str(root / "data"))
        self.log_path = root / "versitygw.log"
        scheme = "https" if tls is not None else "http"
        self.store = S3(
            f"{scheme}://127.0.0.1:{port}",
            shared.access_key_id,
            shared.secret_access_key,
            shared.versitygw,
            ca_pem,
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it answers S3 requests."""
        assert self.process is None, "already running"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args,
                env={
                    **os.environ,
                    "ROOT_ACCESS_KEY_ID": self.store.access_key_id,
                    "ROOT_SECRET_ACCESS_KEY": self.store.secret_access_key,
                },
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    self.store.client().list_buckets()
                    return
                except (urllib3.exceptions.HTTPError, OSError):
                    assert self.process.poll() is None, self.log_path.read_text()[-2000:]
                    assert time.monotonic() < deadline, f"no answer: {self.log_path}"
                    time.sleep(0.2)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM, and wait until it exited (its port refuses connections)."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> PrivateGateway:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def private_gateway(
    shared: S3,
    root: Path,
    *,
    tls: tuple[Path, Path] | None = None,
    ca_pem: str | None = None,
    versioning: bool = False,
) -> Iterator[S3]:
    """A PrivateGateway, running for the block; yields its address and keys."""
    with PrivateGateway(shared, root, tls=tls, ca_pem=ca_pem, versioning=versioning) as gateway:
        yield gateway.store
