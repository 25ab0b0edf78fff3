"""The operator under test: the real `tidings operator` subprocess against the
real kube-apiserver (hack/control-plane.sh) and a private real redis-server.
Each test gets its own namespace, and its operator watches only that one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import REPO, Cluster, OperatorProcess
from redis.asyncio import Redis

from tidings.api.sealing import new_key
from tidings.cli.redis_server import RedisServer


@pytest.fixture(scope="session")
def operator_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for these tests; each test uses its own namespace."""
    server = RedisServer(tmp_path_factory.mktemp("operator-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def crds(kubectl: Any) -> None:
    """Tidings' CRDs and the KopfPeering CRDs, applied and established."""
    peering = subprocess.run(
        [sys.executable, "-m", "tidings.cli", "operator", "--print-peering-crds"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    for args, stdin in (
        (("apply", "-f", str(REPO / "crds")), None),
        (("apply", "-f", "-"), peering),
    ):
        done = kubectl(*args, input=stdin)
        assert done.returncode == 0, done.stderr
    waited = kubectl(
        "wait",
        "--for=condition=Established",
        "crd/triggers.tidings.dev",
        "crd/replays.tidings.dev",
        "crd/eventsources.tidings.dev",
        "crd/triggergrants.tidings.dev",
        "crd/kopfpeerings.kopf.dev",
        "crd/clusterkopfpeerings.kopf.dev",
    )
    assert waited.returncode == 0, waited.stderr


@pytest.fixture
async def redis(operator_redis: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(operator_redis.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def cluster(kubectl: Any, k8s_namespace: str, crds: None) -> Cluster:
    return Cluster(kubectl, k8s_namespace)


@pytest.fixture
def seal_key() -> str:
    return new_key()


@pytest.fixture
def operator_process(
    cluster: Cluster,
    operator_redis: RedisServer,
    kubeconfig: Path,
    seal_key: str,
    tmp_path: Path,
) -> Iterator[OperatorProcess]:
    """The operator for this test's namespace, not started yet."""
    process = OperatorProcess(
        namespaces=[cluster.namespace],
        redis_url=operator_redis.url,
        kubeconfig=kubeconfig,
        seal_key=seal_key,
        log_path=tmp_path / "operator.log",
    )
    yield process
    process.stop()
    # Shown by pytest only when the test failed.
    print("----- operator log (tail) -----")
    print("\n".join(process.logs().splitlines()[-150:]))


@pytest.fixture
def operator(operator_process: OperatorProcess) -> OperatorProcess:
    return operator_process.start()
