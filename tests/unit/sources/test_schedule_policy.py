"""Cron tick times in a time zone, and the catch-up policy after an outage."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tidings.sources.errors import InvalidSchedule
from tidings.sources.schedule import Schedule, choose


def at(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def test_ticks_follow_local_time_across_a_dst_change() -> None:
    schedule = Schedule("0 6 * * *", "Europe/Berlin")
    ticks = schedule.between(at(2024, 3, 29), at(2024, 4, 1, 12))
    assert [schedule.iso(t) for t in ticks] == [
        "2024-03-29T06:00:00+01:00",
        "2024-03-30T06:00:00+01:00",
        "2024-03-31T06:00:00+02:00",
        "2024-04-01T06:00:00+02:00",
    ]
    # 06:00 local is 05:00 UTC in winter and 04:00 UTC in summer.
    assert ticks[0] == at(2024, 3, 29, 5) and ticks[-1] == at(2024, 4, 1, 4)


def test_between_excludes_the_start_and_includes_the_end() -> None:
    schedule = Schedule("*/5 * * * *", "UTC")
    assert schedule.between(at(2024, 1, 1, 0, 0), at(2024, 1, 1, 0, 10)) == [
        at(2024, 1, 1, 0, 5),
        at(2024, 1, 1, 0, 10),
    ]
    assert schedule.next_after(at(2024, 1, 1, 0, 10)) == at(2024, 1, 1, 0, 15)


def test_macros_are_accepted() -> None:
    schedule = Schedule("@hourly", "UTC")
    assert schedule.next_after(at(2024, 1, 1, 0, 30)) == at(2024, 1, 1, 1)


@pytest.mark.parametrize(
    ("cron", "zone", "field"),
    [
        ("61 * * * *", "UTC", "spec.schedule.cron"),
        ("* * * * *", "Mars/Olympus", "spec.schedule.timeZone"),
    ],
)
def test_invalid_schedules_name_the_field(cron: str, zone: str, field: str) -> None:
    with pytest.raises(InvalidSchedule) as raised:
        Schedule(cron, zone)
    assert raised.value.message.startswith(field)


def test_a_tick_due_just_now_fires() -> None:
    assert choose([100.0], now=100.5, max_catch_up=0, grace=60) == ([100.0], [])


def test_missed_ticks_fire_up_to_max_catch_up_newest_first_kept_in_order() -> None:
    due = [100.0, 200.0, 300.0, 400.0]
    # 400 is on time; of the missed 100..300, the newest two fire.
    assert choose(due, now=410, max_catch_up=2, grace=60) == ([200.0, 300.0, 400.0], [100.0])


def test_with_no_tick_on_time_only_caught_up_ticks_fire() -> None:
    due = [100.0, 200.0, 300.0]
    assert choose(due, now=1000, max_catch_up=1, grace=60) == ([300.0], [100.0, 200.0])
    assert choose(due, now=1000, max_catch_up=0, grace=60) == ([], [100.0, 200.0, 300.0])
    assert choose(due, now=1000, max_catch_up=10, grace=60) == (due, [])
