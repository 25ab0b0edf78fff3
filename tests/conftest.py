"""Fixtures that connect tests to the real Redis, PostgreSQL and kube-apiserver
started by hack/test-env.sh (hack/test.sh starts them for you). Nothing here
mocks a component: when one is missing, the test fails and says how to start it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from jaeger_client import Jaeger
from secure_redis import TlsRedis

_HOW_TO_START = "start it with `hack/test-env.sh up` and export its env, or run hack/test.sh"


def _env(name: str, component: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{component} is not running: {_HOW_TO_START} ({name} is not set)", pytrace=False
        )
    return value


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _env("REDIS_URL", "Redis")


@pytest_asyncio.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on an empty database. Flushed before the test, not after, so a
    failed test leaves its keys to look at; tests therefore must not run in
    parallel against the same Redis."""
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real 3-master Redis Cluster on loopback (hack/redis-cluster.sh), for this
    session: any node's URL, as `--redis-cluster` processes are given it."""
    script = Path(__file__).resolve().parents[1] / "hack" / "redis-cluster.sh"
    env = {**os.environ, "TIDINGS_STATE_DIR": str(tmp_path_factory.mktemp("redis-cluster"))}
    up = subprocess.run(
        ["bash", str(script), "up"], env=env, capture_output=True, text=True, timeout=60
    )
    assert up.returncode == 0, up.stderr
    yield up.stdout.strip().split("=", 1)[1]
    subprocess.run(["bash", str(script), "down"], env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def tls_redis() -> TlsRedis:
    def env(name: str) -> str:
        value = os.environ.get(name)
        if not value:
            pytest.fail(
                f"the TLS+ACL Redis is not running: `hack/redis-tls.sh up` (hack/test-env.sh "
                f"starts it) and export its env ({name} is not set)",
                pytrace=False,
            )
        return value

    return TlsRedis(
        url=env("TLS_REDIS_URL"),
        username=env("TLS_REDIS_USERNAME"),
        password=env("TLS_REDIS_PASSWORD"),
        ca_file=env("TLS_REDIS_CA_FILE"),
        client_cert_file=env("TLS_REDIS_CLIENT_CERT_FILE"),
        client_key_file=env("TLS_REDIS_CLIENT_KEY_FILE"),
    )


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    return _env("TIDINGS_PG_DSN", "PostgreSQL")


@pytest.fixture(scope="session")
def kubeconfig() -> Path:
    path = Path(_env("KUBECONFIG", "kube-apiserver"))
    if not path.is_file():
        pytest.fail(
            f"kube-apiserver is not running: {_HOW_TO_START} (no file {path})", pytrace=False
        )
    return path


def _find_kubectl() -> str:
    """KUBECTL (hack/control-plane.sh env sets it to the build matching the
    server), else kubectl on PATH or in this venv, else the cached build."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tidings"
    cache = Path(os.environ.get("TIDINGS_CACHE_DIR", cache))
    candidates = [
        os.environ.get("KUBECTL"),
        shutil.which("kubectl"),
        str(Path(sys.executable).parent / "kubectl"),
        *(str(p) for p in sorted(cache.glob("k8s-v*/bin/kubectl"), reverse=True)),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("kubectl not found: set KUBECTL, or run hack/build-k8s-tools.sh")


@dataclass(frozen=True)
class Kubectl:
    """Runs the real kubectl against the test cluster; returns the finished
    process (check its returncode: tests often expect a refusal)."""

    binary: str
    kubeconfig: Path

    def __call__(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    return Kubectl(_find_kubectl(), kubeconfig)


@pytest.fixture
def k8s_namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, deleted afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:6]}"
    created = kubectl("create", "namespace", name)
    assert created.returncode == 0, created.stderr
    yield name
    # No kube-controller-manager runs here, so nothing finalizes the deletion:
    # the namespace stays Terminating, which refuses new objects in it.
    kubectl("delete", "namespace", name, "--wait=false")


_INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration/ needs the real components: mark it, so
    `pytest -m "not integration"` runs the unit tests alone."""
    for item in items:
        if _INTEGRATION in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Test files share one import namespace (no __init__.py): two with the same
    basename make pytest refuse the whole suite. Say which, up front."""
    seen: dict[str, Path] = {}
    for path in sorted(Path(__file__).parent.rglob("test_*.py")):
        other = seen.setdefault(path.name, path)
        if other != path:
            raise pytest.UsageError(f"two test files named {path.name}: {other} and {path}")


@pytest.fixture(scope="session")
def jaeger() -> Jaeger:
    return Jaeger(
        _env("JAEGER_OTLP_HTTP", "Jaeger"),
        _env("JAEGER_QUERY", "Jaeger"),
        _env("JAEGER_OTLP_GRPC", "Jaeger"),
    )
