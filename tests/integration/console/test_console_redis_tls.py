"""`tidings console` on the TLS-only, ACL-only Redis (hack/redis-tls.sh), with
REDIS_USERNAME, REDIS_PASSWORD and REDIS_TLS_CA_FILE as the chart sets them:
a source's page shows the events stored in that Redis."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from console_harness import REPO, Process, eventually, free_port, manifest, wait_http

from secure_redis import TlsRedis
from tidings.api import keys
from tidings.api.events import CloudEvent, encode

pytestmark = pytest.mark.integration


@pytest.fixture
def namespace(kubectl: Any) -> Iterator[str]:
    assert kubectl("apply", "-f", str(REPO / "crds")).returncode == 0
    assert (
        kubectl("wait", "--for=condition=Established", "crd/eventsources.tidings.dev").returncode
        == 0
    )
    name = f"tls-console-{uuid.uuid4().hex[:6]}"
    assert kubectl("create", "namespace", name).returncode == 0
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


def test_the_console_reads_a_tls_and_acl_redis(
    kubectl: Any, kubeconfig: Path, tls_redis: TlsRedis, namespace: str, tmp_path: Path
) -> None:
    source = manifest(
        "EventSource", "orders", namespace, {"http": {"auth": {"allowAnonymous": True}}}
    )
    done = kubectl("apply", "-f", "-", input=json.dumps(source))
    assert done.returncode == 0, done.stderr
    event_id = f"tls-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(
        tls_redis.url,
        username=tls_redis.username,
        password=tls_redis.password,
        ssl_ca_certs=tls_redis.ca_file,
    )
    try:
        event = CloudEvent(event_id, "/orders", "com.example.order.paid")
        client.xadd(keys.stream(namespace, "orders"), encode(event))  # type: ignore[arg-type]
    finally:
        client.close()

    port = free_port()
    console = Process(
        "console",
        ["console", "--listen", f"127.0.0.1:{port}", "--auth", "proxy",
         "--trusted-proxy", "127.0.0.1/32", "--kubeconfig", str(kubeconfig)],
        tmp_path / "console.log",
        tls_redis.env(),  # rediss:// URL, the ACL user and password, the CA file
    ).start()  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")

        def page() -> str:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/s/{namespace}/orders",
                # As the authenticating proxy would send them (SubjectAccessReview: allowed).
                headers={"X-Forwarded-User": "admin", "X-Forwarded-Groups": "system:masters"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
                return str(response.read().decode())

        def shows_the_event() -> str:
            html = page()
            return html if event_id in html else ""

        html = eventually(shows_the_event, within=30)
        assert "com.example.order.paid" in html
    finally:
        console.stop()
        print(console.logs()[-3000:])
