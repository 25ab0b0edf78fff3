"""`tidings dev` end to end: its own working directory (state under .tidings/),
the quickstart subscriber on a free port."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dev_harness import QUICKSTART, Process

from tidings.cli.redis_server import free_port


@pytest.fixture
def subscriber(tmp_path: Path) -> Iterator[tuple[Process, int]]:
    port = free_port()
    process = Process(
        [sys.executable, str(QUICKSTART / "subscriber.py"), "--port", str(port)], cwd=tmp_path
    )
    process.wait_for("listening")
    yield process, port
    process.stop()
