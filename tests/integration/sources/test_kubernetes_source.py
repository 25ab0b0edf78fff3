"""The Kubernetes source against a real kube-apiserver and a real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from source_helpers import compiled, eventually, running, stream_events, wait_for_events

from tidings.api import keys
from tidings.api.routes import CompiledSource
from tidings.api.types import KubernetesSource
from tidings.sources import status
from tidings.sources.kubeapi import KubeApi
from tidings.sources.kubernetes import KubernetesAdapter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture
def source(source_name: tuple[str, str], k8s_namespace: str) -> CompiledSource:
    return compiled(k8s_namespace, source_name[1], "kubernetes")


def config_maps(selector: dict[str, str] | None = None) -> KubernetesSource:
    resource: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap"}
    if selector:
        resource["labelSelector"] = {"matchLabels": selector}
    return KubernetesSource.model_validate({"resources": [resource]})


def adapter_for(
    source: CompiledSource, spec: KubernetesSource, redis: aioredis.Redis, kubeconfig: Path
) -> KubernetesAdapter:
    return KubernetesAdapter(
        source, spec, redis, api=KubeApi.from_config(str(kubeconfig)), backoff_max=0.5
    )


def apply_config_map(
    kubectl: Any,
    namespace: str,
    name: str,
    data: dict[str, str],
    labels: dict[str, str] | None = None,
) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": "shop"}},
        "data": data,
    }
    done = kubectl("apply", "-f", "-", input=json.dumps(manifest))
    assert done.returncode == 0, done.stderr


async def test_changes_to_watched_objects_become_events(
    redis_client: aioredis.Redis, source: CompiledSource, kubeconfig: Path, kubectl: Any
) -> None:
    namespace = source.namespace
    apply_config_map(kubectl, namespace, "existing", {"k": "0"})
    adapter = adapter_for(source, config_maps({"app": "shop"}), redis_client, kubeconfig)
    async with running(adapter, redis_client, source):
        apply_config_map(kubectl, namespace, "other-app", {"k": "1"}, labels={"app": "blog"})
        apply_config_map(kubectl, namespace, "prices", {"tea": "3"})
        apply_config_map(kubectl, namespace, "prices", {"tea": "4"})
        assert kubectl("delete", "configmap", "prices", "-n", namespace).returncode == 0
        events = await wait_for_events(redis_client, source, 3)
        await asyncio.sleep(0.3)
        events = await stream_events(redis_client, source)
    assert [e.type for e in events] == [
        "dev.tidings.kubernetes.added",
        "dev.tidings.kubernetes.modified",
        "dev.tidings.kubernetes.deleted",
    ]
    assert {e.subject for e in events} == {f"ConfigMap/{namespace}/prices"}
    added, modified, _ = events
    assert added.data["data"] == {"tea": "3"} and modified.data["data"] == {"tea": "4"}
    assert added.data["kind"] == "ConfigMap" and added.data["apiVersion"] == "v1"
    assert "managedFields" not in added.data["metadata"]
    assert len({e.id for e in events}) == 3


async def test_a_restart_resumes_without_re_emitting_what_was_sent(
    redis_client: aioredis.Redis, source: CompiledSource, kubeconfig: Path, kubectl: Any
) -> None:
    namespace = source.namespace
    spec = config_maps()
    first = adapter_for(source, spec, redis_client, kubeconfig)
    async with running(first, redis_client, source):
        apply_config_map(kubectl, namespace, "a", {"v": "1"})
        await wait_for_events(redis_client, source, 1)
    # While no adapter runs:
    apply_config_map(kubectl, namespace, "a", {"v": "2"})
    apply_config_map(kubectl, namespace, "b", {"v": "1"})
    second = adapter_for(source, spec, redis_client, kubeconfig)
    async with running(second, redis_client, source):
        await wait_for_events(redis_client, source, 3)
        await asyncio.sleep(0.5)
        events = await stream_events(redis_client, source)
    assert [(e.type.rsplit(".", 1)[1], e.subject.rsplit("/", 1)[1]) for e in events] == [
        ("added", "a"),
        ("modified", "a"),
        ("added", "b"),
    ]


async def _until_server_expires(kubectl: Any, namespace: str, version: str) -> None:
    """Wait until a watch from `version` is answered 410 Gone. A young control
    plane may still serve it (nothing compacted yet, watch cache not trimmed)."""
    path = f"/api/v1/namespaces/{namespace}/configmaps?watch=1&resourceVersion={version}"
    deadline = time.monotonic() + 80  # hack/control-plane.sh compacts every 30 s
    while True:
        answer = kubectl("get", "--raw", f"{path}&timeoutSeconds=1")
        if '"code":410' in answer.stdout or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    assert '"code":410' in answer.stdout, (
        f"the API server never expired {version}: {answer.stdout[:300]}"
    )


@pytest.mark.timeout(180)
async def test_after_410_gone_a_relist_emits_only_real_changes(
    redis_client: aioredis.Redis,
    source: CompiledSource,
    kubeconfig: Path,
    kubectl: Any,
) -> None:
    # A handler on the adapter's own logger: root handlers may be reconfigured
    # by other in-process code during a full run, this one is not.
    adapter_log = logging.getLogger("tidings.sources.kubernetes")
    records: list[logging.LogRecord] = []
    collector = logging.Handler(logging.INFO)
    collector.emit = records.append  # type: ignore[method-assign]
    adapter_log.addHandler(collector)
    adapter_log.setLevel(logging.INFO)
    namespace = source.namespace
    spec = config_maps()
    first = adapter_for(source, spec, redis_client, kubeconfig)
    async with running(first, redis_client, source):
        for name in ("same", "changed", "removed"):
            apply_config_map(kubectl, namespace, name, {"v": "1"})
        await wait_for_events(redis_client, source, 3)
    apply_config_map(kubectl, namespace, "changed", {"v": "2"})
    assert kubectl("delete", "configmap", "removed", "-n", namespace).returncode == 0
    apply_config_map(kubectl, namespace, "new", {"v": "1"})
    # A resume point far older than the server's watch cache: it answers 410 Gone.
    (field,) = [
        f
        for f in await redis_client.hkeys(keys.adapter_state(namespace, source.name))
        if f.startswith(b"rv:")
    ]
    await redis_client.hset(keys.adapter_state(namespace, source.name), field, "2")
    await _until_server_expires(kubectl, namespace, "2")
    second = adapter_for(source, spec, redis_client, kubeconfig)
    async with running(second, redis_client, source):
        await wait_for_events(redis_client, source, 6)
        await asyncio.sleep(0.5)
        events = (await stream_events(redis_client, source))[3:]
    adapter_log.removeHandler(collector)
    logged = [r.getMessage() for r in records]
    assert any("expired; listing again" in m for m in logged), logged  # the 410 path ran
    changes = sorted((e.type.rsplit(".", 1)[1], e.subject.rsplit("/", 1)[1]) for e in events)
    assert changes == [("added", "new"), ("deleted", "removed"), ("modified", "changed")]
    deleted = next(e for e in events if e.type.endswith("deleted"))
    assert deleted.data["metadata"]["name"] == "removed" and deleted.data["metadata"]["uid"]
    remembered = await redis_client.hlen(keys.adapter_objects(namespace, source.name))
    assert remembered == 3  # same, changed, new: the bookkeeping stays bounded


async def test_an_unknown_kind_is_reported(
    redis_client: aioredis.Redis, source: CompiledSource, kubeconfig: Path
) -> None:
    spec = KubernetesSource.model_validate({"resources": [{"apiVersion": "v1", "kind": "Unicorn"}]})
    adapter = adapter_for(source, spec, redis_client, kubeconfig)
    task = asyncio.create_task(adapter.run())
    try:

        async def reported() -> Any:
            current = await status.read(redis_client, source.namespace, source.name)
            return current if current and current.reason == "ResourceNotFound" else None

        current = await eventually(reported)
        assert "Unicorn" in current.message and "spec.kubernetes.resources" in current.message
    finally:
        await adapter.stop()
        await asyncio.wait_for(task, 10)
