"""Stopping: SIGTERM ends the operator well inside a pod's 30 s grace period, also
when Redis has gone away under it (issue 17: it once needed SIGKILL after 60 s)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from operator_harness import Cluster, OperatorProcess, eventually
from test_operator_restart import all_ready, world

from tidings.cli.redis_server import RedisServer

pytestmark = pytest.mark.integration

TRIGGERS = int(os.environ.get("TIDINGS_STOP_TRIGGERS", "30"))


async def test_sigterm_with_redis_unreachable_exits_within_10s(
    cluster: Cluster, kubeconfig: Path, seal_key: str, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    operator = OperatorProcess(
        namespaces=[cluster.namespace],
        redis_url=server.url,
        kubeconfig=kubeconfig,
        seal_key=seal_key,
        log_path=tmp_path / "operator.log",
    )
    try:
        operator.start()
        cluster.apply(*world(TRIGGERS))
        await eventually(lambda: all_ready(cluster, "triggers", TRIGGERS), within=60 + TRIGGERS / 5)
        server.stop()  # Redis gone: every controller's next call fails or hangs
        await asyncio.sleep(3)
        assert operator.alive()
        started = time.monotonic()
        code = operator.stop(timeout=30)
        took = time.monotonic() - started
        assert code == 0, f"exit code {code} after {took:.1f}s"
        assert took < 10, f"SIGTERM took {took:.1f}s"
    finally:
        operator.stop(timeout=5)
        print("----- operator log (tail) -----")
        print("\n".join(operator.logs().splitlines()[-80:]))
