"""`tidings tail` and `tidings trace` against `tidings dev`'s own Redis (the URL it
prints), as a laptop user follows the quickstart's deliveries."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from dev_harness import Process, tidings
from test_dev_quickstart import send, start_dev


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tidings(*args), cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_tail_and_trace_read_what_tidings_dev_delivered(
    tmp_path: Path, subscriber: tuple[Process, int]
) -> None:
    printer, port = subscriber
    dev, _ = start_dev(tmp_path, "--service", f"subscriber=http://127.0.0.1:{port}")
    try:
        [started] = dev.wait_for(r"started redis-server on redis://\S+", timeout=60)
        redis_url = re.search(r"redis://\S+", started).group(0)  # type: ignore[union-attr]
        dev.wait_for("ready; Ctrl-C stops", timeout=60)
        sent = send(tmp_path, "shop/orders", "--type", "com.shop.order.created", "--data", "7")
        assert sent.returncode == 0, sent.stderr
        [stored] = dev.wait_for(r"<- shop/orders: com.shop.order.created id=\S+ \(stored\)")
        event_id = re.search(r"id=(\S+)", stored).group(1)  # type: ignore[union-attr]
        printer.wait_for(r"received com.shop.order.created id=\S+ on /events", timeout=30)

        tail = run(
            tmp_path, "tail", "shop/print-orders", "--since", "10m", "--no-follow",
            "--redis-url", redis_url, "-o", "json",
        )  # fmt: skip
        assert tail.returncode == 0, tail.stderr
        [attempt] = [json.loads(line) for line in tail.stdout.splitlines()]
        assert (attempt["eventId"], attempt["outcome"], attempt["status"]) == (
            event_id,
            "delivered",
            "200",
        )

        trace = run(tmp_path, "trace", "shop/orders", event_id, "--redis-url", redis_url)
        assert trace.returncode == 0, trace.stderr
        assert trace.stdout.startswith(f"event {event_id} in shop/orders\n")
        assert re.search(r"\n  print-orders +delivered \S+ after 1 attempt, latency", trace.stdout)
    finally:
        dev.stop()
