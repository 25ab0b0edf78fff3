"""The retry policy of DESIGN.md, point by point, as pure functions."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

from tidings.api.routes import CompiledRetry
from tidings.dispatcher.retry import Failure, backoff_delay, decide, is_retryable, parse_retry_after


def policy(**overrides: object) -> CompiledRetry:
    values: dict[str, object] = {
        "max_attempts": 12,
        "backoff": "exponential",
        "initial_delay": 1.0,
        "max_delay": 3600.0,
        "jitter": 0.0,
        "retry_after_max": 600.0,
        "retry_on": ["network", "timeout", "408", "429", "5xx"],
    }
    values.update(overrides)
    return CompiledRetry.model_validate(values)


UNAVAILABLE = Failure("status", 503, "HTTP 503")


def test_exponential_backoff_doubles_from_initial_delay() -> None:
    p = policy(initial_delay=0.5)
    assert [backoff_delay(p, n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]


def test_linear_backoff_grows_by_initial_delay() -> None:
    p = policy(backoff="linear", initial_delay=2.0)
    assert [backoff_delay(p, n) for n in (1, 2, 3)] == [2.0, 4.0, 6.0]


def test_fixed_backoff_stays_at_initial_delay() -> None:
    p = policy(backoff="fixed", initial_delay=3.0)
    assert [backoff_delay(p, n) for n in (1, 5, 50)] == [3.0, 3.0, 3.0]


def test_max_delay_caps_every_delay_even_after_many_attempts() -> None:
    p = policy(max_delay=10.0, jitter=0.5)
    assert backoff_delay(p, 1000) <= 10.0
    assert backoff_delay(policy(max_delay=10.0), 30) == 10.0


def test_jitter_spreads_delays_within_the_fraction() -> None:
    p = policy(initial_delay=10.0, jitter=0.2)
    rng = random.Random(7)
    delays = [backoff_delay(p, 1, rng) for _ in range(500)]
    assert min(delays) >= 8.0 and max(delays) <= 12.0
    assert max(delays) - min(delays) > 2.0  # actually spread, not constant


def test_retry_on_matches_exact_codes_classes_and_kinds() -> None:
    retry_on = ["network", "408", "5xx"]
    assert is_retryable(retry_on, Failure("network"))
    assert not is_retryable(retry_on, Failure("timeout"))
    assert is_retryable(retry_on, Failure("status", 408))
    assert is_retryable(retry_on, Failure("status", 502))
    assert not is_retryable(retry_on, Failure("status", 429))
    assert is_retryable(["4xx"], Failure("status", 404))


def test_other_4xx_is_dead_lettered_at_once() -> None:
    decision = decide(policy(), Failure("status", 400), attempts=1, age=0, max_age=3600)
    assert not decision.retry
    assert "400 is not in retryOn" in decision.reason


def test_max_attempts_ends_the_retries() -> None:
    p = policy(max_attempts=3)
    assert decide(p, UNAVAILABLE, attempts=2, age=0, max_age=3600).retry
    last = decide(p, UNAVAILABLE, attempts=3, age=0, max_age=3600)
    assert not last.retry and "maxAttempts (3)" in last.reason


def test_retry_after_is_honoured_up_to_cap() -> None:
    p = policy(initial_delay=0.1, retry_after_max=30.0)
    asked = Failure("status", 429, retry_after=20.0)
    assert decide(p, asked, attempts=1, age=0, max_age=3600).delay == 20.0
    greedy = Failure("status", 503, retry_after=86400.0)
    assert decide(p, greedy, attempts=1, age=0, max_age=3600).delay == 30.0


def test_retry_after_never_shortens_the_backoff() -> None:
    p = policy(initial_delay=8.0)
    assert (
        decide(p, Failure("status", 503, retry_after=1.0), attempts=1, age=0, max_age=99).delay
        == 8.0
    )


def test_max_age_dead_letters_an_event_whose_next_attempt_would_be_too_late() -> None:
    p = policy(initial_delay=60.0)
    decision = decide(p, UNAVAILABLE, attempts=1, age=3590, max_age=3600)
    assert not decision.retry and "maxAge" in decision.reason
    assert decide(p, UNAVAILABLE, attempts=1, age=10, max_age=3600).retry


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("120", now=0) == 120.0
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = format_datetime(datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == 30.0
    assert parse_retry_after("soon", now=0) is None
    assert parse_retry_after(None, now=0) is None
