"""Trigger filters: every part optional, all parts ANDed."""

from __future__ import annotations

from typing import Any

import cel

from tidings.api.routes import CompiledFilter
from tidings.dispatcher.filtering import Filter

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


def test_an_expression_that_fails_on_an_event_does_not_match_it() -> None:
    assert not matches(expression="event.data.old.plan == 'pro'")
    assert not matches(expression="event.data.new.plan > 3")


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
            expected = whole.execute({"event": INSERT}) is True
        except Exception:
            expected = False
        assert narrowed(INSERT) is expected, expression
