"""`tidings dev` runs a Replay from the manifest folder, as a cluster would, and
stops it when its manifest goes; `tidings send --deliver-after` delays an event."""

from __future__ import annotations

import time
from pathlib import Path

from dev_harness import Process
from test_dev_quickstart import send, start_dev

REPLAY = """
apiVersion: tidings.dev/v1alpha1
kind: Replay
metadata: {name: again, namespace: shop}
spec:
  trigger: print-orders
  from: {stream: {}}
"""


def test_a_replay_in_the_folder_delivers_the_stored_events_again(
    tmp_path: Path, subscriber: tuple[Process, int]
) -> None:
    printer, port = subscriber
    dev, _ = start_dev(tmp_path, "--service", f"subscriber=http://127.0.0.1:{port}")
    try:
        dev.wait_for("ready; Ctrl-C stops", timeout=60)
        for n in range(3):
            sent = send(
                tmp_path, "shop/orders", "--type", "com.shop.order.created", "--data", str(n)
            )
            assert sent.returncode == 0, sent.stderr
        printer.wait_for(r"received com.shop.order.created id=\S+ on /events", count=3, timeout=30)
        (tmp_path / "quickstart" / "replay.yaml").write_text(REPLAY)
        dev.wait_for(r"\+ Replay shop/again", timeout=30)
        # Each stored event once more, delivered by the engine with fresh attempts.
        dev.wait_for(r"-> shop/print-orders: delivered com.shop.order.created", count=6, timeout=30)
        printer.wait_for(r"received com.shop.order.created id=\S+ on /events", count=6, timeout=30)
    finally:
        dev.stop()


SLOW = """
apiVersion: tidings.dev/v1alpha1
kind: Replay
metadata: {name: slow, namespace: shop}
spec:
  trigger: print-orders
  from: {stream: {}}
  rate: {perSecond: 2}
"""

RECEIVED = r"received com.shop.order.created id=\S+ on /events"


def quiet_count(process: Process, pattern: str, *, quiet: float) -> int:
    """How many lines match, once no new one came for `quiet` seconds."""
    count = len(process.wait_for(pattern))
    while True:
        time.sleep(quiet)
        now = len(process.wait_for(pattern))
        if now == count:
            return count
        count = now


def test_a_replay_removed_from_the_folder_stops_and_sends_nothing_more(
    tmp_path: Path, subscriber: tuple[Process, int]
) -> None:
    printer, port = subscriber
    dev, _ = start_dev(tmp_path, "--service", f"subscriber=http://127.0.0.1:{port}")
    try:
        dev.wait_for("ready; Ctrl-C stops", timeout=60)
        sent = send(tmp_path, "shop/orders", "--type", "com.shop.order.created", "--count", "20")
        assert sent.returncode == 0, sent.stderr
        printer.wait_for(RECEIVED, count=20, timeout=30)
        replay = tmp_path / "quickstart" / "replay.yaml"
        replay.write_text(SLOW)
        dev.wait_for(r"\+ Replay shop/slow", timeout=30)
        printer.wait_for(RECEIVED, count=22, timeout=30)
        replay.unlink()
        dev.wait_for(r"- Replay shop/slow", timeout=30)
        # What was delivered before the cancel may still be in the printer's pipe
        # on a busy machine: count once it has been quiet for 0.6 s (a page of
        # this Replay comes every second, so one after the cancel still shows).
        delivered = quiet_count(printer, RECEIVED, quiet=0.6)
        time.sleep(3)
        assert len(printer.wait_for(RECEIVED, count=22)) == delivered < 40
    finally:
        dev.stop()


def test_an_event_sent_with_deliver_after_arrives_no_earlier(
    tmp_path: Path, subscriber: tuple[Process, int]
) -> None:
    printer, port = subscriber
    dev, _ = start_dev(tmp_path, "--service", f"subscriber=http://127.0.0.1:{port}")
    try:
        dev.wait_for("ready; Ctrl-C stops", timeout=60)
        started = time.monotonic()
        sent = send(
            tmp_path,
            "shop/orders",
            "--type",
            "com.shop.order.created",
            "--id",
            "later-1",
            "--deliver-after",
            "3s",
        )
        assert sent.returncode == 0, sent.stderr
        printer.wait_for(r"received com.shop.order.created id=later-1 ", timeout=30)
        assert time.monotonic() - started >= 3.0
        refused = send(
            tmp_path, "shop/orders", "--type", "com.shop.order.created", "--deliver-after", "200h"
        )
        assert refused.returncode == 1
        assert "maxDelay" in refused.stderr
    finally:
        dev.stop()
