"""objectStore sources in the cluster: Versity Gateway runs as a pod (the
image hack/build-images.sh makes from hack/s3.sh's binary) and pushes its
notifications to the ingest Service; a poll source's adapter is the
operator's Deployment with the chart's adapter ServiceAccount. Objects
uploaded and deleted in both buckets reach an in-cluster subscriber, each
change once."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest
import yaml
from e2e_kube import (
    CHART,
    INGEST,
    RELEASE,
    Cluster,
    container_security,
    deploy_sink,
    pod_security,
    wait_ready,
    wait_until,
)

NS = "e2e-s3"
STORE = f"http://s3.{NS}.svc.cluster.local:7070"
TOKEN = "e2e-s3-token"

# Runs in the sink's pod (the Tidings image has the MinIO SDK): buckets,
# uploads and deletions through the gateway's Service.
STORE_SCRIPT = """
import io, json, sys
from minio import Minio
endpoint, access, secret, plan = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
client = Minio(endpoint, access_key=access, secret_key=secret, secure=False, region="us-east-1")
for bucket in plan.get("make", []):
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
for bucket, key in plan.get("put", []):
    client.put_object(bucket, key, io.BytesIO(key.encode()), len(key))
for bucket, key in plan.get("delete", []):
    client.remove_object(bucket, key)
print("ok")
"""

RECEIVED = (
    "import sys, urllib.request; print(urllib.request.urlopen("
    "'http://127.0.0.1:9000/received?source=' + sys.argv[1]).read().decode())"
)


def store(cluster: Cluster, access: str, secret: str, **plan: Any) -> None:
    out = cluster.exec_python(
        NS,
        "deployment/sink",
        STORE_SCRIPT,
        f"s3.{NS}.svc.cluster.local:7070",
        access,
        secret,
        json.dumps(plan),
    )
    assert out.strip() == "ok", out


def received(cluster: Cluster, bucket: str) -> list[list[str]]:
    out = cluster.exec_python(NS, "deployment/sink", RECEIVED, f"s3://{bucket}")
    return list(json.loads(out))


def gateway(cluster: Cluster) -> list[dict[str, Any]]:
    """Versity Gateway (POSIX backend on an emptyDir), posting every bucket's
    notifications to the notify source's ingest URL (?token=: it sets no headers)."""
    labels = {"app": "s3"}
    webhook = f"{INGEST}/sources/{NS}/notified?token={TOKEN}"
    keys = [
        {"name": variable, "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": key}}}
        for variable, key in (
            ("ROOT_ACCESS_KEY_ID", "accessKeyId"),
            ("ROOT_SECRET_ACCESS_KEY", "secretAccessKey"),
        )
    ]
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "s3", "namespace": NS},
            "spec": {
                "selector": {"matchLabels": labels},
                "strategy": {"type": "Recreate"},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": pod_security(),
                        "initContainers": [
                            {
                                "name": "dirs",
                                "image": cluster.image,
                                "imagePullPolicy": cluster.pull_policy,
                                "command": ["mkdir", "-p", "/data/iam", "/data/store"],
                                "securityContext": container_security(),
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            }
                        ],
                        "containers": [
                            {
                                "name": "versitygw",
                                "image": cluster.s3_image,
                                "imagePullPolicy": "Never",
                                "args": [
                                    "--port",
                                    ":7070",
                                    "--iam-dir",
                                    "/data/iam",
                                    "--event-webhook-url",
                                    webhook,
                                    "posix",
                                    "/data/store",
                                ],
                                "env": keys,
                                "ports": [{"containerPort": 7070}],
                                "readinessProbe": {
                                    "tcpSocket": {"port": 7070},
                                    "periodSeconds": 1,
                                },
                                "securityContext": container_security(),
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            }
                        ],
                        "volumes": [{"name": "data", "emptyDir": {}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "s3", "namespace": NS},
            "spec": {"selector": labels, "ports": [{"port": 7070, "targetPort": 7070}]},
        },
    ]


def source(name: str, mode: str, **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "objectStore": {
                "endpoint": STORE,
                "bucket": name,
                "events": ["created", "deleted"],
                "mode": mode,
                **fields,
            }
        },
    }


