"""examples/gitops: a Kustomization of every example manifest that kustomize
builds (as Flux and Argo CD run it) and the real API server accepts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from helm_harness import CHART, REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

GITOPS = REPO / "examples" / "gitops"


def build(kubectl: Any) -> list[dict[str, Any]]:
    # kubectl's built-in kustomize; Argo CD needs the same option set in argocd-cm.
    done = kubectl("kustomize", "--load-restrictor", "LoadRestrictionsNone", str(GITOPS))
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_every_example_manifest_is_in_the_kustomization(kubectl: Any) -> None:
    listed = yaml.safe_load((GITOPS / "kustomization.yaml").read_text())["resources"]
    resolved = {(GITOPS / path).resolve() for path in listed}
    examples = {
        path.resolve() for path in (REPO / "examples").rglob("*.yaml") if path.parent != GITOPS
    }
    assert examples - resolved == set(), "add new examples to examples/gitops/kustomization.yaml"
    objects = build(kubectl)
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key in {(o["kind"], o["metadata"]["name"]) for o in objects}, key


def test_the_quickstart_subscriber_serves_the_service_its_trigger_names(kubectl: Any) -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in build(kubectl)}
    trigger = objects[("Trigger", "print-orders")]["spec"]["subscriber"]["ref"]
    service = objects[("Service", trigger["name"])]
    assert trigger["port"] in [p["port"] for p in service["spec"]["ports"]]
    pod = objects[("Deployment", "subscriber")]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    # The generated ConfigMap (name with a content hash) is the one mounted.
    mounted = pod["spec"]["volumes"][0]["configMap"]["name"]
    config = next(o for (kind, _), o in objects.items() if kind == "ConfigMap")
    assert mounted == config["metadata"]["name"] and mounted.startswith("subscriber-")
    source = (REPO / "examples" / "quickstart" / "subscriber.py").read_text()
    assert config["data"]["subscriber.py"] == source


@pytest.fixture
def namespace(kubectl: Any) -> Iterator[str]:
    name = f"gitops-{uuid.uuid4().hex[:6]}"
    assert kubectl("create", "namespace", name).returncode == 0
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


def test_the_api_server_accepts_everything_the_kustomization_builds(
    kubectl: Any, namespace: str
) -> None:
    done = kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    assert done.returncode == 0, done.stderr
    # Into a fresh namespace instead of shop, which other tests may be deleting.
    objects = [o for o in build(kubectl) if o["kind"] != "Namespace"]
    for o in objects:
        assert o["metadata"]["namespace"] == "shop"
        o["metadata"]["namespace"] = namespace
    done = kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(objects))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("(server dry run)") == len(objects)
