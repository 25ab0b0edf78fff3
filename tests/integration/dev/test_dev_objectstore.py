"""objectStore sources under `tidings dev`, in both modes, against a real S3
server (Versity Gateway): 300 uploads (some outside the prefix, some with the
wrong suffix), 20 overwrites, 30 deletions -> exactly the expected events,
delivered through a Trigger to a subscriber, with the right types, subjects
and data.

poll: the shared server of hack/test-env.sh. notify: a private Versity Gateway
started by `hack/s3.sh up` with S3_WEBHOOK_URL pointing at `tidings dev`'s
ingest (Versity sends no auth header, so the token rides in ?token=)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from dev_harness import REPO, Process, tidings

from tidings.cli.redis_server import free_port

sys.path.insert(0, str(REPO / "tests" / "integration" / "sources"))
from objectstore_helpers import (
    S3,
    delete_many,
    new_bucket_name,
    put_many,
    s3_from_env,
)

CREATED = "dev.tidings.objectstore.object.created"
DELETED = "dev.tidings.objectstore.object.deleted"
TOKEN = "notify-token-0123456789"

MANIFESTS = """
apiVersion: v1
kind: Secret
metadata: {name: s3-creds, namespace: media}
stringData: {accessKeyId: ACCESS, secretAccessKey: SECRET}
---
apiVersion: v1
kind: Secret
metadata: {name: uploads-token, namespace: media}
stringData: {token: TOKEN}
---
apiVersion: tidings.dev/v1alpha1
kind: EventSource
metadata: {name: uploads, namespace: media}
spec:
  objectStore:
    endpoint: ENDPOINT
    bucket: BUCKET
    credentialsSecretRef: {name: s3-creds}
    prefix: incoming/
    suffix: .csv
    events: [created, deleted]
    mode: MODE
    EXTRA
---
apiVersion: tidings.dev/v1alpha1
kind: Trigger
metadata: {name: indexer, namespace: media}
spec:
  source: uploads
  subscriber: {ref: {name: indexer}, path: /objects}
"""


class Received:
    """What the subscriber got: one entry per delivery (binary mode)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: list[dict[str, Any]] = []

    def add(self, headers: dict[str, str], body: bytes) -> None:
        with self.lock:
            self.deliveries.append(
                {
                    "id": headers.get("ce-id"),
                    "type": headers.get("ce-type"),
                    "subject": headers.get("ce-subject"),
                    "source": headers.get("ce-source"),
                    "time": headers.get("ce-time"),
                    "data": json.loads(body) if body else None,
                }
            )

    def of(self, event_type: str) -> list[dict[str, Any]]:
        with self.lock:
            return [d for d in self.deliveries if d["type"] == event_type]

    def wait_for(self, event_type: str, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.of(event_type)) >= count:
                return
            time.sleep(0.1)
        raise AssertionError(
            f"{count} {event_type} deliveries expected within {timeout}s, "
            f"got {len(self.of(event_type))}"
        )


