"""Tidings as users run it: the image, `helm install` onto a real cluster, pods
delivering events, and what a cluster does to pods (a forced kill, a rolling
upgrade, scaling, the operator replaced). In file order: they share one
release; each leaves it as it found it.

Traffic stays in the cluster: producers and subscribers are pods, the tests
read their counts with `kubectl exec`."""

from __future__ import annotations

import re
import time
import uuid

import yaml
from e2e_kube import (
    CHART,
    DISPATCHERS,
    INGEST,
    RELEASE,
    REPO,
    Cluster,
    conditions,
    container_security,
    delivered_all,
    deploy_sink,
    dispatcher_pods,
    pod_security,
    producer_result,
    ready,
    sink_stats,
    start_producer,
    wait_ready,
    wait_until,
)

ENTRY_POINTS = ["operator", "dispatcher", "source", "dev", "send", "replay", "crds"]


def run_pod(cluster: Cluster, namespace: str, name: str, command: list[str]) -> str:
    """Runs `command` in a pod of the Tidings image, as the chart runs it
    (uid 10001, read-only root filesystem); its logs once it Succeeded."""
    cluster.kubectl("-n", namespace, "delete", "pod", name, "--ignore-not-found", "--wait")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": pod_security(),
            "containers": [
                {
                    "name": "run",
                    "image": cluster.image,
                    "imagePullPolicy": cluster.pull_policy,
                    "command": command,
                    "securityContext": container_security(),
                }
            ],
        },
    }
    cluster.apply(yaml.safe_dump(pod))

    def phase() -> str:
        found = cluster.kubectl(
            "-n", namespace, "get", "pod", name, "-o", "jsonpath={.status.phase}"
        )
        return found if found in ("Succeeded", "Failed") else ""

    result = wait_until(f"pod {name}", phase, 120)
    logs = cluster.kubectl("-n", namespace, "logs", name)
    assert result == "Succeeded", f"{command} failed:\n{logs[-3000:]}"
    cluster.kubectl("-n", namespace, "delete", "pod", name, "--wait=false")
    return logs


def fixed_dispatchers(cluster: Cluster, namespace: str, replicas: int) -> None:
    """No HPA (it would undo `kubectl scale`): a fixed count, rolled out."""
    cluster.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        "--reuse-values",
        "--set",
        "dispatcher.autoscaling.enabled=false",
        "--set",
        f"dispatcher.replicas={replicas}",
        "--wait",
        "--timeout",
        "5m",
    )
    wait_until(
        f"{replicas} dispatchers", lambda: len(dispatcher_pods(cluster, namespace)) == replicas, 120
    )


def collect_logs(cluster: Cluster, namespace: str, selector: str, label: str) -> None:
    for pod in cluster.pods(namespace, selector):
        name = pod["metadata"]["name"]
        cluster.logs[f"{label}/{name}"] = cluster.kubectl(
            "-n", namespace, "logs", name, "--all-containers", check=False
        )


def test_every_entry_point_starts_in_the_image_as_uid_10001_read_only(cluster: Cluster) -> None:
    script = "; ".join(f"tidings {c} --help >/dev/null || exit 1" for c in ENTRY_POINTS)
    logs = run_pod(cluster, "default", "e2e-entry-points", ["sh", "-c", script + "; id -u"])
    assert logs.strip().splitlines()[-1] == "10001"


def test_helm_install_with_defaults_every_pod_ready_without_restarts(
    cluster: Cluster, release: str
) -> None:
    pods = cluster.pods(release)
    names = {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in pods}
    assert {"operator", "dispatcher", "redis"} <= names, names
    for pod in pods:
        statuses = pod["status"].get("containerStatuses", [])
        assert statuses and all(s["ready"] for s in statuses), pod["metadata"]["name"]
    restarts = cluster.restarts(release)
    cluster.note(test="install", pods=len(pods), restarts=restarts)
    assert set(restarts.values()) == {0}, restarts


