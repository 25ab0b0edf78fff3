"""objectStore EventSources under the operator (a real kube-apiserver): poll runs
its adapter Deployment with the access keys by secretKeyRef; notify gets a
generated token and becomes Ready with a status telling what to configure on
the store."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from operator_harness import Cluster, OperatorProcess, eventually, routing_table, secret
from redis.asyncio import Redis

from tidings.api.sealing import Sealer
from tidings.sources.status import StatusReporter

pytestmark = pytest.mark.integration


def object_store(name: str, **store: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": name},
        "spec": {
            "objectStore": {"endpoint": "http://s3.storage.svc:7070", "bucket": "uploads", **store}
        },
    }


def reason(cluster: Cluster, name: str) -> str | None:
    return (cluster.condition("eventsource", name, "Ready") or {}).get("reason")


async def test_a_notify_source_is_ready_and_says_what_to_configure_on_the_store(
    cluster: Cluster, operator: OperatorProcess, redis: Redis, seal_key: str
) -> None:
    ns = cluster.namespace
    cluster.apply(object_store("photos", mode="notify", prefix="in/", events=["created"]))
    ready = await eventually(
        lambda: (
            reason(cluster, "photos") == "Ready"
            and cluster.condition("eventsource", "photos", "Ready")
        )
    )
    url = f"http://tidings-ingest.tidings.svc.cluster.local/sources/{ns}/photos"
    source = cluster.get("eventsource", "photos") or {}
    assert source["status"]["url"] == url
    message = ready["message"]
    assert f"to {url} with the header 'Authorization: Bearer <token>'" in message
    assert f"{url}?token=<token>" in message
    assert "key 'token' of Secret photos-ingest-token" in message
    assert cluster.get("deployment", "tidings-source-photos") is None  # the store pushes

    token_secret = cluster.get("secret", "photos-ingest-token") or {}
    token = base64.b64decode(token_secret["data"]["token"]).decode()
    compiled = (await routing_table(redis)).sources[f"{ns}/photos"]
    assert compiled.ingest is not None and compiled.ingest.token_in_query
    assert compiled.ingest.token_sealed is not None
    assert Sealer(seal_key).unseal(compiled.ingest.token_sealed) == token
    assert compiled.object_store is not None
    assert (compiled.object_store.bucket, compiled.object_store.prefix) == ("uploads", "in/")


async def test_a_poll_source_waits_for_its_credentials_then_runs_its_adapter(
    cluster: Cluster, operator: OperatorProcess, redis: Redis
) -> None:
    ns = cluster.namespace
    cluster.apply(object_store("scans", mode="poll", credentialsSecretRef={"name": "s3-creds"}))
    missing = await eventually(
        lambda: (
            reason(cluster, "scans") == "SecretNotFound"
            and cluster.condition("eventsource", "scans", "Ready")
        )
    )
    assert "spec.objectStore.credentialsSecretRef" in missing["message"]
    assert cluster.get("deployment", "tidings-source-scans") is None

    cluster.apply(secret("s3-creds", accessKeyId="AKID", secretAccessKey="s3cr3t-v4lue-0"))
    deployment = await eventually(lambda: cluster.get("deployment", "tidings-source-scans"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["source", "objectStore", "--eventsource", f"{ns}/scans"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TIDINGS_S3_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3-creds",
        "key": "accessKeyId",
    }
    assert env["TIDINGS_S3_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3-creds",
        "key": "secretAccessKey",
    }
    assert "s3cr3t-v4lue-0" not in json.dumps(deployment)  # by reference only

    # What the Deployment controller and the adapter would report once it runs.
    cluster.ok(
        "patch",
        "-n",
        ns,
        "deployment",
        "tidings-source-scans",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"replicas": 1, "availableReplicas": 1, "readyReplicas": 1}}),
    )
    reporter = StatusReporter(redis, ns, "scans")
    await reporter.report("Running", "Polling", "listing bucket uploads every 10s")
    await eventually(lambda: reason(cluster, "scans") == "Ready")
    capturing = cluster.condition("eventsource", "scans", "Capturing") or {}
    assert capturing.get("status") == "True"

    cluster.delete("eventsource", "scans", wait=True)
    assert cluster.get("deployment", "tidings-source-scans") is None


async def test_fixing_the_credentials_secret_rolls_the_adapter(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    """The adapter reads its keys only at start: a changed Secret must change
    the pod template, or an InvalidCredentials adapter keeps the wrong keys."""
    cluster.apply(secret("s3-keys", accessKeyId="AKID", secretAccessKey="wr0ng-s3cr3t-000"))
    cluster.apply(object_store("inbox", mode="poll", credentialsSecretRef={"name": "s3-keys"}))

    def secrets_hash() -> str | None:
        deployment = cluster.get("deployment", "tidings-source-inbox") or {}
        template = (deployment.get("spec") or {}).get("template") or {}
        return (
            (template.get("metadata") or {}).get("annotations", {}).get("tidings.dev/secrets-hash")
        )

    first = await eventually(secrets_hash)
    cluster.apply(secret("s3-keys", accessKeyId="AKID", secretAccessKey="r1ght-s3cr3t-000"))
    second = await eventually(lambda: secrets_hash() not in (None, first) and secrets_hash())
    deployment = cluster.get("deployment", "tidings-source-inbox") or {}
    assert "r1ght-s3cr3t-000" not in json.dumps(deployment)  # a digest, not the value
    assert second != first
