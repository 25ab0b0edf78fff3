"""When status writes may go (tidings.operator.pacing): a burst at once, then the
rate, first come first served; a mass apply's rate while new objects keep
arriving, none once it is over."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from tidings.api.settings import SettingsError, load
from tidings.operator.main import OperatorSettings
from tidings.operator.pacing import BULK_CREATES, BulkCreates, Turns, status_rate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_goes_at_once_then_turns_are_spaced_at_the_rate() -> None:
    clock = Clock()
    turns = Turns(lambda: 10.0, burst=3, clock=clock)
    tickets = [turns.ticket() for _ in range(6)]
    assert [round(turns.due_in(t), 6) for t in tickets] == [0.0, 0.0, 0.0, 0.1, 0.2, 0.3]
    clock.now += 0.2
    assert [round(turns.due_in(t), 6) for t in tickets[3:]] == [0.0, 0.0, 0.1]


def test_a_quiet_spell_saves_up_only_the_burst() -> None:
    clock = Clock()
    turns = Turns(lambda: 10.0, burst=3, clock=clock)
    for _ in range(3):
        turns.due_in(turns.ticket())
    clock.now += 3600
    tickets = [turns.ticket() for _ in range(4)]
    assert [round(turns.due_in(t), 6) for t in tickets] == [0.0, 0.0, 0.0, 0.1]


def test_turns_waiting_at_a_low_rate_are_all_due_once_the_rate_is_lifted() -> None:
    clock = Clock()
    rate = [1.0]
    turns = Turns(lambda: rate[0], burst=1, clock=clock)
    tickets = [turns.ticket() for _ in range(1000)]
    assert turns.due_in(tickets[-1]) == 999.0
    rate[0] = 0.0  # the mass apply is over
    assert {turns.due_in(t) for t in tickets} == {0.0}
    # Back to a rate: the next turns start from a fresh burst, not from a debt.
    rate[0] = 1.0
    later = [turns.ticket() for _ in range(2)]
    assert [turns.due_in(t) for t in later] == [0.0, 1.0]


def test_no_rate_means_every_turn_is_due() -> None:
    turns = Turns(lambda: 0.0, burst=1, clock=Clock())
    assert {turns.due_in(turns.ticket()) for _ in range(1000)} == {0.0}


def test_a_mass_apply_is_new_objects_arriving_faster_than_the_threshold() -> None:
    clock = Clock()
    creates = BulkCreates(threshold=5, hold=3.0, clock=clock)
    for _ in range(4):
        creates.saw()
        clock.now += 0.3
    assert not creates.busy()  # 4 within a second, then 4 in 1.2 s
    creates.saw()
    assert not creates.busy()
    for _ in range(4):
        creates.saw()
    assert creates.busy()
    clock.now += 2.9  # a gap (the operator takes in watch events in bursts)
    creates.saw()
    assert creates.busy()
    clock.now += 0.2  # 3 s after the last busy second: over
    assert not creates.busy()


def test_the_rate_is_the_bulk_rate_during_a_mass_apply_and_the_cap_otherwise() -> None:
    clock = Clock()
    creates = BulkCreates(clock=clock)
    uncapped = status_rate(creates, qps=0, bulk_qps=10)
    capped = status_rate(creates, qps=5, bulk_qps=10)
    never_held = status_rate(creates, qps=0, bulk_qps=0)
    assert (uncapped(), capped(), never_held()) == (0, 5, 0)
    for _ in range(BULK_CREATES):
        creates.saw()
    assert (uncapped(), capped(), never_held()) == (10, 5, 0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TIDINGS_STATUS_WRITE_QPS": "-1"}, "--status-write-qps=-1.0: use 0 (no limit)"),
        ({"TIDINGS_BULK_STATUS_WRITE_QPS": "nan"}, "--bulk-status-write-qps=nan: use 0"),
        ({"TIDINGS_STATUS_WRITE_BURST": "0"}, "--status-write-burst=0: use 1 or more"),
    ],
)
def test_a_bad_limit_is_refused_naming_the_setting(env: dict[str, str], message: str) -> None:
    options = load(OperatorSettings, argparse.Namespace(), env)
    with pytest.raises(SettingsError) as raised:
        options.check_status_write_limits()
    assert str(raised.value).startswith(message)


def test_the_limits_are_read_from_flags_and_the_environment() -> None:
    options = load(
        OperatorSettings,
        argparse.Namespace(bulk_status_write_qps="25"),
        {"TIDINGS_STATUS_WRITE_BURST": "40"},
    )
    options.check_status_write_limits()
    assert (options.bulk_status_write_qps, options.status_write_burst) == (25.0, 40)
    assert load(OperatorSettings, argparse.Namespace(), {}).bulk_status_write_qps > 0


async def test_holders_are_woken_at_their_turn_and_at_once_when_the_rate_is_lifted() -> None:
    rate = [20.0]
    turns = Turns(lambda: rate[0], burst=1)
    spawned: list[asyncio.Task[None]] = []
    turns.wake_with(lambda work, name: spawned.append(asyncio.create_task(work, name=name)))
    tickets = [turns.ticket() for _ in range(100)]
    woken: list[int] = []
    all_woken = asyncio.Event()

    def wake(ticket: int) -> None:
        woken.append(ticket)
        if len(woken) == len(tickets) - 1:
            all_woken.set()

    loop = asyncio.get_running_loop()
    started = loop.time()
    for ticket in tickets[1:]:
        assert turns.due_in(ticket) > 0
        assert turns.call_when_due(ticket, lambda t=ticket: wake(t))
    await asyncio.sleep(0.5)
    # At 20 a second: about ten woken so far (far from all, even on a stalled
    # machine), in the order of their tickets.
    assert 1 <= len(woken) < 60, woken
    assert woken == sorted(woken)
    rate[0] = 0.0  # the mass apply is over: the rest within a recheck
    await asyncio.wait_for(all_woken.wait(), 10)
    assert sorted(woken) == tickets[1:]
    assert loop.time() - started < 2.5
    await asyncio.gather(*spawned)  # the releasing task ends once nobody waits


def test_without_a_way_to_wake_holders_nobody_is_promised_a_wake() -> None:
    turns = Turns(lambda: 1.0, burst=1, clock=Clock())
    turns.ticket()
    assert not turns.call_when_due(turns.ticket(), lambda: None)


def test_a_ticket_given_up_before_its_turn_passes_the_turn_on() -> None:
    clock = Clock()
    turns = Turns(lambda: 1.0, burst=1, clock=clock)
    first, gone, waiting = turns.ticket(), turns.ticket(), turns.ticket()
    assert [turns.due_in(t) for t in (first, gone, waiting)] == [0.0, 1.0, 2.0]
    turns.done(first)  # written: nothing changes for the others
    assert turns.due_in(waiting) == 2.0
    turns.done(gone)  # its Trigger was deleted while it waited
    assert turns.due_in(waiting) == 1.0


async def test_a_ticket_done_before_its_wake_is_not_woken() -> None:
    turns = Turns(lambda: 50.0, burst=1)
    spawned: list[asyncio.Task[None]] = []
    turns.wake_with(lambda work, name: spawned.append(asyncio.create_task(work, name=name)))
    turns.due_in(turns.ticket())
    tickets = [turns.ticket() for _ in range(3)]
    woken: list[int] = []
    for ticket in tickets:
        turns.call_when_due(ticket, lambda t=ticket: woken.append(t))
    turns.done(tickets[1])  # its holder went away (or wrote on a round of its own)
    await asyncio.wait_for(asyncio.gather(*spawned), 5)
    assert woken == [tickets[0], tickets[2]]


async def test_a_wake_that_fails_does_not_stop_the_others() -> None:
    turns = Turns(lambda: 0.0, burst=1)
    spawned: list[asyncio.Task[None]] = []
    turns.wake_with(lambda work, name: spawned.append(asyncio.create_task(work, name=name)))
    woken: list[str] = []

    def broken() -> None:
        raise RuntimeError("a bug")

    turns.call_when_due(turns.ticket(), broken)
    turns.call_when_due(turns.ticket(), lambda: woken.append("next"))
    await asyncio.wait_for(asyncio.gather(*spawned), 5)
    assert woken == ["next"]
