"""Durations in the API are strings (`10s`, `72h`); this is the one place that parses them.

The accepted grammar is Go's `time.ParseDuration` without sign (`1h30m`, `500ms`,
`1.5s`), so the CRD's CEL rules can compare them with Kubernetes' own `duration()`.
"""

from __future__ import annotations

import re

# Longest unit names first so `ms` is not read as `m` followed by garbage.
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"


class DurationError(ValueError):
    """A duration string that cannot be parsed; the message says what is accepted."""


def parse_duration(text: str, *, field: str = "duration") -> float:
    """Return the duration in seconds, or raise DurationError naming the field."""
    position = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise DurationError(
            f"{field}: {text!r} is not a duration; write a number and a unit "
            "(ms, s, m, h), e.g. 500ms, 10s, 1h30m, 72h"
        )
    return total


def format_duration(seconds: float) -> str:
    """The shortest readable form of a duration, e.g. 90 -> `1m30s`."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts) or "0s"
