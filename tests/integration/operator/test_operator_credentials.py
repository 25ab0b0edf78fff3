"""Subscriber credentials from Secrets, end to end: the real operator on the real
kube-apiserver seals them into the routing table, a real `tidings dispatcher`
delivers to a real https subscriber on loopback that trusts only a test CA and
demands a client certificate. Rotating the Secrets reaches the dispatcher
within seconds without a restart; a missing Secret is SecretNotFound; no value
ever shows in status or logs."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from operator_harness import Cluster, OperatorProcess, eventually, http_source, secret
from test_operator_end_to_end import dispatcher, operator, post_event

from pki import TestCA
from tidings.cli.redis_server import free_port

pytestmark = pytest.mark.integration

# The fixtures, shared with the end-to-end test (its operator allows the loopback subscriber).
__all__ = ["dispatcher", "operator"]

TOKEN_1, TOKEN_2 = "tok-one-8c1f", "tok-two-51aa"
API_KEY = "key-7d0e"


class TlsSubscriber:
    """An https server on 127.0.0.1 with a certificate of `ca`, requiring a client
    certificate of `ca`; records each request's headers and the client's CN."""

    def __init__(self, ca: TestCA, directory: Path) -> None:
        self.context = ca.server_context(directory, require_client_cert=True)
        self.port = free_port()
        self.received: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(pair for rdn in (peer or {}).get("subject", ()) for pair in rdn)
        self.received.append({**request.headers, "client-cn": subject.get("commonName", "")})
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.context).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
async def tls_subscriber(ca: TestCA, tmp_path: Path) -> AsyncIterator[TlsSubscriber]:
    server = TlsSubscriber(ca, tmp_path)
    await server.start()
    yield server
    await server.stop()


def client_secret(ca: TestCA, name: str, cn: str) -> dict[str, Any]:
    issued = ca.issue(cn, server=False, client=True)
    return secret(name, **{"tls.crt": issued.cert, "tls.key": issued.key})


def credentials_trigger(port: int) -> dict[str, Any]:
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "Trigger",
        "metadata": {"name": "t"},
        "spec": {
            "source": "users",
            "subscriber": {"uri": f"https://127.0.0.1:{port}/hook"},
            "delivery": {
                "timeout": "2s",
                "retry": {"initialDelay": "100ms", "maxDelay": "1s"},
                "auth": {"bearer": {"secretRef": {"name": "api", "key": "token"}}},
                "headersFrom": [
                    {"name": "X-Api-Key", "secretKeyRef": {"name": "keys", "key": "apiKey"}}
                ],
                "tls": {
                    "caSecretRef": {"name": "subscriber-ca"},
                    "clientCertSecretRef": {"name": "client"},
                },
            },
        },
    }


def condition(cluster: Cluster, type_: str = "Ready") -> dict[str, Any]:
    return cluster.condition("trigger", "t", type_) or {}


def ready(cluster: Cluster) -> bool:
    ready = condition(cluster)
    assert ready.get("status") == "True", ready
    return True


async def test_credentials_reach_an_mtls_subscriber_and_rotate_without_restart(
    cluster: Cluster,
    operator: OperatorProcess,
    tls_subscriber: TlsSubscriber,
    dispatcher: tuple[str, Path],
    ca: TestCA,
) -> None:
    ns = cluster.namespace
    base, dispatcher_log = dispatcher
    cluster.apply(
        http_source("users"),
        secret("api", token=TOKEN_1),
        secret("keys", apiKey=API_KEY),
        secret("subscriber-ca", **{"ca.crt": ca.cert}),
        client_secret(ca, "client", "client-one"),
        credentials_trigger(tls_subscriber.port),
    )
    await eventually(lambda: ready(cluster), within=60)
    token_secret = cluster.get("secret", "users-ingest-token") or {}
    ingest_token = base64.b64decode(token_secret["data"]["token"]).decode()

    assert await post_event(base, ns, ingest_token) == 202
    await eventually(lambda: len(tls_subscriber.received) == 1, within=20)
    first = tls_subscriber.received[0]
    assert first["Authorization"] == f"Bearer {TOKEN_1}"
    assert first["X-Api-Key"] == API_KEY
    assert first["client-cn"] == "client-one"
    assert "webhook-id" in first

    # Rotation, as cert-manager and a secret rotator would do it: replace the values.
    rotated = time.monotonic()
    cluster.apply(secret("api", token=TOKEN_2), client_secret(ca, "client", "client-two"))

    async def delivered_with_new_credentials() -> bool:
        assert await post_event(base, ns, ingest_token) == 202
        await eventually(lambda: len(tls_subscriber.received) >= 2, within=10)
        last = tls_subscriber.received[-1]
        return last["Authorization"] == f"Bearer {TOKEN_2}" and last["client-cn"] == "client-two"

    await eventually(delivered_with_new_credentials, within=15, interval=0.3)
    took = time.monotonic() - rotated
    print(f"rotation reached the subscriber after {took:.1f}s")
    assert took < 15
    assert tls_subscriber.received[-1]["X-Api-Key"] == API_KEY

    # A key gone from its Secret: SecretNotFound, naming the field, not the value.
    cluster.ok(
        "patch",
        "-n",
        ns,
        "secret",
        "keys",
        "--type=json",
        "-p",
        '[{"op": "remove", "path": "/data/apiKey"}]',
    )
    await eventually(lambda: condition(cluster).get("reason") == "SecretNotFound")
    message = condition(cluster)["message"]
    assert "spec.delivery.headersFrom[0].secretKeyRef" in message
    assert f"{ns}/keys" in message and "'apiKey'" in message

    status = json.dumps((cluster.get("trigger", "t") or {}).get("status"))
    logs = operator.logs() + dispatcher_log.read_text(errors="replace")
    client_key = (cluster.get("secret", "client") or {})["data"]["tls.key"]
    for value in (TOKEN_1, TOKEN_2, API_KEY, base64.b64decode(client_key).decode()[40:80]):
        assert value not in status
        assert value not in logs


async def test_a_subscriber_requiring_a_client_certificate_refuses_a_trigger_without_one(
    cluster: Cluster,
    operator: OperatorProcess,
    tls_subscriber: TlsSubscriber,
    dispatcher: tuple[str, Path],
    ca: TestCA,
) -> None:
    ns = cluster.namespace
    base, _ = dispatcher
    trigger = credentials_trigger(tls_subscriber.port)
    delivery = trigger["spec"]["delivery"]
    del delivery["tls"]["clientCertSecretRef"], delivery["auth"], delivery["headersFrom"]
    cluster.apply(http_source("users"), secret("subscriber-ca", **{"ca.crt": ca.cert}), trigger)
    await eventually(lambda: ready(cluster), within=60)
    token_secret = cluster.get("secret", "users-ingest-token") or {}
    ingest_token = base64.b64decode(token_secret["data"]["token"]).decode()

    assert await post_event(base, ns, ingest_token) == 202

    def last_failure() -> dict[str, Any]:
        status = (cluster.get("trigger", "t") or {}).get("status") or {}
        return (status.get("delivery") or {}).get("lastFailure") or {}

    failure = await eventually(last_failure, within=20)
    assert tls_subscriber.received == []
    assert failure.get("status") is None  # the handshake failed: no HTTP answer
    assert failure.get("message")
