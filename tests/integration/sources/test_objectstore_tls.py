"""An objectStore poll source on an https endpoint signed by a private CA
(spec.objectStore.caSecretRef): a Versity Gateway of this test serving TLS
with a certificate from a CA generated here. The adapter trusts that CA (and
only it, not the system's), from the Secret or from the file the operator
mounts; without it, or with another CA, it reports CertificateNotTrusted."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import yaml
from objectstore_helpers import S3, new_bucket_name, private_gateway, put_many, s3_from_env
from source_helpers import compiled, eventually, running, start_adapter, stream_events

from tidings.api.s3events import CREATED_TYPE
from tidings.api.types import ObjectStoreSource
from tidings.sources import status
from tidings.sources.objectstore import Credentials, ObjectStoreAdapter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"openssl {' '.join(args[:3])}: {done.stderr}"


def make_ca(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.crt"


def make_server_cert(directory: Path, ca: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by CA `ca` (made by make_ca)."""
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-days", "2", "-in", "server.csr", "-CA", f"{ca}.crt",
        "-CAkey", f"{ca}.key", "-CAcreateserial", "-extfile", "server.ext", "-out", "server.crt",
        cwd=directory,
    )  # fmt: skip
    return directory / "server.crt", directory / "server.key"


@dataclass(frozen=True)
class TlsStore:
    s3: S3  # https://127.0.0.1:PORT, its root keys, the CA that signs its certificate
    other_ca_pem: str  # a CA that does not

    def spec(self, bucket: str, **fields: object) -> ObjectStoreSource:
        return ObjectStoreSource.model_validate(
            {
                "endpoint": self.s3.endpoint,
                "bucket": bucket,
                "mode": "poll",
                "pollInterval": "300ms",
                "initialSync": "emit",
                "credentialsSecretRef": {"name": "s3-creds"},
                "caSecretRef": {"name": "s3-ca", "key": "ca.crt"},
                **fields,
            }
        )


@pytest.fixture(scope="module")
def tls_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStore]:
    """Versity Gateway serving TLS on loopback (its --cert and --key)."""
    root = tmp_path_factory.mktemp("tls-s3")
    ca = make_ca(root / "pki", "tidings-test-ca")
    other = make_ca(root / "pki", "another-ca")
    tls = make_server_cert(root / "pki", "tidings-test-ca")
    with private_gateway(s3_from_env(), root, tls=tls, ca_pem=ca.read_text()) as s3:
        yield TlsStore(s3, other.read_text())


@pytest.fixture
def bucket(tls_store: TlsStore) -> str:
    name = new_bucket_name()
    tls_store.s3.client().make_bucket(name)
    put_many(tls_store.s3.client(), name, {f"in/{i}.csv": b"x" for i in range(5)})
    return name


def adapter_for(
    tls_store: TlsStore, redis: aioredis.Redis, bucket: str, ca_pem: str | None
) -> ObjectStoreAdapter:
    return ObjectStoreAdapter(
        compiled("src", f"tls-{bucket}", "objectStore"),
        tls_store.spec(bucket),
        redis,
        credentials=Credentials(tls_store.s3.access_key_id, tls_store.s3.secret_access_key, ca_pem),
        backoff_max=0.5,
    )


async def status_of(redis: aioredis.Redis, adapter: ObjectStoreAdapter) -> status.AdapterStatus:
    async def reported() -> status.AdapterStatus | None:
        found = await status.read(redis, "src", adapter.source.name)
        return found if found is not None and found.reason != "Starting" else None

    found: status.AdapterStatus = await eventually(reported, within=30)
    return found


async def test_poll_over_https_trusts_the_ca_of_ca_secret_ref(
    tls_store: TlsStore, bucket: str, redis_client: aioredis.Redis
) -> None:
    adapter = adapter_for(tls_store, redis_client, bucket, tls_store.s3.ca_pem)
    async with running(adapter, redis_client, adapter.source):

        async def five() -> list[str]:
            events = await stream_events(redis_client, adapter.source)
            return sorted(e.subject or "" for e in events if e.type == CREATED_TYPE)

        subjects = await eventually(lambda: _at_least(five, 5), within=30)
    assert subjects == [f"in/{i}.csv" for i in range(5)]


async def _at_least(check, count: int):  # type: ignore[no-untyped-def]
    found = await check()
    return found if len(found) >= count else None


@pytest.mark.parametrize("which", ["none (the system's CAs)", "another CA"])
async def test_a_certificate_the_ca_does_not_sign_is_not_trusted(
    which: str, tls_store: TlsStore, bucket: str, redis_client: aioredis.Redis
) -> None:
    ca_pem = None if which.startswith("none") else tls_store.other_ca_pem
    adapter = adapter_for(tls_store, redis_client, bucket, ca_pem)
    if ca_pem is None:
        adapter.spec = tls_store.spec(bucket, caSecretRef=None)
    async with running(adapter, redis_client, adapter.source, ready=False):
        found = await status_of(redis_client, adapter)
    assert found.reason == "CertificateNotTrusted", found
    assert "spec.objectStore.caSecretRef" in found.message
    assert await stream_events(redis_client, adapter.source) == []


async def test_a_ca_secret_without_a_pem_certificate_is_invalid_ca(
    tls_store: TlsStore, bucket: str, redis_client: aioredis.Redis
) -> None:
    adapter = adapter_for(tls_store, redis_client, bucket, "not a certificate")
    async with running(adapter, redis_client, adapter.source, ready=False):
        found = await status_of(redis_client, adapter)
    assert found.reason == "InvalidCA", found
    assert "spec.objectStore.caSecretRef (Secret s3-ca key 'ca.crt')" in found.message


@pytest.mark.parametrize("ca_from", ["the Secret in the manifests", "the mounted file"])
async def test_the_adapter_command_loads_the_ca(
    ca_from: str,
    tls_store: TlsStore,
    bucket: str,
    redis_client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """`tidings source objectStore` as `tidings dev` and the operator run it:
    the CA from caSecretRef's Secret, or from $TIDINGS_S3_CA_FILE (the
    operator mounts the key there)."""
    namespace, name = "src", f"cmd-{bucket}"
    secrets = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-creds", "namespace": namespace},
            "stringData": {
                "accessKeyId": tls_store.s3.access_key_id,
                "secretAccessKey": tls_store.s3.secret_access_key,
            },
        }
    ]
    env: dict[str, str] = {}
    if ca_from.startswith("the Secret"):
        secrets.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s3-ca", "namespace": namespace},
                "stringData": {"ca.crt": tls_store.s3.ca_pem},
            }
        )
    else:
        (tmp_path / "ca.crt").write_text(tls_store.s3.ca_pem)
        env["TIDINGS_S3_CA_FILE"] = str(tmp_path / "ca.crt")
    eventsource = {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"objectStore": tls_store.spec(bucket).to_wire()},
    }
    manifest = tmp_path / "source.yaml"
    manifest.write_text(yaml.safe_dump_all([eventsource, *secrets]))
    os.environ.update(env)
    try:
        adapter = start_adapter("objectStore", f"{namespace}/{name}", redis_url, "-f", manifest)
    finally:
        for variable in env:
            os.environ.pop(variable)
    source = compiled(namespace, name, "objectStore")
    try:

        async def five() -> list[str]:
            return [e.subject or "" for e in await stream_events(redis_client, source)]

        subjects = await eventually(lambda: _at_least(five, 5), within=60)
    finally:
        adapter.terminate()
        adapter.wait(15)
    assert sorted(subjects) == [f"in/{i}.csv" for i in range(5)]
