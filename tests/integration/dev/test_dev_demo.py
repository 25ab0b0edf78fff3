"""The README's main-job command, run as the README says."""

from __future__ import annotations

import subprocess

from dev_harness import REPO


def test_hack_demo_sh_delivers_every_event_it_sends_and_leaves_nothing_running() -> None:
    done = subprocess.run(
        ["bash", "hack/demo.sh", "2"], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo: 2 events sent, 2 delivered; stopping" in done.stdout
    assert done.stdout.count("[subscriber] subscriber: received com.shop.order.created") == 2
    still_running = subprocess.run(
        ["pgrep", "-f", "tidings-demo"], capture_output=True, text=True, check=False
    )
    assert still_running.stdout == "", "the demo left processes behind"