def test_quickstart_is_delivered_in_cluster(cluster: Cluster, release: str) -> None:
    """examples/quickstart as the README applies it, with its subscriber.py in a pod."""
    ns = "shop"
    cluster.kubectl("create", "namespace", ns, check=False)
    cluster.apply(
        cluster.kubectl(
            "-n",
            ns,
            "create",
            "configmap",
            "subscriber",
            f"--from-file={REPO / 'examples/quickstart/subscriber.py'}",
            "--dry-run=client",
            "-o",
            "yaml",
        )
    )
    labels = {"app": "subscriber"}
    cluster.apply(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "subscriber", "namespace": ns},
                    "spec": {
                        "selector": {"matchLabels": labels},
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {
                                "securityContext": pod_security(),
                                "containers": [
                                    {
                                        "name": "subscriber",
                                        "image": cluster.image,
                                        "imagePullPolicy": cluster.pull_policy,
                                        "command": [
                                            "python",
                                            "/app/subscriber.py",
                                            "--host",
                                            "0.0.0.0",
                                            "--port",
                                            "9000",
                                        ],
                                        "readinessProbe": {
                                            "tcpSocket": {"port": 9000},
                                            "periodSeconds": 1,
                                        },
                                        "securityContext": container_security(),
                                        "volumeMounts": [{"name": "app", "mountPath": "/app"}],
                                    }
                                ],
                                "volumes": [{"name": "app", "configMap": {"name": "subscriber"}}],
                            },
                        },
                    },
                },
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "subscriber", "namespace": ns},
                    "spec": {"selector": labels, "ports": [{"port": 9000, "targetPort": 9000}]},
                },
            ]
        )
    )
    cluster.kubectl("apply", "-f", str(REPO / "examples" / "quickstart"))
    cluster.kubectl("-n", ns, "rollout", "status", "deployment/subscriber", "--timeout=120s")
    wait_ready(cluster, ns, "eventsource", "orders")
    wait_ready(cluster, ns, "trigger", "print-orders")
    event_id = f"quickstart-{uuid.uuid4().hex[:8]}"
    # From the subscriber's pod (the image has Python) to the ingest Service, as a producer would.
    send = (
        "import sys, urllib.request\n"
        "r = urllib.request.Request(sys.argv[1], data=b'{\"order\": 1}', headers={\n"
        " 'Authorization': 'Bearer dev-token-change-me', 'Content-Type': 'application/json',\n"
        " 'ce-specversion': '1.0', 'ce-id': sys.argv[2], 'ce-source': '/e2e',\n"
        " 'ce-type': 'com.shop.order.created'})\n"
        "print(urllib.request.urlopen(r, timeout=10).status)\n"
    )
    status = cluster.exec_python(
        ns, "deployment/subscriber", send, f"{INGEST}/sources/shop/orders", event_id
    )
    assert status.strip() == "202"
    wait_until(
        f"delivery of {event_id}",
        lambda: f"id={event_id}" in cluster.kubectl("-n", ns, "logs", "deployment/subscriber"),
        60,
    )
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_a_dispatcher_killed_mid_delivery_loses_nothing(
    cluster: Cluster, release: str, app: str
) -> None:
    """3 dispatchers, 5,000 events; one pod force-deleted (no SIGTERM drain)
    while they are delivered: all 5,000 arrive; duplicates are counted."""
    fixed_dispatchers(cluster, release, 3)
    count = 5000
    producer = start_producer(
        cluster,
        app,
        ingest=INGEST,
        source=f"{app}/load",
        token_secret="load-ingest",
        prefix="crash-",
        count=count,
        rate=400,
    )
    wait_until(
        "the first 1,000 deliveries",
        lambda: sink_stats(cluster, app, "crash-", count)["unique"] >= 1000,
        120,
        0.5,
    )
    victim = dispatcher_pods(cluster, release)[0]
    cluster.kubectl("-n", release, "delete", "pod", victim, "--grace-period=0", "--force")
    sent = producer_result(cluster, app, producer, 300)
    assert sent["accepted"] == count, sent
    stats = delivered_all(cluster, "crash-", count, 240)
    cluster.note(test="crash", killed=victim, producer=sent, sink=stats)
    assert stats["unique"] == count


def test_a_rolling_upgrade_to_a_new_tag_loses_nothing(
    cluster: Cluster, release: str, app: str
) -> None:
    """`helm upgrade` to another image tag during a steady stream: every event
    accepted (a 503 from a draining dispatcher is retried, as the docs say
    producers should) and delivered."""
    assert cluster.upgrade_tag, "TIDINGS_E2E_UPGRADE_TAG names a second tag of the image"
    count = 3000
    producer = steady_stream(cluster, app, "upgrade-", count)
    cluster.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        release,
        "--reuse-values",
        "--set",
        f"image.tag={cluster.upgrade_tag}",
        "--wait",
        "--timeout",
        "5m",
    )
    images = {
        c["image"]
        for p in cluster.pods(release, DISPATCHERS)
        if not p["metadata"].get("deletionTimestamp")  # the old ones may still drain
        for c in p["spec"]["containers"]
    }
    sent = producer_result(cluster, app, producer, 300)
    stats = delivered_all(cluster, "upgrade-", count, 240)
    cluster.note(test="rolling upgrade", images=sorted(images), producer=sent, sink=stats)
    assert sent["accepted"] == count, sent
    assert all(image.endswith(f":{cluster.upgrade_tag}") for image in images), images
    # The only 5xx the drain may cause is 503 (ingest stopped, Retry-After).
    assert not {a for a in sent["answers"] if a.startswith("5") and a != "503"}, sent
    assert stats["unique"] == count


