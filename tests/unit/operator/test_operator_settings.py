"""Operator settings that shape behaviour under failure."""

from __future__ import annotations

from tidings.operator.adapters import AdapterSettings
from tidings.operator.context import Settings


def test_retries_after_errors_back_off_to_a_cap() -> None:
    settings = Settings(adapters=AdapterSettings(image="i", redis_url="r"))
    delays = [settings.retry_after(n) for n in range(1, 12)]
    assert 0.8 <= delays[0] <= 1.2
    assert delays[3] > delays[0] * 4  # doubling (with ±20 % jitter)
    assert max(delays) <= settings.retry_max * 1.2
    assert min(delays[-3:]) >= settings.retry_max * 0.8  # stays at the cap
