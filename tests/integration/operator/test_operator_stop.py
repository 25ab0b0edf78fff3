"""Stopping: SIGTERM ends the operator well inside a pod's 30 s grace period, also
when Redis has gone away under it or was never reachable (issue 17: with 10,000
objects it once needed SIGKILL after 60 s)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from operator_harness import Cluster, OperatorProcess, eventually
from test_operator_restart import all_ready, world

from tidings.cli.redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration

# A few hundred objects in CI; TIDINGS_STOP_TRIGGERS=2000 for a bigger run.
TRIGGERS = int(os.environ.get("TIDINGS_STOP_TRIGGERS", "200"))
# The target is 10 s with 10,000 objects; here the machine is shared and loaded,
# so the bound is that target (runs at load average 12 took 0.2-0.3 s).
BOUND = 10.0


def operator_for(
    cluster: Cluster, kubeconfig: Path, seal_key: str, tmp_path: Path, redis_url: str
) -> OperatorProcess:
    return OperatorProcess(
        namespaces=[cluster.namespace],
        redis_url=redis_url,
        kubeconfig=kubeconfig,
        seal_key=seal_key,
        log_path=tmp_path / "operator.log",
    )


def sigterm(operator: OperatorProcess) -> None:
    assert operator.alive()
    started = time.monotonic()
    code = operator.stop(timeout=60)  # SIGKILL only after 60 s
    took = time.monotonic() - started
    print(f"SIGTERM to exit: {took:.1f}s, exit code {code}")
    assert code == 0, f"exit code {code} after {took:.1f}s"
    assert took < BOUND, f"SIGTERM took {took:.1f}s"


def show_stop(operator: OperatorProcess) -> None:
    """The log from the signal on (where the seconds went), else its tail."""
    lines = operator.logs().splitlines()
    signal = [n for n, line in enumerate(lines) if "SIGTERM" in line and "received" in line]
    print("----- operator log (from the signal, or the tail) -----")
    print("\n".join(lines[signal[-1] :] if signal else lines[-40:]))


def all_retrying(operator: OperatorProcess, count: int) -> bool:
    """Every Trigger's controller is on the queue, and has met the dead Redis."""
    retrying = {
        line.split("[Trigger/", 1)[1].split("]", 1)[0]
        for line in operator.logs().splitlines()
        if "[Trigger/" in line and "will retry" in line
    }
    return len(retrying) == count


async def test_sigterm_with_redis_stopped_under_it_exits_within_10s(
    cluster: Cluster, kubeconfig: Path, seal_key: str, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    operator = operator_for(cluster, kubeconfig, seal_key, tmp_path, server.url)
    try:
        operator.start()
        cluster.apply(*world(TRIGGERS))
        await eventually(lambda: all_ready(cluster, "triggers", TRIGGERS), within=60 + TRIGGERS / 5)
        server.stop()  # Redis gone: every controller's next call fails
        await asyncio.sleep(3)
        sigterm(operator)
    finally:
        operator.stop(timeout=5)
        server.stop()
        show_stop(operator)


async def test_sigterm_with_redis_never_reachable_exits_within_10s(
    cluster: Cluster, kubeconfig: Path, seal_key: str, tmp_path: Path
) -> None:
    # Nothing listens on the port: every connection attempt is refused, and every
    # controller is retrying with its backoff when the signal comes.
    operator = operator_for(
        cluster, kubeconfig, seal_key, tmp_path, f"redis://127.0.0.1:{free_port()}/0"
    )
    try:
        operator.start()
        cluster.apply(*world(TRIGGERS))
        await eventually(lambda: all_retrying(operator, TRIGGERS), within=60 + TRIGGERS / 5)
        await asyncio.sleep(3)
        sigterm(operator)
    finally:
        operator.stop(timeout=5)
        show_stop(operator)
