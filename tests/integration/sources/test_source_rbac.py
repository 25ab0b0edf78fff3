"""The adapter with exactly the RBAC that tidings.sources.rbac documents,
on a real kube-apiserver with RBAC on; and without Lease rights."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from objectstore_helpers import new_bucket_name, put_many, s3_from_env
from source_helpers import compiled, eventually, start_adapter, wait_for_events

from tidings.api.types import EventSourceSpec
from tidings.sources import rbac, status
from tidings.sources.lease import lease_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NAME = "config-watch"
SPEC = EventSourceSpec.model_validate(
    {"kubernetes": {"resources": [{"apiVersion": "v1", "kind": "ConfigMap"}]}}
)


def service_account_kubeconfig(
    kubectl: Any, kubeconfig: Path, namespace: str, rules: list[dict[str, Any]], path: Path
) -> Path:
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "adapter", "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "adapter", "namespace": namespace},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "adapter", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "adapter"},
            "subjects": [{"kind": "ServiceAccount", "name": "adapter", "namespace": namespace}],
        },
    ]
    applied = kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objects))
    assert applied.returncode == 0, applied.stderr
    token = kubectl("create", "token", "adapter", "-n", namespace, "--duration=1h")
    assert token.returncode == 0, token.stderr
    config = yaml.safe_load(kubeconfig.read_text())
    config["users"] = [{"name": "adapter", "user": {"token": token.stdout.strip()}}]
    config["contexts"] = [
        {
            "name": "adapter",
            "context": {"cluster": config["clusters"][0]["name"], "user": "adapter"},
        }
    ]
    config["current-context"] = "adapter"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def eventsource(tidings_crds: None, kubectl: Any, k8s_namespace: str) -> Iterator[str]:
    body = {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": NAME, "namespace": k8s_namespace},
        "spec": SPEC.to_wire(),
    }
    applied = kubectl("apply", "-f", "-", input=json.dumps(body))
    assert applied.returncode == 0, applied.stderr
    yield k8s_namespace


async def run_and_see_a_change(
    kubectl: Any, namespace: str, kubeconfig: Path, redis_client: aioredis.Redis, redis_url: str
) -> None:
    source = compiled(namespace, NAME, "kubernetes")
    process = start_adapter(
        "kubernetes",
        f"{namespace}/{NAME}",
        redis_url,
        "--kubeconfig",
        kubeconfig,
        without=("TIDINGS_EVENTSOURCE_SPEC",),
    )
    try:

        async def watching() -> bool:
            current = await status.read(redis_client, namespace, NAME)
            return current is not None and current.state == "Running"

        await eventually(watching, within=60)
        created = kubectl("create", "configmap", "hello", "-n", namespace, "--from-literal=a=b")
        assert created.returncode == 0, created.stderr
        (event,) = await wait_for_events(redis_client, source, 1, within=60)
        assert event.subject == f"ConfigMap/{namespace}/hello"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


async def test_the_documented_rules_are_enough_in_api_mode(
    eventsource: str,
    kubectl: Any,
    kubeconfig: Path,
    tmp_path: Path,
    redis_client: aioredis.Redis,
    redis_url: str,
) -> None:
    namespace = eventsource
    rules = rbac.rules_for(
        SPEC, name=NAME, spec_from_env=False, plurals={("v1", "ConfigMap"): "configmaps"}
    )
    token_config = service_account_kubeconfig(
        kubectl, kubeconfig, namespace, rules, tmp_path / "adapter.kubeconfig"
    )
    await run_and_see_a_change(kubectl, namespace, token_config, redis_client, redis_url)
    # The adapter's ServiceAccount created the Lease (and handed it back on SIGTERM).
    lease = kubectl("get", "lease", lease_name(NAME), "-n", namespace, "-o", "json")
    assert lease.returncode == 0, lease.stderr
    assert json.loads(lease.stdout)["spec"].get("holderIdentity") is None


async def test_without_lease_rights_the_adapter_still_runs(
    eventsource: str,
    kubectl: Any,
    kubeconfig: Path,
    tmp_path: Path,
    redis_client: aioredis.Redis,
    redis_url: str,
) -> None:
    namespace = eventsource
    rules = [
        rule
        for rule in rbac.rules_for(
            SPEC, name=NAME, spec_from_env=False, plurals={("v1", "ConfigMap"): "configmaps"}
        )
        if rule != rbac.LEASE_RULE
    ]
    token_config = service_account_kubeconfig(
        kubectl, kubeconfig, namespace, rules, tmp_path / "adapter.kubeconfig"
    )
    await run_and_see_a_change(kubectl, namespace, token_config, redis_client, redis_url)


async def test_an_objectstore_adapter_reading_its_keys_from_the_api_needs_only_its_secret(
    tidings_crds: None,
    kubectl: Any,
    k8s_namespace: str,
    kubeconfig: Path,
    tmp_path: Path,
    redis_client: aioredis.Redis,
    redis_url: str,
) -> None:
    s3 = s3_from_env()
    bucket = new_bucket_name()
    s3.client().make_bucket(bucket)
    namespace, name = k8s_namespace, "uploads"
    spec = EventSourceSpec.model_validate(
        {"objectStore": s3.spec(bucket, pollInterval="1s").to_wire()}
    )
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-creds", "namespace": namespace},
            "stringData": {
                "accessKeyId": s3.access_key_id,
                "secretAccessKey": s3.secret_access_key,
            },
        },
        {
            "apiVersion": "tidings.dev/v1alpha1",
            "kind": "EventSource",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec.to_wire(),
        },
    ]
    applied = kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objects))
    assert applied.returncode == 0, applied.stderr
    rules = rbac.rules_for(spec, name=name, spec_from_env=False, s3_credentials_from_env=False)
    token_config = service_account_kubeconfig(
        kubectl, kubeconfig, namespace, rules, tmp_path / "adapter.kubeconfig"
    )
    process = start_adapter(
        "objectStore",
        f"{namespace}/{name}",
        redis_url,
        "--kubeconfig",
        token_config,
        without=(
            "TIDINGS_EVENTSOURCE_SPEC",
            "TIDINGS_S3_ACCESS_KEY_ID",
            "TIDINGS_S3_SECRET_ACCESS_KEY",
        ),
    )
    try:

        async def polling() -> bool:
            current = await status.read(redis_client, namespace, name)
            return current is not None and current.state == "Running"

        await eventually(polling, within=60)
        put_many(s3.client(), bucket, {"hello.txt": b"hi"})
        (event,) = await wait_for_events(
            redis_client, compiled(namespace, name, "objectStore"), 1, within=60
        )
        assert event.subject == "hello.txt"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
