from __future__ import annotations

import pytest

from tidings.api.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("500ms", 0.5), ("1h30m", 5400), ("72h", 259200), ("1.5s", 1.5), ("2m3s", 123)],
)
def test_go_style_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "10 s", "1d", "-1s", "10sx", "h1"])
def test_malformed_durations_name_the_field_and_the_fix(text: str) -> None:
    with pytest.raises(DurationError, match=r"^spec.delivery.timeout: .* e\.g\. 500ms"):
        parse_duration(text, field="spec.delivery.timeout")


def test_format_duration_is_short() -> None:
    assert format_duration(90) == "1m30s"
    assert format_duration(0.25) == "250ms"
    assert format_duration(3600) == "1h"
