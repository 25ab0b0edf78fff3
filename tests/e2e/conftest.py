"""Fixtures of the in-cluster tests: a real cluster (hack/cluster.sh here,
kind with hack/kind-e2e.sh), the chart installed once with its defaults plus
the local values, and a namespace with a counting subscriber. Without a
cluster every test here fails, saying how to get one."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from e2e_kube import (
    APP_NAMESPACE,
    CHART,
    HOW_TO_GET_A_CLUSTER,
    NAMESPACE,
    RELEASE,
    Cluster,
    KubeError,
    deploy_sink,
)

_CLUSTERS: list[Cluster] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: needs a real cluster with the image loaded (hack/cluster.sh up)"
    )


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    missing = [
        name
        for name in ("KUBECONFIG", "HELM", "KUBECTL", "TIDINGS_LOCAL_VALUES")
        if not os.environ.get(name)
    ]
    if missing:
        pytest.fail(f"{HOW_TO_GET_A_CLUSTER} ({', '.join(missing)} not set)", pytrace=False)
    found = Cluster(
        kubeconfig=os.environ["KUBECONFIG"],
        kubectl_bin=os.environ["KUBECTL"],
        helm_bin=os.environ["HELM"],
        values=Path(os.environ["TIDINGS_LOCAL_VALUES"]),
        upgrade_tag=os.environ.get("TIDINGS_E2E_UPGRADE_TAG", ""),
        postgres_image=os.environ.get("TIDINGS_E2E_POSTGRES_IMAGE", "postgres:15-bookworm"),
        s3_image=os.environ.get("TIDINGS_E2E_S3_IMAGE", ""),
    )
    try:
        found.kubectl("get", "--raw=/readyz", timeout=20)
    except (KubeError, OSError) as error:
        pytest.fail(
            f"{HOW_TO_GET_A_CLUSTER}: the API server does not answer: {error}", pytrace=False
        )
    _CLUSTERS.append(found)
    return found


TEST_NAMESPACES = (APP_NAMESPACE, "shop", "e2e-pg", "e2e-s3")


def remove_test_namespaces(cluster: Cluster) -> None:
    """While the operator still runs, so it releases its finalizers; left over
    by a run that stopped half-way, with no operator, they are stripped."""
    found = cluster.kubectl("get", "namespaces", "-o", "name").split()
    gone = [ns for ns in TEST_NAMESPACES if f"namespace/{ns}" in found]
    if not gone:
        return
    cluster.kubectl("delete", "namespace", *gone, "--wait=false")
    done = cluster.kubectl(
        "wait",
        "--for=delete",
        *[f"namespace/{ns}" for ns in gone],
        "--timeout=60s",
        check=False,
        timeout=90,
    )
    if "condition met" in done and done.count("condition met") == len(gone):
        return
    for ns in gone:
        for kind in ("eventsources", "triggers"):
            for name in cluster.kubectl("-n", ns, "get", kind, "-o", "name", check=False).split():
                cluster.kubectl(
                    "-n",
                    ns,
                    "patch",
                    name,
                    "--type=merge",
                    "-p",
                    '{"metadata":{"finalizers":null}}',
                    check=False,
                )
    cluster.kubectl(
        "wait",
        "--for=delete",
        *[f"namespace/{ns}" for ns in gone],
        "--timeout=120s",
        check=False,
        timeout=150,
    )


@pytest.fixture(scope="session")
def release(cluster: Cluster) -> Iterator[str]:
    """`helm install` with the chart's defaults plus the local values (images),
    waited for; uninstalled afterwards (TIDINGS_E2E_KEEP=1 keeps it)."""
    remove_test_namespaces(cluster)
    cluster.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--ignore-not-found")
    cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=120s")
    cluster.helm(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        "--create-namespace",
        "-f",
        str(cluster.values),
        "--wait",
        "--timeout",
        "5m",
    )
    yield NAMESPACE
    if os.environ.get("TIDINGS_E2E_KEEP") != "1":
        remove_test_namespaces(cluster)
        cluster.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--ignore-not-found")
        cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false")


@pytest.fixture(scope="session")
def app(cluster: Cluster, release: str) -> str:
    """Namespace e2e-app: the sink, the http EventSource `load` (token in
    Secret load-ingest) and the Trigger `to-sink`, both Ready."""
    deploy_sink(cluster, APP_NAMESPACE)
    cluster.apply(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "load-ingest", "namespace": APP_NAMESPACE},
                    "stringData": {"token": "e2e-token"},
                },
                {
                    "apiVersion": "tidings.dev/v1alpha1",
                    "kind": "EventSource",
                    "metadata": {"name": "load", "namespace": APP_NAMESPACE},
                    "spec": {
                        "http": {
                            "auth": {"tokenSecretRef": {"name": "load-ingest", "key": "token"}}
                        }
                    },
                },
                {
                    "apiVersion": "tidings.dev/v1alpha1",
                    "kind": "Trigger",
                    "metadata": {"name": "to-sink", "namespace": APP_NAMESPACE},
                    "spec": {
                        "source": "load",
                        "subscriber": {
                            "ref": {"kind": "Service", "name": "sink", "port": 9000},
                            "path": "/events",
                        },
                        "delivery": {
                            "timeout": "5s",
                            "retry": {"maxAttempts": 30, "initialDelay": "200ms", "maxDelay": "2s"},
                        },
                    },
                },
            ]
        )
    )
    for kind in ("eventsource/load", "trigger/to-sink"):
        cluster.kubectl(
            "-n", APP_NAMESPACE, "wait", kind, "--for=condition=Ready", "--timeout=120s"
        )
    return APP_NAMESPACE


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for found in _CLUSTERS:
        if found.report:
            terminalreporter.section("in-cluster figures (tests/e2e)")
            for figures in found.report:
                terminalreporter.write_line(json.dumps(figures))
