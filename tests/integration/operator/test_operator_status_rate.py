"""Status writes keep to --status-write-qps after --status-write-burst (issue 17: a
mass apply's status writes crowded the API server still serving the apply),
and waiting for a turn holds back only the status: routes are published at once."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest
from operator_harness import Cluster, OperatorProcess, eventually, routing_table
from redis.asyncio import Redis
from test_operator_restart import all_ready, world

from tidings.api.sealing import new_key

pytestmark = pytest.mark.integration

TRIGGERS = 4
QPS = 0.5  # a status write every 2 s after the first


def with_status(cluster: Cluster) -> int:
    return sum(1 for o in cluster.list("triggers") if (o.get("status") or {}).get("conditions"))


async def test_status_writes_wait_their_turn_while_routes_go_out_at_once(
    cluster: Cluster, redis: Redis, operator_process: OperatorProcess
) -> None:
    operator = operator_process
    operator.command += ["--status-write-qps", str(QPS), "--status-write-burst", "1"]
    operator.start()
    cluster.apply(*world(TRIGGERS))
    names = {f"{cluster.namespace}/t{i}" for i in range(TRIGGERS)}

    async def all_routed() -> bool:
        return names <= set((await routing_table(redis)).routes)

    await eventually(all_routed, within=60)
    # Two EventSources and four Triggers: six writes at least, 2 s apart after
    # the first. All routes are out long before the last of them.
    assert not all_ready(cluster, "triggers", TRIGGERS), "no status write waited"
    await eventually(lambda: with_status(cluster) > 0, within=60)
    first = time.monotonic()
    await eventually(lambda: all_ready(cluster, "triggers", TRIGGERS), within=120)
    took = time.monotonic() - first
    print(f"all Ready {took:.1f}s after the first Trigger's status")
    # At least the last three Triggers' writes came after the first one's.
    assert took >= 3 / QPS - 1, f"{took:.1f}s from the first status: not spaced"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--status-write-qps", "-1", "--status-write-qps=-1.0: use 0 (no limit) or a rate"),
        ("--status-write-burst", "0", "--status-write-burst=0: use 1 or more"),
    ],
)
def test_a_bad_limit_stops_the_operator_naming_the_flag(
    flag: str, value: str, message: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIDINGS_", "REDIS_"))}
    done = subprocess.run(
        [sys.executable, "-m", "tidings.cli", "operator", "--standalone", flag, value],
        # Nothing listens there: the operator must stop before it connects anywhere.
        env={**env, "TIDINGS_SEAL_KEY": new_key(), "REDIS_URL": "redis://127.0.0.1:9/0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


MASS = 150


async def test_a_mass_apply_holds_status_writes_back_until_it_ends(
    cluster: Cluster, operator_process: OperatorProcess
) -> None:
    operator = operator_process
    operator.command += ["--bulk-status-write-qps", "0.2", "--status-write-burst", "5"]
    operator.start()
    cluster.apply(*world(2))  # sources, Service, Secret: the operator is up and idle
    await eventually(lambda: all_ready(cluster, "triggers", 2), within=60)
    started = time.monotonic()
    cluster.apply(*world(MASS))  # 148 new Triggers, faster than 20 a second
    written = with_status(cluster)
    took = time.monotonic() - started
    print(f"when the apply returned after {took:.1f}s: {written} with status")
    # Before the operator saw 20 new Triggers within a second, up to 19 went
    # out at once; then the rest of the burst of 5, and one every 5 s.
    bound = 2 + 19 + 5 + math.ceil(took * 0.2)
    assert written <= bound, f"{written} of {MASS} had status when the apply returned"
    returned = time.monotonic()
    await eventually(lambda: all_ready(cluster, "triggers", MASS), within=60)
    print(f"all Ready {time.monotonic() - returned:.1f}s after the apply returned")
    logs = operator.logs()
    assert "a mass apply: status writes keep to 0.2 a second" in logs
    assert "the mass apply is over" in logs