def test_scaling_dispatchers_down_to_one_and_back_loses_nothing(
    cluster: Cluster, release: str, app: str
) -> None:
    count = 3000
    producer = steady_stream(cluster, app, "scale-", count)
    deployment = f"deployment/{RELEASE}-dispatcher"
    cluster.kubectl("-n", release, "scale", deployment, "--replicas=1")
    wait_until("1 dispatcher", lambda: len(dispatcher_pods(cluster, release)) == 1, 120)
    time.sleep(3)
    cluster.kubectl("-n", release, "scale", deployment, "--replicas=3")
    cluster.kubectl("-n", release, "rollout", "status", deployment, "--timeout=120s")
    sent = producer_result(cluster, app, producer, 300)
    stats = delivered_all(cluster, "scale-", count, 240)
    cluster.note(test="scale 3-1-3", producer=sent, sink=stats)
    assert sent["accepted"] == count, sent
    assert stats["unique"] == count


REDIS_VERSION = ["redis-cli", "GET", "tidings:{routing}:version"]


def test_a_new_operator_takes_over_without_rewriting_routes(
    cluster: Cluster, release: str, app: str
) -> None:
    version = cluster.kubectl("-n", release, "exec", f"{RELEASE}-redis-0", "--", *REDIS_VERSION)
    assert version.strip(), "the routing table has a version"
    collect_logs(cluster, release, "app.kubernetes.io/component=operator", "operator")
    old = [
        p["metadata"]["name"] for p in cluster.pods(release, "app.kubernetes.io/component=operator")
    ]
    cluster.kubectl("-n", release, "delete", "pod", *old)
    cluster.kubectl(
        "-n", release, "rollout", "status", f"deployment/{RELEASE}-operator", "--timeout=120s"
    )
    new = [
        p
        for p in cluster.pods(release, "app.kubernetes.io/component=operator")
        if p["metadata"]["name"] not in old
    ]
    assert len(new) == 1
    # The new operator resumes every object (Kopf's resume handlers) and reads the
    # health of every Trigger; give it a few health intervals.
    time.sleep(20)
    after = cluster.kubectl("-n", release, "exec", f"{RELEASE}-redis-0", "--", *REDIS_VERSION)
    assert ready(cluster, app, "trigger", "to-sink"), conditions(cluster, app, "trigger", "to-sink")
    assert ready(cluster, app, "eventsource", "load")
    cluster.note(
        test="operator takeover", version_before=version.strip(), version_after=after.strip()
    )
    assert after.strip() == version.strip(), "the new operator rewrote the routing table"


POSTGRES = """\
set -e
mkdir -p /data/pg && chown postgres /data/pg
exec su postgres -s /bin/sh -c '
  set -e
  export PATH=/usr/lib/postgresql/15/bin:$PATH
  initdb -D /data/pg -U postgres --auth=trust >/dev/null
  echo "host all all 0.0.0.0/0 trust" >> /data/pg/pg_hba.conf
  echo "host replication all 0.0.0.0/0 trust" >> /data/pg/pg_hba.conf
  exec postgres -D /data/pg -c wal_level=logical -c listen_addresses="*" \
    -c unix_socket_directories=/tmp -c max_replication_slots=4 -c max_wal_senders=4'
"""


def psql(cluster: Cluster, ns: str, sql: str) -> str:
    return cluster.kubectl(
        "-n",
        ns,
        "exec",
        "deployment/postgres",
        "--",
        "su",
        "postgres",
        "-s",
        "/bin/sh",
        "-c",
        f'/usr/lib/postgresql/15/bin/psql -h /tmp -U postgres -tAc "{sql}"',
    ).strip()


