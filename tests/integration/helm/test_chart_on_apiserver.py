"""Every object the chart renders is accepted by the real kube-apiserver
(`kubectl apply --dry-run=server`: defaulting, validation, admission), under
the restricted Pod Security Standard; and a real `helm install` / `upgrade` /
`uninstall` keeps the generated seal key and Redis password (and, across an
upgrade, the console's CSRF key).

The API server has the Tidings CRDs (helm/tidings/crds, applied first) but not
those of the Prometheus Operator and KEDA: stub-crds.yaml installs stand-ins
with the real group/version/kind and the schema parts the chart relies on."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_harness import CHART, VALUES, Helm

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def crds(kubectl: Any) -> None:
    for path in (CHART / "crds", HERE / "stub-crds.yaml"):
        done = kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        assert done.returncode == 0, done.stderr
    waited = kubectl(
        "wait",
        "--for=condition=Established",
        "crd/eventsources.tidings.dev",
        "crd/triggers.tidings.dev",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/scaledobjects.keda.sh",
    )
    assert waited.returncode == 0, waited.stderr


@pytest.fixture
def namespaces(kubectl: Any) -> Iterator[list[str]]:
    """Three fresh namespaces (release, and two to watch), enforcing the
    restricted Pod Security Standard and warning on workloads that break it."""
    suffix = uuid.uuid4().hex[:6]
    names = [f"helm-{role}-{suffix}" for role in ("release", "shop", "billing")]
    for name in names:
        assert kubectl("create", "namespace", name).returncode == 0
        labels = [f"pod-security.kubernetes.io/{mode}=restricted" for mode in ("enforce", "warn")]
        assert kubectl("label", "namespace", name, *labels).returncode == 0
    yield names
    for name in names:
        kubectl("delete", "namespace", name, "--wait=false")


# Each: values files and --set flags (the render tests use the same ones).
CONFIGURATIONS: dict[str, tuple[list[Path], list[str]]] = {
    "defaults": ([], []),
    "all-features": ([VALUES / "all-features.yaml"], []),
    "external-redis": ([VALUES / "external-redis.yaml"], []),
    "minimal": (
        [],
        [
            "dispatcher.autoscaling.enabled=false",
            "operator.peering.enabled=false",
            "redis.persistence.enabled=false",
            "sources.serviceAccount.create=false",
        ],
    ),
    "external-url-secret": (
        [],
        [
            "redis.enabled=false",
            "externalRedis.urlSecret.name=redis-url",
            "networkPolicy.enabled=true",
        ],
    ),
}


@pytest.mark.parametrize("configuration", sorted(CONFIGURATIONS))
def test_every_rendered_object_is_accepted_by_the_api_server(
    helm: Helm, kubectl: Any, crds: None, namespaces: list[str], configuration: str
) -> None:
    release_ns, shop, billing = namespaces
    # The values files name shop/billing/ops: point them at this test's namespaces.
    watched = f"{{{shop},{billing}}}"
    values, settings = CONFIGURATIONS[configuration]
    settings = [*settings, f"sources.namespaces={watched}"]
    if configuration == "all-features":
        settings.append(f"operator.watchNamespaces={watched}")
    rendered = helm.template(f"t{uuid.uuid4().hex[:6]}", release_ns, values=values, set=settings)
    assert rendered.returncode == 0, rendered.stderr
    done = kubectl("apply", "--dry-run=server", "-f", "-", input=rendered.stdout)
    assert done.returncode == 0, done.stderr
    # PodSecurity admission warns (on Deployments/StatefulSets) of anything not restricted.
    assert "Warning" not in done.stderr, done.stderr
    accepted = [line for line in done.stdout.splitlines() if "(server dry run)" in line]
    assert len(accepted) == len([doc for doc in yaml.safe_load_all(rendered.stdout) if doc])


def test_a_pod_breaking_the_restricted_standard_would_be_reported(
    helm: Helm, kubectl: Any, crds: None, namespaces: list[str]
) -> None:
    """The check above can fail: a root container draws the PodSecurity warning."""
    rendered = helm.template("rooted", namespaces[0], set=["containerSecurityContext.runAsUser=0"])
    assert rendered.returncode == 0, rendered.stderr
    done = kubectl("apply", "--dry-run=server", "-f", "-", input=rendered.stdout)
    assert "violate PodSecurity" in done.stderr and "runAsUser=0" in done.stderr


def _secret(kubectl: Any, namespace: str, name: str) -> dict[str, str]:
    done = kubectl("get", "secret", "-n", namespace, name, "-o", "json")
    assert done.returncode == 0, done.stderr
    data: dict[str, str] = json.loads(done.stdout)["data"]
    return data


def test_install_upgrade_uninstall_keeps_the_seal_key_redis_password_and_csrf_key(
    helm: Helm, kubectl: Any, kubeconfig: Path, crds: None, namespaces: list[str]
) -> None:
    namespace = namespaces[0]
    release = f"keep-{uuid.uuid4().hex[:6]}"
    # The shared test server already has the KopfPeering CRDs: do not take them over.
    args = ["--namespace", namespace, "--set", "operator.peering.installCRDs=false"]
    args += ["--set", "console.enabled=true"]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def helm_run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [helm.binary, *command], capture_output=True, text=True, env=env, timeout=120
        )

    installed = helm_run("install", release, str(CHART), *args)
    try:
        assert installed.returncode == 0, installed.stderr
        # NOTES.txt tells how to send a first event.
        notes = installed.stdout
        assert f"{release}-tidings-ingest" in notes
        assert "kubectl apply -f examples/quickstart/" in notes
        assert "/sources/shop/orders?type=" in notes and "Authorization: Bearer" in notes
        seal = _secret(kubectl, namespace, f"{release}-tidings-seal-key")
        password = _secret(kubectl, namespace, f"{release}-tidings-redis")
        csrf = _secret(kubectl, namespace, f"{release}-tidings-console-csrf-key")
        assert len(base64.urlsafe_b64decode(base64.b64decode(seal["key"]))) == 32

        upgraded = helm_run("upgrade", release, str(CHART), *args, "--set", "logLevel=DEBUG")
        assert upgraded.returncode == 0, upgraded.stderr
        assert _secret(kubectl, namespace, f"{release}-tidings-seal-key") == seal
        assert _secret(kubectl, namespace, f"{release}-tidings-redis") == password
        # The console's replicas keep accepting the forms they served before.
        assert _secret(kubectl, namespace, f"{release}-tidings-console-csrf-key") == csrf
    finally:
        uninstalled = helm_run("uninstall", release, "--namespace", namespace)
    assert uninstalled.returncode == 0, uninstalled.stderr
    # Kept on uninstall: sealed values in Redis stay readable after a reinstall.
    assert _secret(kubectl, namespace, f"{release}-tidings-seal-key") == seal
    gone = kubectl("get", "clusterrole", f"{release}-tidings-operator")
    assert gone.returncode != 0 and "NotFound" in gone.stderr
