"""The console under `tidings dev`, in a real browser: mounted at /console/ on
dev's listen address, the URL printed, open without sign-in on loopback, the
objects from the manifest files, replay straight in dev's Redis (the direct
path), pausing pointed at the file, an objectStore poll source's page showing
its adapter's health (not a curl example), and a request naming another host
(DNS rebinding) refused."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_harness import REPO, Subscriber, child_env, eventually, free_port

pytestmark = pytest.mark.integration

MANIFESTS = """
apiVersion: tidings.dev/v1alpha1
kind: EventSource
metadata: {{name: orders, namespace: shop}}
spec: {{http: {{auth: {{allowAnonymous: true}}}}}}
---
apiVersion: tidings.dev/v1alpha1
kind: Trigger
metadata: {{name: mailer, namespace: shop}}
spec:
  source: orders
  subscriber: {{uri: "{url}"}}
  delivery: {{retry: {{maxAttempts: 2, initialDelay: 100ms, maxDelay: 200ms}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: s3-creds, namespace: shop}}
stringData: {{accessKeyId: nobody, secretAccessKey: nothing}}
---
apiVersion: tidings.dev/v1alpha1
kind: EventSource
metadata: {{name: uploads, namespace: shop}}
spec:
  objectStore:
    endpoint: "http://127.0.0.1:{closed}"
    bucket: uploads
    mode: poll
    pollInterval: 1s
    credentialsSecretRef: {{name: s3-creds}}
"""


class Dev:
    def __init__(self, folder: Path, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tidings.cli", "dev", "-f", str(folder),
                 "--listen", f"127.0.0.1:{port}", "--state-dir", str(folder.parent / "state")],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=_env(),
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _env() -> dict[str, str]:
    env = child_env()
    env.pop("REDIS_URL", None)  # dev's private redis-server, not the test env's
    return env


@pytest.fixture
def subscriber() -> Iterator[Subscriber]:
    running = Subscriber()
    yield running
    running.stop()


@pytest.fixture
def dev(tmp_path: Path, subscriber: Subscriber) -> Iterator[Dev]:
    folder = tmp_path / "manifests"
    folder.mkdir()
    # The bucket's endpoint is a port nothing listens on: the poll adapter keeps failing.
    manifests = MANIFESTS.format(url=subscriber.url("/bad"), closed=free_port())
    (folder / "shop.yaml").write_text(manifests)
    running = Dev(folder, free_port(), tmp_path / "dev.log")
    try:
        eventually(lambda: "ready; Ctrl-C stops" in running.output(), within=120)
        yield running
    finally:
        running.stop()
        print(running.output()[-3000:])


def send(port: int, event_id: str) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/sources/shop/orders",
        data=json.dumps({"order": event_id}).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-type": "com.shop.order.created",
            "ce-source": "/test",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202


def test_tidings_dev_serves_the_console_and_replays_in_its_redis(
    browser: Any, dev: Dev, subscriber: Subscriber
) -> None:
    printed = re.search(r"console on (http://\S+/console/)", dev.output())
    assert printed, dev.output()
    url = printed.group(1)
    assert url == f"http://127.0.0.1:{dev.port}/console/"
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    try:
        page.goto(url)
        assert "/login" not in page.url, "open without sign-in on loopback"
        assert "local (tidings dev)" in page.text_content("header")
        row = page.locator('tr[data-trigger="shop/mailer"]')
        assert "Ready" in row.locator("td.ready").inner_text()

        subscriber.status = 500
        for n in range(2):
            send(dev.port, f"dev-{n}")
        page.goto(url + "t/shop/mailer")
        eventually(lambda: page.text_content("#dead-count") == "2", within=30)
        assert page.is_disabled("#pause-button")
        assert "set spec.paused in the file" in page.text_content("#pause-note")
        assert "shop.yaml" in page.text_content("main")

        subscriber.status = 200
        page.reload()
        page.click("#replay-all")
        assert "Replay 2 dead letters" in page.text_content("h1")
        page.click("#confirm-replay")
        assert "Replayed 2 dead letter(s)" in page.text_content("#flash")
        eventually(lambda: {"dev-0", "dev-1"} <= set(subscriber.delivered("/bad")), within=20)

        page.goto(url + "s/shop/orders")
        assert f"http://127.0.0.1:{dev.port}/sources/shop/orders" in page.text_content(
            "#curl-example"
        )

        # A poll source has no ingest URL: its page shows the adapter's health.
        page.goto(url + "s/shop/uploads")
        assert page.locator("#curl-example").count() == 0
        eventually(lambda: page.locator("#adapter-health").count() == 1, within=30)
        assert "Retrying" in page.text_content("#adapter-health")
    finally:
        context.close()


def test_the_console_of_tidings_dev_refuses_other_host_names(dev: Dev) -> None:
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1
    reaches dev's console from the developer's own browser, with its own Host."""
    for path in ("", "t/shop/mailer", "static/console.css"):
        request = urllib.request.Request(
            f"http://127.0.0.1:{dev.port}/console/{path}", headers={"Host": "evil.example"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        assert "not to Host 'evil.example'" in html.unescape(refused.value.read().decode())
    for host in (f"localhost:{dev.port}", f"[::1]:{dev.port}"):
        request = urllib.request.Request(
            f"http://127.0.0.1:{dev.port}/console/", headers={"Host": host}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
