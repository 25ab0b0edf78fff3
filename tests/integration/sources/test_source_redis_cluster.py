"""`tidings source --redis-cluster` on a real 3-master Redis Cluster
(hack/redis-cluster.sh): the journal's script touches the source's keys only
(stream, state, objects, index share its hash tag), so it runs on its master."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml
from redis.asyncio import RedisCluster
from source_helpers import compiled, eventually, start_adapter, stream_events

from tidings.api import keys
from tidings.api.events import CloudEvent
from tidings.sources import journal, status
from tidings.sources.schedule import CHECKED, SINCE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_a_schedule_adapter_journals_its_ticks_into_a_redis_cluster(
    tmp_path: Path, redis_cluster_url: str
) -> None:
    manifest = tmp_path / "source.yaml"
    spec = {"schedule": {"cron": "* * * * *", "maxCatchUp": 3}}
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "tidings.dev/v1alpha1",
                "kind": "EventSource",
                "metadata": {"name": "ticks", "namespace": "demo"},
                "spec": spec,
            }
        )
    )
    source = compiled("demo", "ticks", "schedule")
    redis = RedisCluster.from_url(redis_cluster_url)
    # Its slot lives on another master than the URL's: a plain client would get MOVED.
    await redis.initialize()
    node = redis.get_node_from_key(source.stream)
    assert f"{node.host}:{node.port}" not in redis_cluster_url
    await redis.delete(source.stream, keys.adapter_state("demo", "ticks"))
    # Counting since ten minutes ago: it fires the 3 newest missed ticks at once.
    since = time.time() - 600
    await journal.set_state(redis, source, {SINCE: repr(since)})  # type: ignore[arg-type]
    process = start_adapter(
        "schedule", "demo/ticks", redis_cluster_url, "--redis-cluster", "-f", manifest
    )
    try:

        async def ticks() -> list[CloudEvent] | None:
            assert process.poll() is None, "the adapter exited"
            events = await stream_events(redis, source)  # type: ignore[arg-type]
            return events if len(events) >= 3 else None

        events = await eventually(ticks, within=30)
        assert {e.type for e in events} == {"dev.tidings.schedule.tick"}
        # The journal moved on with the events, in the same script: the guard is
        # the newest tick's position, so a restart does not write them again.
        state = await journal.read_state(redis, source)  # type: ignore[arg-type]
        assert float(state[CHECKED]) > since
        newest = max(int(e.id.removeprefix("tick-")) for e in events)
        assert state[journal.GUARD] == journal.position(newest)
        report = await eventually(
            lambda: status.read(redis, "demo", "ticks"),  # type: ignore[arg-type]
        )
        assert report.state == "Running", json.dumps(report.__dict__, default=str)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        await redis.aclose()
