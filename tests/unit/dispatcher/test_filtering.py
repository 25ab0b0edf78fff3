"""Trigger filters: every part optional, all parts ANDed."""

from __future__ import annotations

from typing import Any

import cel
import pytest

from tidings.api.routes import CompiledFilter
from tidings.dispatcher.filtering import (
    REASONS,
    Filter,
    FilterCounts,
    FilterFailed,
    failure_reason,
)

INSERT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "1",
    "source": "/apis/tidings.dev/v1alpha1/namespaces/shop/eventsources/users-db",
    "type": "dev.tidings.postgres.insert",
    "subject": "public.users",
    "tenant": "acme",
    "data": {"new": {"plan": "pro", "seats": 3}},
}


def matches(event: dict[str, Any] = INSERT, **spec: Any) -> bool:
    return Filter(CompiledFilter(**spec))(event)


def test_empty_filter_matches_every_event() -> None:
    assert matches()


def test_types_accept_any_listed_type_exactly() -> None:
    assert matches(types=["x", "dev.tidings.postgres.insert"])
    assert not matches(types=["dev.tidings.postgres"])


def test_attributes_must_be_equal_including_extensions() -> None:
    assert matches(attributes={"subject": "public.users", "tenant": "acme"})
    assert not matches(attributes={"subject": "public.orders"})
    assert not matches(attributes={"missing": "x"})


def test_prefix_matches_the_start_of_an_attribute() -> None:
    assert matches(prefix={"type": "dev.tidings."})
    assert not matches(prefix={"type": "com.shop."})


def test_cel_expression_sees_the_event_and_its_data() -> None:
    assert matches(expression='event.data.new.plan == "pro" && event.data.new.seats > 2')
    assert not matches(expression='event.data.new.plan == "free"')


def test_an_absent_field_key_or_index_is_a_no_match_not_an_error() -> None:
    # The documented no-match class (docs/filters.md): the event lacks what is read.
    for expression in (
        "event.data.old.plan == 'pro'",
        "event.missing == 'x'",
        'event["missing"] == "x"',
        "event.data.new.seats > 2 && event.data.items[3] == 1",
    ):
        filter_ = Filter(CompiledFilter(expression=expression))
        assert filter_(INSERT) is False, expression
        assert filter_.take_counts() == FilterCounts(checked=1), expression


def failure(expression: str) -> FilterFailed:
    with pytest.raises(FilterFailed) as raised:
        Filter(CompiledFilter(expression=expression))(INSERT)
    return raised.value


def test_other_evaluation_errors_raise_with_their_reason() -> None:
    assert failure("event.data.new.plan > 3").reason == "type"
    assert failure("event.subject.table == 'users'").reason == "type"
    assert failure("int(event.data.new.plan) == 1").reason == "function"
    assert failure("event.data.new.seats / 0 == 1").reason == "arithmetic"
    assert failure("event.data.new.seats * 9223372036854775807 > 0").reason == "arithmetic"
    returned = failure("event.data.new.plan")
    assert returned.reason == "result"
    assert "returned a str, not a bool" in returned.message


def test_the_filter_counts_evaluations_and_failures_until_taken() -> None:
    filter_ = Filter(CompiledFilter(types=["x.other"], expression="event.data.new.seats > 'a'"))
    assert filter_({**INSERT, "type": "dev.tidings.postgres.insert"}) is False  # types first
    filter_ = Filter(CompiledFilter(expression="event.data.new.seats > 'a'"))
    for _ in range(3):
        with pytest.raises(FilterFailed):
            filter_(INSERT)
    assert filter_(INSERT | {"data": {}}) is False
    counts = filter_.take_counts()
    assert (counts.checked, counts.failed, counts.last_reason) == (4, 3, "type")
    assert counts.last_time.endswith("Z") and "No such overload" in counts.last_message
    assert filter_.take_counts() == FilterCounts()
    filter_.add_counts(counts)  # not published: counted again next time
    assert filter_.take_counts() == counts


def test_failure_reasons_are_the_bounded_metric_labels() -> None:
    assert failure_reason(TypeError("x")) in REASONS
    assert failure_reason(ZeroDivisionError()) == "arithmetic"
    assert failure_reason(RuntimeError("Function 'int' error")) == "function"
    assert failure_reason(ValueError("?")) == "other"


def test_all_parts_are_anded() -> None:
    assert not matches(types=["dev.tidings.postgres.insert"], attributes={"tenant": "other"})
    assert matches(
        types=["dev.tidings.postgres.insert"],
        prefix={"subject": "public."},
        expression="event.data.new.seats == 3",
    )


def test_narrowing_the_cel_context_never_changes_the_answer() -> None:
    # The filter hands CEL only the attributes an expression names; any other use
    # of `event` (indexing, has(), whole-object functions) gets the whole event.
    for expression in (
        'has(event.subject) && event.subject == "public.users"',
        'event["tenant"] == "acme"',
        "size(event) > 3",
        '"event.tenant" != event.tenant',
        'event.data.new.plan == "pro" && event.type.startsWith("dev.")',
        "has(event.missing)",
    ):
        narrowed = Filter(CompiledFilter(expression=expression))

        whole = cel.compile(expression)
        try:
            result = whole.execute({"event": INSERT})
            expected = str(result) if isinstance(result, bool) else "error"
        except (KeyError, IndexError):
            expected = "False"
        except Exception:
            expected = "error"
        try:
            answer = str(narrowed(INSERT))
        except FilterFailed:
            answer = "error"
        assert answer == expected, expression


def test_explain_names_an_absent_field_and_leaves_a_failure_to_the_dead_letter() -> None:
    filter_ = Filter(CompiledFilter(expression="event.data.old.plan == 'pro'"))
    assert "event.data.old.plan" in (filter_.explain(INSERT) or "")
    failing = Filter(CompiledFilter(expression="event.data.new.plan > 3"))
    assert failing.explain(INSERT) is None  # not filtered out: dead-lettered (attempt log)
    assert failing.take_counts() == FilterCounts()  # explaining counts nothing
