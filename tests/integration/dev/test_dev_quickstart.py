"""`tidings dev -f examples/quickstart` as a user runs it, with `tidings send`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from dev_harness import QUICKSTART, Process, copy_quickstart, tidings
from redis import Redis

from tidings.api import keys
from tidings.cli.redis_server import RedisServer, free_port

NEW_TRIGGER = """
apiVersion: tidings.dev/v1alpha1
kind: Trigger
metadata: {name: audit, namespace: shop}
spec:
  source: orders
  subscriber: {ref: {name: auditor, port: 9100}, path: /audit}
"""


def start_dev(
    tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[Process, int]:
    folder = copy_quickstart(tmp_path)
    port = free_port()
    dev = Process(
        tidings("dev", "-f", str(folder), "--listen", f"127.0.0.1:{port}", *extra),
        cwd=tmp_path,
        # A private redis-server unless the test says otherwise (not the test env's).
        env={"REDIS_URL": "", **(env or {})},
    )
    return dev, port


def send(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tidings("send", *args), cwd=tmp_path, capture_output=True, text=True, timeout=30
    )


def readyz(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        answer: dict[str, object] = json.load(response)
        return answer


def routes_eventually(port: int, expected: int, timeout: float = 5.0) -> int:
    """The routes ingest sees; the table reaches it over pub/sub a moment after publishing."""
    deadline = time.monotonic() + timeout
    while (routes := readyz(port)["routes"]) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(routes)  # type: ignore[call-overload]


def test_the_quickstart_delivers_what_tidings_send_posts_to_the_subscriber(
    tmp_path: Path, subscriber: tuple[Process, int]
) -> None:
    printer, port = subscriber
    dev, dev_port = start_dev(tmp_path, "--service", f"subscriber=http://127.0.0.1:{port}")
    try:
        dev.wait_for("ready; Ctrl-C stops")
        assert dev.wait_for(rf"POST http://127.0.0.1:{dev_port}/sources/shop/orders")
        assert dev.wait_for(rf"Trigger shop/print-orders: orders -> http://127.0.0.1:{port}/events")
        for n in range(3):
            sent = send(
                tmp_path,
                "shop/orders",
                "--type",
                "com.shop.order.created",
                "--data",
                f'{{"n": {n}}}',
            )
            assert sent.returncode == 0, sent.stderr  # no --url, no --token: the session file
            assert sent.stdout.startswith("202 accepted")
        dev.wait_for(r"<- shop/orders: com.shop.order.created id=\S+ \(stored\)", count=3)
        dev.wait_for(r"-> shop/print-orders: delivered com.shop.order.created .* \(200, ", count=3)
        received = printer.wait_for(r"received com.shop.order.created id=\S+ on /events", count=3)
        data = sorted(line.split(" on /events: ")[1] for line in received)
        assert data == [f'{{"n": {n}}}' for n in range(3)]
        assert readyz(dev_port)["ready"] is True
    finally:
        assert dev.stop() == 0, dev.output()


def test_a_trigger_added_to_the_folder_starts_receiving(
    tmp_path: Path, subscriber: tuple[Process, int]
) -> None:
    printer, port = subscriber
    dev, dev_port = start_dev(tmp_path, "--service", f"auditor=http://127.0.0.1:{port}")
    try:
        dev.wait_for("ready")
        (tmp_path / "quickstart" / "audit.yaml").write_text(NEW_TRIGGER)
        dev.wait_for(rf"\+ Trigger shop/audit -> http://127.0.0.1:{port}/audit")
        sent = send(tmp_path, "shop/orders", "--type", "anything.at.all", "--data", "1")
        assert sent.returncode == 0, sent.stderr
        printer.wait_for(r"received anything.at.all id=\S+ on /audit: 1")
        (tmp_path / "quickstart" / "audit.yaml").unlink()
        dev.wait_for(r"- Trigger shop/audit")
        assert routes_eventually(dev_port, 1) == 1
    finally:
        dev.stop()


def test_failed_attempts_are_printed_and_retried(tmp_path: Path) -> None:
    port = free_port()
    flaky = Process(
        [
            sys.executable,
            str(QUICKSTART / "subscriber.py"),
            "--port",
            str(port),
            "--fail-first",
            "1",
        ],
        cwd=tmp_path,
    )
    dev, _ = start_dev(tmp_path, "--service", f"subscriber=http://127.0.0.1:{port}")
    try:
        flaky.wait_for("listening")
        dev.wait_for("ready")
        assert send(tmp_path, "shop/orders", "--type", "com.shop.retry").returncode == 0
        dev.wait_for(r"-> shop/print-orders: com.shop.retry id=\S+ failed: .*503.*; will retry")
        dev.wait_for(r"-> shop/print-orders: delivered com.shop.retry")
        flaky.wait_for(r"received com.shop.retry")
    finally:
        dev.stop()
        flaky.stop()


def test_a_broken_manifest_is_reported_and_the_last_good_set_keeps_running(
    tmp_path: Path,
) -> None:
    dev, port = start_dev(tmp_path)
    try:
        dev.wait_for("ready")
        broken = NEW_TRIGGER.replace("source: orders", "source: orders\n  paused: maybe")
        (tmp_path / "quickstart" / "audit.yaml").write_text(broken)
        dev.wait_for("manifests not applied")
        dev.wait_for(r"audit.yaml: Trigger shop/audit: spec.paused: ")
        assert readyz(port)["routes"] == 1
        sent = send(tmp_path, "shop/orders", "--type", "com.shop.x")
        assert sent.returncode == 0, sent.stderr
    finally:
        dev.stop()


def test_sigterm_stops_dev_and_its_private_redis_keeping_the_data(tmp_path: Path) -> None:
    dev, _ = start_dev(tmp_path)
    dev.wait_for("ready")
    [started] = dev.wait_for(r"started redis-server on redis://127.0.0.1:(\d+)")
    redis_port = int(started.split("127.0.0.1:")[1].split("/")[0])
    assert send(tmp_path, "shop/orders", "--type", "com.shop.x").returncode == 0
    assert dev.stop() == 0
    assert not RedisServer(tmp_path, port=redis_port).ping()
    assert list((tmp_path / ".tidings" / "dev-redis").rglob("*.aof"))
    assert not (tmp_path / ".tidings" / "dev-session.json").exists()
    # The data survives: a redis-server on the same directory has the event (AOF).
    again = RedisServer(tmp_path / ".tidings" / "dev-redis")
    again.start()
    try:
        redis = Redis.from_url(again.url)
        assert redis.xlen(keys.stream("shop", "orders")) == 1
        redis.close()
    finally:
        again.stop()


def test_without_redis_server_dev_says_how_to_install_it(tmp_path: Path) -> None:
    dev, _ = start_dev(tmp_path, env={"PATH": "/nonexistent", "REDIS_URL": ""})
    assert dev.process.wait(30) == 2
    assert "apt-get install redis-server" in dev.output()
    assert "brew install redis" in dev.output()


def test_dev_uses_redis_url_when_given(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "own-redis")
    server.start()
    dev, _ = start_dev(tmp_path, env={"REDIS_URL": server.url})
    try:
        dev.wait_for(f"Redis {server.url}")
        dev.wait_for("ready")
        redis = Redis.from_url(server.url)
        assert redis.hkeys(keys.SOURCES) == [b"shop/orders"]
        redis.close()
    finally:
        dev.stop()
        server.stop()
