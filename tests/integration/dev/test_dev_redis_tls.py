"""`tidings dev -f examples/quickstart` with REDIS_URL pointing at a Redis that
speaks only TLS to its ACL user (hack/redis-tls.sh): it publishes there, takes
an event from `tidings send` and stores it there."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_dev_quickstart import send, start_dev

from secure_redis import TlsRedis
from tidings.api import keys
from tidings.api.process import connect_redis

pytestmark = pytest.mark.integration


async def test_dev_runs_on_a_tls_and_acl_redis(tmp_path: Path, tls_redis: TlsRedis) -> None:
    redis = connect_redis(tls_redis.connection())
    stream = keys.stream("shop", "orders")
    await redis.delete(stream)
    dev, _ = start_dev(tmp_path, env=tls_redis.env())
    try:
        dev.wait_for(f"Redis {tls_redis.url}", timeout=60)
        dev.wait_for("ready", timeout=60)
        assert "shop/orders" in {
            k.decode() if isinstance(k, bytes) else k for k in await redis.hkeys(keys.SOURCES)
        }
        sent = send(tmp_path, "shop/orders", "--type", "com.shop.tls", "--data", '{"n": 1}')
        assert sent.returncode == 0, sent.stderr
        entries = await redis.xrange(stream)
        assert len(entries) == 1
        assert tls_redis.password not in dev.output()
    finally:
        dev.stop()
        await redis.delete(stream)
        await redis.aclose()