def trigger(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "Trigger",
        "metadata": {"name": f"{name}-to-sink", "namespace": NS},
        "spec": {
            "source": name,
            "subscriber": {"ref": {"kind": "Service", "name": "sink", "port": 9000}},
        },
    }


@pytest.mark.timeout(1200)
def test_poll_and_notify_sources_deliver_to_an_in_cluster_subscriber(
    cluster: Cluster, release: str
) -> None:
    assert cluster.s3_image, (
        "TIDINGS_E2E_S3_IMAGE names a Versity Gateway image loaded in the cluster "
        "(hack/cluster.sh env prints it; hack/build-images.sh versitygw makes it)"
    )
    cluster.kubectl("create", "namespace", NS, check=False)
    # The adapters' ServiceAccount goes where poll sources live.
    cluster.helm(
        "upgrade", RELEASE, str(CHART), "-n", release, "--reuse-values",
        "--set", f"sources.namespaces={{{NS}}}", "--wait", "--timeout", "5m",
    )  # fmt: skip
    access, secret = f"e2e{secrets.token_hex(4)}", secrets.token_hex(20)
    deploy_sink(cluster, NS)
    cluster.apply(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "s3-creds", "namespace": NS},
                    "stringData": {"accessKeyId": access, "secretAccessKey": secret},
                },
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "notified-token", "namespace": NS},
                    "stringData": {"token": TOKEN},
                },
                source(
                    "polled",
                    "poll",
                    pollInterval="2s",
                    credentialsSecretRef={"name": "s3-creds"},
                ),
                source(
                    "notified",
                    "notify",
                    auth={"tokenSecretRef": {"name": "notified-token", "key": "token"}},
                ),
                trigger("polled"),
                trigger("notified"),
            ]
        )
    )
    # The gateway posts a test notification at start and refuses to start if
    # nothing answers: the notify source is routed first.
    wait_ready(cluster, NS, "eventsource", "notified")
    wait_ready(cluster, NS, "trigger", "notified-to-sink")
    cluster.apply(yaml.safe_dump_all(gateway(cluster)))
    cluster.kubectl("-n", NS, "rollout", "status", "deployment/s3", "--timeout=180s")
    store(cluster, access, secret, make=["polled", "notified"])
    # The poll adapter retried (BucketNotFound) until now; Ready once it lists.
    wait_ready(cluster, NS, "eventsource", "polled", 240)
    wait_ready(cluster, NS, "trigger", "polled-to-sink")
    adapters = [
        p for p in cluster.pods(NS) if p["metadata"]["labels"].get("app") not in ("s3", "sink")
    ]
    assert {p["spec"].get("serviceAccountName") for p in adapters} == {f"{RELEASE}-source"}

    keys = [f"in/{i:02d}.txt" for i in range(20)]
    gone = keys[:5]
    # One exec each (a Python start in a pod takes tens of seconds on this loaded machine).
    store(cluster, access, secret, put=[[b, key] for b in ("polled", "notified") for key in keys])
    # A poll between the uploads and the deletions, so each upload is seen.
    wait_until(
        "the polled uploads at the subscriber",
        lambda: len(received(cluster, "polled")) >= len(keys),
        120,
        2,
    )
    store(
        cluster, access, secret, delete=[[b, key] for b in ("polled", "notified") for key in gone]
    )
    expected = len(keys) + len(gone)
    for bucket in ("polled", "notified"):
        wait_until(
            f"{expected} events of s3://{bucket} at the subscriber",
            lambda b=bucket: len(received(cluster, b)) >= expected,
            120,
            2,
        )
    time.sleep(6)  # three more poll intervals: nothing repeats
    summary = {}
    for bucket in ("polled", "notified"):
        events = received(cluster, bucket)
        created = sorted(s for t, s, _ in events if t.endswith(".created"))
        deleted = sorted(s for t, s, _ in events if t.endswith(".deleted"))
        summary[bucket] = {"events": len(events), "ids": len({i for _, _, i in events})}
        assert created == keys, (bucket, events)
        assert deleted == gone, (bucket, events)
        assert len({i for _, _, i in events}) == len(events)  # no duplicate delivery
    cluster.note(test="objectStore in cluster", **summary)
    cluster.kubectl("delete", "namespace", NS, "--wait=false")
