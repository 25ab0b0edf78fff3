"""`tidings replay`: what it prints for a dead letter, and the mistakes it
refuses before touching Redis (each message names the flag and the fix)."""

from __future__ import annotations

import pytest

from tidings.cli.main import main
from tidings.cli.replay import describe
from tidings.dispatcher.deadletter import DeadLetter

REDIS = ["--redis-url", "redis://127.0.0.1:1/0"]  # never reached by these tests


def dead_letter(**overrides: object) -> DeadLetter:
    values: dict[str, object] = {
        "dlq_id": "1764349200000-0",
        "event": {"id": "evt-1", "type": "com.shop.order.created"},
        "stream_id": "1764349100000-0",
        "attempts": 1,
        "status": "400",
        "error": "400 is not in retryOn: HTTP 400: missing field email",
        "time_ms": 1764349200000,
        "trigger": "shop/welcome-email",
    }
    values.update(overrides)
    return DeadLetter(**values)  # type: ignore[arg-type]


def test_a_dry_run_line_shows_id_time_event_type_status_and_error() -> None:
    assert describe(dead_letter()) == (
        "1764349200000-0  2025-11-28T17:00:00Z  evt-1  com.shop.order.created  400  "
        "400 is not in retryOn: HTTP 400: missing field email"
    )


def test_a_network_failure_shows_a_dash_for_its_status() -> None:
    line = describe(dead_letter(status="", error="max attempts reached: timeout after 10s"))
    assert line.split("  ")[4] == "-"


def test_a_dead_letter_without_its_event_says_so() -> None:
    assert "(event not stored)" in describe(dead_letter(event={}))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["shop/welcome"], "nothing: choose exactly one of --all, --since DURATION"),
        (["shop/welcome", "--all", "--since", "1h"], "--since and --all: choose exactly one"),
        (["shop/welcome", "--all", "--id", "1-0"], "--id and --all: choose exactly one"),
        (["shop/welcome", "--since", "2d"], "--since: '2d' is not a duration"),
        (["shop/welcome", "--all", "--limit", "0"], "--limit 0: give a positive number"),
        (["welcome", "--all"], "'welcome': write the Trigger as NAMESPACE/NAME"),
        (["shop/welcome", "--id", "e-1"], "--id e-1: not a dead letter id"),
    ],
)
def test_mistakes_are_refused_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", *argv, *REDIS]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_redis_url_names_the_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["replay", "shop/welcome", "--all"]) == 2
    assert "--redis-url (or REDIS_URL) is required" in capsys.readouterr().err
