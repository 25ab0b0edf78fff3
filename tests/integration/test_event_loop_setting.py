"""`TIDINGS_EVENT_LOOP` is checked with the other settings by the dispatcher and
the operator: an unknown loop stops the process at once with one line naming
the variable and the choices — not a traceback from the event loop's start —
before it connects anywhere (tidings.api.process.event_loop_choice)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tidings.api.sealing import new_key

TIDINGS = str(Path(sys.executable).parent / "tidings")
# Nothing listens here: the processes must stop before they connect anywhere.
UNUSED_REDIS = "redis://127.0.0.1:9/0"


@pytest.mark.parametrize(
    "argv",
    [
        ("dispatcher", "--listen", "127.0.0.1:0"),
        ("operator", "--standalone"),
    ],
)
def test_an_unknown_event_loop_stops_the_process_naming_the_variable(
    argv: tuple[str, ...], tmp_path: Path
) -> None:
    key = tmp_path / "seal.key"
    key.write_text(new_key())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIDINGS_", "REDIS_"))}
    done = subprocess.run(
        [TIDINGS, *argv, "--redis-url", UNUSED_REDIS],
        env={**env, "TIDINGS_SEAL_KEY_FILE": str(key), "TIDINGS_EVENT_LOOP": "trio"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == (2 if argv[0] == "operator" else 1), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "TIDINGS_EVENT_LOOP: 'trio'" in done.stderr, done.stderr
    assert "use uvloop (the default) or asyncio" in done.stderr, done.stderr