def test_postgres_cdc_in_cluster_with_the_adapter_pod(cluster: Cluster, release: str) -> None:
    ns = "e2e-pg"
    cluster.kubectl("create", "namespace", ns, check=False)
    # The adapters' ServiceAccount goes where postgres EventSources live.
    cluster.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        release,
        "--reuse-values",
        "--set",
        f"sources.namespaces={{{ns}}}",
        "--wait",
        "--timeout",
        "5m",
    )
    labels = {"app": "postgres"}
    cluster.apply(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "postgres", "namespace": ns},
                    "spec": {
                        "selector": {"matchLabels": labels},
                        "strategy": {"type": "Recreate"},
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {
                                "containers": [
                                    {
                                        "name": "postgres",
                                        "image": cluster.postgres_image,
                                        # Loaded (hack/cluster.sh) or pulled (kind).
                                        "imagePullPolicy": "IfNotPresent",
                                        "command": ["sh", "-c", POSTGRES],
                                        "ports": [{"containerPort": 5432}],
                                        "readinessProbe": {
                                            "tcpSocket": {"port": 5432},
                                            "periodSeconds": 1,
                                        },
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
                    "metadata": {"name": "postgres", "namespace": ns},
                    "spec": {"selector": labels, "ports": [{"port": 5432}]},
                },
            ]
        )
    )
    cluster.kubectl("-n", ns, "rollout", "status", "deployment/postgres", "--timeout=120s")
    psql(cluster, ns, "CREATE TABLE users (id int PRIMARY KEY, email text)")
    deploy_sink(cluster, ns)
    dsn = f"postgresql://postgres@postgres.{ns}.svc.cluster.local:5432/postgres"
    cluster.apply(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "users-db", "namespace": ns},
                    "stringData": {"dsn": dsn},
                },
                {
                    "apiVersion": "tidings.dev/v1alpha1",
                    "kind": "EventSource",
                    "metadata": {"name": "users", "namespace": ns},
                    "spec": {
                        "postgres": {
                            "connectionSecretRef": {"name": "users-db", "key": "dsn"},
                            "tables": ["public.users"],
                            "operations": ["insert"],
                        }
                    },
                },
                {
                    "apiVersion": "tidings.dev/v1alpha1",
                    "kind": "Trigger",
                    "metadata": {"name": "users-to-sink", "namespace": ns},
                    "spec": {
                        "source": "users",
                        "subscriber": {"ref": {"kind": "Service", "name": "sink", "port": 9000}},
                    },
                },
            ]
        )
    )
    wait_ready(cluster, ns, "eventsource", "users", 180)
    wait_ready(cluster, ns, "trigger", "users-to-sink")
    adapters = [
        p
        for p in cluster.pods(ns)
        if p["metadata"]["labels"].get("app") not in ("postgres", "sink")
    ]
    assert adapters, [p["metadata"]["name"] for p in cluster.pods(ns)]
    accounts = {p["spec"].get("serviceAccountName") for p in adapters}
    assert accounts == {f"{RELEASE}-source"}, accounts
    rows = 50
    psql(
        cluster,
        ns,
        f"INSERT INTO users SELECT i, 'u' || i || '@example.com' FROM generate_series(1, {rows}) i",
    )

    def arrived() -> bool:
        stats = cluster.exec_python(
            ns,
            "deployment/sink",
            "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9000/stats').read().decode())",
        )
        return int(yaml.safe_load(stats)["unique"]) >= rows

    wait_until(f"{rows} inserted rows at the subscriber", arrived, 120)
    collect_logs(cluster, ns, "", "e2e-pg")
    slots_before = psql(cluster, ns, "SELECT count(*) FROM pg_replication_slots")
    cluster.kubectl("-n", ns, "delete", "eventsource", "users", "--timeout=120s")
    wait_until(
        "the adapter Deployment to go",
        lambda: (
            not [
                d
                for d in cluster.get("-n", ns, "deployments")["items"]
                if d["metadata"]["name"] not in ("postgres", "sink")
            ]
        ),
        120,
    )
    slots_after = psql(cluster, ns, "SELECT count(*) FROM pg_replication_slots")
    cluster.note(test="postgres cdc", rows=rows, slots_before=slots_before, slots_after=slots_after)
    assert slots_before == "1" and slots_after == "0"
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


FORBIDDEN = re.compile(r"\b403\b|[Ff]orbidden")


def test_no_403_from_the_api_in_operator_or_adapter_logs(cluster: Cluster, release: str) -> None:
    """The operator and the adapters ran with the chart's ServiceAccounts only."""
    collect_logs(cluster, release, "app.kubernetes.io/component=operator", "operator")
    assert any(k.startswith("operator/") for k in cluster.logs)
    found = {
        name: [line for line in text.splitlines() if FORBIDDEN.search(line)][:3]
        for name, text in cluster.logs.items()
    }
    found = {name: lines for name, lines in found.items() if lines}
    assert not found, found


def test_no_pod_of_the_release_restarted_during_the_run(cluster: Cluster, release: str) -> None:
    restarts = cluster.restarts(release)
    cluster.note(test="end", restarts=restarts)
    assert set(restarts.values()) == {0}, restarts


def steady_stream(cluster: Cluster, app: str, prefix: str, count: int) -> str:
    """`count` events at 150/s into the load source, already flowing to the sink."""
    producer = start_producer(
        cluster,
        app,
        ingest=INGEST,
        source=f"{app}/load",
        token_secret="load-ingest",
        prefix=prefix,
        count=count,
        rate=150,
    )
    wait_until(
        "the stream to flow",
        lambda: sink_stats(cluster, app, prefix, count)["unique"] >= 200,
        120,
        0.5,
    )
    return producer