@pytest.fixture
def subscriber() -> Iterator[tuple[Received, int]]:
    """An aiohttp subscriber on its own event loop in a thread (http.server's
    backlog of 5 drops connections under 100 concurrent deliveries)."""
    received = Received()
    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def handle(request: web.Request) -> web.Response:
        received.add({k.lower(): v for k, v in request.headers.items()}, await request.read())
        return web.Response(status=200)

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/{path:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    def main() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    started.wait(10)
    yield received, port
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def private_s3_with_webhook(state: Path, webhook: str, shared: S3) -> S3:
    """A Versity Gateway of this test's own, posting notifications to `webhook`
    (which must answer: Versity sends a test event as it starts). Its port and
    keys are chosen first, so the manifests can name them before it runs."""
    (state / "s3").mkdir(parents=True)
    (state / "s3" / "port").write_text(f"{free_port()}\n")
    (state / "s3" / "credentials").write_text("notifyroot secret0123456789notify\n")
    return S3(
        f"http://127.0.0.1:{(state / 's3' / 'port').read_text().strip()}",
        "notifyroot",
        "secret0123456789notify",
        shared.versitygw,
    )


def start_private_s3(state: Path, webhook: str, s3: S3) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "s3.sh"), "up"],
        env={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(Path.home()),
            "TIDINGS_STATE_DIR": str(state),
            "S3_WEBHOOK_URL": webhook,
            "VERSITYGW": s3.versitygw,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"S3_ENDPOINT={s3.endpoint} " in done.stdout, done.stdout + done.stderr


def stop_private_s3(state: Path) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "s3.sh"), "down"],
        env={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(Path.home()),  # s3.sh runs with set -u
            "TIDINGS_STATE_DIR": str(state),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and not (state / "s3" / "versitygw.pid").exists(), done.stderr


def post(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def assert_refusals(url: str) -> None:
    """A wrong token is 403, none 401, and a body that is no notification 400."""
    assert post(f"{url}?token=wrong", b"{}")[0] == 403
    status, text = post(url, b"{}")
    assert status == 401 and "?token=" in text
    status, text = post(f"{url}?token={TOKEN}", b'{"records": []}')
    assert status == 400 and "Records: missing" in text


def etag(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # single-part uploads: the ETag is the MD5


@pytest.mark.parametrize("mode", ["poll", "notify"])
def test_uploads_overwrites_and_deletes_become_exactly_the_expected_events(
    mode: str, tmp_path: Path, subscriber: tuple[Received, int]
) -> None:
    received, subscriber_port = subscriber
    shared = s3_from_env()
    dev_port = free_port()
    s3 = shared
    if mode == "notify":
        webhook = f"http://127.0.0.1:{dev_port}/sources/media/uploads?token={TOKEN}"
        s3 = private_s3_with_webhook(tmp_path / "s3-state", webhook, shared)
    bucket = new_bucket_name()
    client = s3.client()
    if mode == "poll":
        client.make_bucket(bucket)
    extra = (
        "pollInterval: 1s\n    initialSync: emit"
        if mode == "poll"
        else "auth: {tokenSecretRef: {name: uploads-token, key: token}}"
    )
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "uploads.yaml").write_text(
        MANIFESTS.replace("ACCESS", s3.access_key_id)
        .replace("SECRET", s3.secret_access_key)
        .replace("TOKEN", TOKEN)
        .replace("ENDPOINT", s3.endpoint)
        .replace("BUCKET", bucket)
        .replace("MODE", mode)
        .replace("EXTRA", extra)
    )
    dev = Process(
        tidings(
            "dev",
            "-f",
            str(folder),
            "--listen",
            f"127.0.0.1:{dev_port}",
            "--service",
            f"indexer=http://127.0.0.1:{subscriber_port}",
        ),
        cwd=tmp_path,
        env={"REDIS_URL": ""},
    )
    try:
        dev.wait_for("ready; Ctrl-C stops", timeout=30)
        if mode == "poll":
            dev.wait_for("started the objectStore adapter of EventSource media/uploads")
        else:
            dev.wait_for(f"S3 notifications of bucket {bucket}")
            start_private_s3(tmp_path / "s3-state", webhook, s3)
            client.make_bucket(bucket)

        wanted = {f"incoming/{i:03}.csv": f"row {i}\n".encode() for i in range(200)}
        wrong_prefix = {f"other/{i:03}.csv": b"x" for i in range(50)}
        wrong_suffix = {f"incoming/{i:03}.txt": b"y" for i in range(50)}
        put_many(client, bucket, {**wanted, **wrong_prefix, **wrong_suffix})
        received.wait_for(CREATED, 200)

        overwritten = {key: b"changed " + data for key, data in list(wanted.items())[:20]}
        put_many(client, bucket, overwritten)
        received.wait_for(CREATED, 220)

        # 20 wanted keys (10 of them overwritten) and 10 outside the filter.
        deleted = list(wanted)[10:30]
        delete_many(client, bucket, deleted + list(wrong_prefix)[:5] + list(wrong_suffix)[:5])
        received.wait_for(DELETED, 20)
        time.sleep(3)  # a few more polls (or late notifications): nothing else may come

        created = received.of(CREATED)
        by_key: dict[str, list[Any]] = {}
        for d in created:
            by_key.setdefault(d["subject"], []).append(d)
        twice = {k: v for k, v in by_key.items() if len(v) > (2 if k in overwritten else 1)}
        assert not twice
        assert len(created) == 220 and len({d["id"] for d in created}) == 220
        versions = {(d["subject"], d["data"]["etag"]) for d in created}
        expected = {(k, etag(v)) for k, v in wanted.items()} | {
            (k, etag(v)) for k, v in overwritten.items()
        }
        assert versions == expected
        final = {**wanted, **overwritten}
        for delivery in created:
            data = delivery["data"]
            key = delivery["subject"]
            assert delivery["source"] == f"s3://{bucket}"
            assert data["bucket"] == bucket and data["key"] == key
            assert data["eventName"].startswith("ObjectCreated:")
            assert data["size"] == len(wanted[key]) or data["size"] == len(final[key])
        gone = received.of(DELETED)
        assert sorted(d["subject"] for d in gone) == sorted(deleted)
        assert len({d["id"] for d in gone}) == 20
        for delivery in gone:
            assert delivery["data"]["bucket"] == bucket
            assert delivery["data"]["eventName"].startswith("ObjectRemoved:")
        assert len(received.deliveries) == 240
        if mode == "notify":
            assert_refusals(f"http://127.0.0.1:{dev_port}/sources/media/uploads")
    except AssertionError:
        Path("/tmp/dev-objectstore.out").write_text(dev.output())
        raise
    finally:
        code = dev.stop()
        if mode == "notify":
            stop_private_s3(tmp_path / "s3-state")
        assert code == 0, dev.output()
