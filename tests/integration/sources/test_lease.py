"""One active adapter per EventSource: the Lease, on a real kube-apiserver."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from source_helpers import compiled, eventually, start_adapter, stream_events, wait_for_events

from tidings.sources.kubeapi import KubeApi
from tidings.sources.lease import LeaseElector, lease_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest_asyncio.fixture
async def api(kubeconfig: Path) -> AsyncIterator[KubeApi]:
    client = KubeApi.from_config(str(kubeconfig))
    yield client
    await client.close()


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(
    api: KubeApi, namespace: str, identity: str, clock: Ticks | None = None
) -> LeaseElector:
    options: dict[str, Any] = {"duration": 10.0, "renew_every": 0.2, "retry_every": 0.1}
    if clock is not None:
        options["clock"] = clock
    return LeaseElector(api, namespace, lease_name("users-db"), identity, **options)


async def holder(api: KubeApi, namespace: str) -> str | None:
    lease = await api.get(
        f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{lease_name('users-db')}"
    )
    return lease["spec"].get("holderIdentity")


async def test_a_second_replica_waits_until_the_holder_lets_go(
    api: KubeApi, k8s_namespace: str
) -> None:
    first, second = elector(api, k8s_namespace, "a"), elector(api, k8s_namespace, "b")
    assert await first.try_acquire()
    assert not await second.try_acquire()
    assert await first.try_acquire()  # renewing
    assert await holder(api, k8s_namespace) == "a"
    waiting = asyncio.create_task(second.acquire())
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await first.release()
    await asyncio.wait_for(waiting, 5)
    assert await holder(api, k8s_namespace) == "b"


async def test_a_holder_that_stops_renewing_is_replaced_after_the_lease_duration(
    api: KubeApi, k8s_namespace: str
) -> None:
    clock = Ticks()
    first, second = elector(api, k8s_namespace, "a"), elector(api, k8s_namespace, "b", clock)
    assert await first.try_acquire()
    assert not await second.try_acquire()  # b starts timing the record it sees
    clock.now += 9.9
    assert not await second.try_acquire()
    clock.now += 0.2  # 10.1 s without a renewal, by b's own clock
    assert await second.try_acquire()
    assert await holder(api, k8s_namespace) == "b"
    lease = await api.get(
        f"/apis/coordination.k8s.io/v1/namespaces/{k8s_namespace}/leases/{lease_name('users-db')}"
    )
    assert lease["spec"]["leaseTransitions"] == 1


async def test_a_holder_notices_it_lost_the_lease(api: KubeApi, k8s_namespace: str) -> None:
    clock = Ticks()
    first, second = elector(api, k8s_namespace, "a"), elector(api, k8s_namespace, "b", clock)
    assert await first.try_acquire()
    assert not await second.try_acquire()
    clock.now += 11
    assert await second.try_acquire()
    # a's next renewal sees b's record within its own lease time: a stops.
    await asyncio.wait_for(first.hold(), 5)


def start_source(
    namespace: str, name: str, kubeconfig: Path, redis_url: str
) -> subprocess.Popen[bytes]:
    return start_adapter(
        "kubernetes",
        f"{namespace}/{name}",
        redis_url,
        "--kubeconfig",
        kubeconfig,
        "--lease-seconds",
        "2",
    )


async def test_two_adapter_processes_emit_each_change_once_and_fail_over(
    tidings_crds: None,
    kubectl: Any,
    k8s_namespace: str,
    kubeconfig: Path,
    redis_client: aioredis.Redis,
    redis_url: str,
    api: KubeApi,
) -> None:
    name = "watch-config"
    eventsource = {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": name, "namespace": k8s_namespace},
        "spec": {"kubernetes": {"resources": [{"apiVersion": "v1", "kind": "ConfigMap"}]}},
    }
    assert kubectl("apply", "-f", "-", input=json.dumps(eventsource)).returncode == 0
    source = compiled(k8s_namespace, name, "kubernetes")
    processes = [start_source(k8s_namespace, name, kubeconfig, redis_url) for _ in range(2)]
    try:
        lease_path = (
            f"/apis/coordination.k8s.io/v1/namespaces/{k8s_namespace}/leases/{lease_name(name)}"
        )

        async def held_by() -> str | None:
            try:
                return (await api.get(lease_path))["spec"].get("holderIdentity")
            except Exception:
                return None

        first_holder = await eventually(held_by)
        await asyncio.sleep(1.0)  # the watch is set up (baseline listed)

        def config_map(cm: str) -> None:
            done = kubectl("create", "configmap", cm, "-n", k8s_namespace, "--from-literal=a=b")
            assert done.returncode == 0, done.stderr

        config_map("one")
        await wait_for_events(redis_client, source, 1)
        # Kill the holder without a chance to hand over; the standby takes over.
        pid = int(first_holder.rsplit("_", 1)[1])
        os.kill(pid, signal.SIGKILL)

        async def taken_over() -> str | None:
            current = await held_by()
            return current if current and current != first_holder else None

        await eventually(taken_over, within=20)
        await asyncio.sleep(1.0)
        config_map("two")
        await wait_for_events(redis_client, source, 2)
        await asyncio.sleep(1.0)
        events = await stream_events(redis_client, source)
        assert [e.subject for e in events] == [
            f"ConfigMap/{k8s_namespace}/one",
            f"ConfigMap/{k8s_namespace}/two",
        ]
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
