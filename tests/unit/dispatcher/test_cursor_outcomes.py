"""The cursor's script keys, and how a settled batch is counted (pure parts of
cursor.py and engine.py; the Redis side is tested in tests/integration/dispatcher)."""

from __future__ import annotations

import re

from tidings.api import keys, scripts
from tidings.api.routes import Route
from tidings.dispatcher.cursor import Entry, FetchStatus, Op, Origin, Outcome, script_keys
from tidings.dispatcher.engine import Done, Verdict, stored_event, tally
from tidings.dispatcher.retry import Failure

# Only what script_keys reads: the Trigger's names and its source's stream.
ROUTE = Route.model_construct(
    namespace="shop", name="mail", source="orders", stream=keys.stream("shop", "orders")
)


def entry(event_json: bytes = b'{"id": "e-1"}') -> Entry:
    return Entry(Origin.NEW, "1-0", event_json, stored_ms=0, after_ms=0, attempts=0, order_key="")


def test_script_keys_come_in_the_order_the_lua_names_them() -> None:
    names = re.search(r"^local (K_\w+(?:, K_\w+)*) =", scripts.read("_cursor_keys.lua"), re.M)
    assert names is not None
    suffixes = {
        "K_STREAM": ":events",
        "K_RETRY": ":retry",
        "K_ATTEMPTS": ":attempts",
        "K_INFLIGHT": ":inflight",
        "K_RATE": ":rate",
        "K_ORDER": ":order",
        "K_PARKED": ":parked",
        "K_HELD": ":held",
        "K_DLQ": ":dlq",
        "K_STATE": ":state",
        "K_REPLAY": ":replay",
        "K_DELAYED": ":delayed",
        "K_OWNERS": ":replay-owner",
        "K_RUNS": ":replay-runs",
        "K_LOG": ":log",
        "K_REPLAY_DLQ": ":replay-dlq",
        "K_LEASED": ":replay-leased",
        "K_DELAYED_HELD": ":delayed-held",
    }
    order = names.group(1).split(", ")
    assert sorted(order) == sorted(suffixes)
    for name, key in zip(order, script_keys(ROUTE), strict=True):
        assert key.endswith(suffixes[name]), (name, key)


def test_an_unreadable_stored_event_is_dead_lettered_as_unreadable_not_expired() -> None:
    for stored in (b"not json", b"[1, 2]", b'{"source": "no id"}'):
        done = stored_event(entry(stored))
        assert isinstance(done, Done)
        assert done.verdict is Verdict.UNREADABLE
        assert done.outcome.op is Op.DEAD
        assert done.outcome.message.startswith("stored event is unreadable")


def test_a_readable_stored_event_is_returned_as_json() -> None:
    assert stored_event(entry()) == {"id": "e-1"}


def test_a_batch_counts_unreadable_apart_from_dead_letters() -> None:
    failure = Failure("timeout", None, "timed out")
    batch = [
        Done(Outcome(Op.OK, entry()), Verdict.DELIVERED),
        Done(Outcome(Op.OK, entry()), Verdict.FILTERED),
        Done(Outcome(Op.RETRY, entry()), Verdict.RETRIED, failure),
        Done(Outcome(Op.DEAD, entry()), Verdict.DEAD_ANSWERED),
        Done(Outcome(Op.DEAD, entry()), Verdict.DEAD_FAILED, failure),
        Done(Outcome(Op.DEAD, entry()), Verdict.EXPIRED),
        Done(Outcome(Op.DEAD, entry(b"?")), Verdict.UNREADABLE),
    ]
    counts = tally(batch)
    assert (counts.delivered, counts.filtered, counts.retried) == (1, 1, 1)
    assert (counts.dead_lettered, counts.unreadable) == (3, 1)
    # Only answers and failed attempts move the consecutive-failure count.
    assert (counts.answered, counts.failed) == (2, 2)
    assert counts.last_failure is failure


def test_outcome_codes_are_the_strings_the_scripts_use() -> None:
    settle = scripts.read("cursor_settle.lua")
    fetch = scripts.read("cursor_fetch.lua")
    for op in Op:
        assert f"'{op}'" in settle or op is Op.OK
    for origin in Origin:
        assert f"'{origin}'" in fetch
    for status in FetchStatus:
        assert f"{{'{status}'," in fetch
