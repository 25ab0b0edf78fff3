"""The processes that open or seal secrets refuse to start without the seal key
(`TIDINGS_SEAL_KEY_FILE`), instead of inventing one that fails every sealed
value at run time. `tidings dev` makes its own (tests/unit/cli/test_dev_helpers.py)."""

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


def clean_environment() -> dict[str, str]:
    """This environment without any seal key, and without the test env's Redis
    settings (the processes must stop before they would connect anywhere)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TIDINGS_SEAL_KEY", "REDIS_"))}


def start(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = clean_environment()
    return subprocess.run(
        [
            TIDINGS,
            command,
            "--redis-url",
            UNUSED_REDIS,
            "--listen" if command == "dispatcher" else "--standalone",
            *(["127.0.0.1:0"] if command == "dispatcher" else []),
        ],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", ["dispatcher", "operator"])
def test_without_a_seal_key_it_exits_at_once_naming_the_variable(command: str) -> None:
    done = start(command, {})
    assert done.returncode != 0
    assert "TIDINGS_SEAL_KEY_FILE" in done.stderr, done.stderr
    assert "listening" not in done.stderr and "starting" not in done.stderr


@pytest.mark.parametrize("command", ["dispatcher", "operator"])
@pytest.mark.parametrize(("content", "says"), [("", "is empty"), ("nope", "Fernet key")])
def test_an_empty_or_malformed_key_file_is_refused_too(
    command: str, content: str, says: str, tmp_path: Path
) -> None:
    key = tmp_path / "seal.key"
    key.write_text(content)
    done = start(command, {"TIDINGS_SEAL_KEY_FILE": str(key)})
    assert done.returncode != 0
    assert f"TIDINGS_SEAL_KEY_FILE={key}" in done.stderr or str(key) in done.stderr, done.stderr
    assert says in done.stderr, done.stderr


def test_a_dispatcher_with_its_key_gets_past_the_check(tmp_path: Path) -> None:
    """The control: the same command with a key starts serving (and is stopped)."""
    key = tmp_path / "seal.key"
    key.write_text(new_key())
    base = clean_environment()
    process = subprocess.Popen(
        [TIDINGS, "dispatcher", "--redis-url", UNUSED_REDIS, "--listen", "127.0.0.1:0"],
        env={**base, "TIDINGS_SEAL_KEY_FILE": str(key)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "listening" in line, line
    finally:
        process.terminate()
        process.wait(30)
