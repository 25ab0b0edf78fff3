"""A Trigger's filter, compiled once per route version and applied to every event.

The event is its stored structured-mode JSON object (attributes and
extensions at the top level, `data` inline). Parts are ANDed, cheapest first:
types, exact attributes, prefixes, then the CEL expression (the Rust-backed
`cel` module, ~10 µs an event).

An expression can fail on an event (docs/filters.md has the table):

- it reads something the event does not have — a missing attribute or field,
  a key not in a map, an index past the end of a list: the event does not
  match. This is the documented no-match class (CEL's `has()` says the same
  explicitly); such events are filtered out like any other non-match;
- any other failure — a type mismatch (`"pro" > 3`), a function refusing its
  argument (`int("x")`), division by zero, an overflow, a result that is not a
  boolean — raises FilterFailed with a short `reason`. The dispatcher
  dead-letters that event (never drops it silently, never delivers what the
  filter could not approve), counts it per Trigger and reports it in status.

The filter counts the events its expression evaluated and the failures;
the dispatcher takes the counts (`take_counts`) when it publishes the
Trigger's state.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from tidings.api.events import now_rfc3339
from tidings.api.expressions import compile_expression
from tidings.api.routes import CompiledFilter

log = logging.getLogger(__name__)

# Exceptions the binding raises for a value that is not there: no match.
ABSENT = (KeyError, IndexError)
# Every other failure, by the reason it is counted under (bounded label values).
REASONS: tuple[str, ...] = ("type", "function", "arithmetic", "result", "other")


class FilterFailed(Exception):
    """The expression failed on this event for a reason other than an absent value."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def failure_reason(error: Exception) -> str:
    """The REASONS value an evaluation error is counted under."""
    if isinstance(error, TypeError):
        return "type"  # CEL's "no such overload": the operands' types do not fit
    if isinstance(error, ArithmeticError):  # division by zero, overflow
        return "arithmetic"
    if isinstance(error, RuntimeError):
        return "function"  # a function refused its argument, or does not exist for it
    return "other"


@dataclass
class FilterCounts:
    """Evaluations of the expression and its failures since the last `take_counts`."""

    checked: int = 0
    failed: int = 0
    last_time: str = ""  # RFC 3339
    last_reason: str = ""
    last_message: str = ""


class Filter:
    def __init__(self, spec: CompiledFilter) -> None:
        self.types = frozenset(spec.types)
        self.attributes = dict(spec.attributes)
        self.prefix = dict(spec.prefix)
        self.expression = spec.expression
        self._program = compile_expression(spec.expression) if spec.expression else None
        # The binding converts the whole context on every call (~1 µs per field):
        # hand it only the attributes the expression names, when that is clear.
        self._needs = _referenced_attributes(spec.expression) if spec.expression else None
        self.matches_everything = not (
            self.types or self.attributes or self.prefix or self._program
        )
        self.counts = FilterCounts()
        self._warned = False

    def __call__(self, event: dict[str, Any]) -> bool:
        """Whether `event` matches; FilterFailed when the expression fails on it."""
        if self.matches_everything:
            return True
        if self.types and event.get("type") not in self.types:
            return False
        for name, value in self.attributes.items():
            if _attribute(event, name) != value:
                return False
        for name, start in self.prefix.items():
            actual = _attribute(event, name)
            if actual is None or not actual.startswith(start):
                return False
        if self._program is not None:
            return self._evaluate(event)
        return True

    def explain(self, event: dict[str, Any]) -> str | None:
        """None when `event` passes; else the clause that drops it, named as in the
        Trigger's spec (`tidings trace`). Off the hot path: `__call__` is the fast one,
        and this one counts nothing."""
        if self.types and event.get("type") not in self.types:
            wanted = ", ".join(sorted(self.types))
            return f"filter.types: type {event.get('type')!r} is not one of [{wanted}]"
        for name, value in self.attributes.items():
            actual = _attribute(event, name)
            if actual != value:
                return f"filter.attributes.{name}: {actual!r} is not {value!r}"
        for name, start in self.prefix.items():
            actual = _attribute(event, name)
            if actual is None or not actual.startswith(start):
                return f"filter.prefix.{name}: {actual!r} does not start with {start!r}"
        if self._program is not None:
            try:
                result = self._program.execute({"event": event})
            except ABSENT as error:
                return f"filter.expression: {self.expression!r} reads {error} the event lacks"
            except Exception:
                # Not filtered out: dead-lettered, which the attempt log tells.
                return None
            if result is not True:
                return f"filter.expression: {self.expression!r} is {result!r}"
        return None

    def _evaluate(self, event: dict[str, Any]) -> bool:
        self.counts.checked += 1
        context = event
        if self._needs is not None:
            context = {name: event[name] for name in self._needs if name in event}
        try:
            result = self._program.execute({"event": context})  # type: ignore[union-attr]
        except ABSENT:
            return False
        except Exception as error:  # the binding raises TypeError, RuntimeError, ...
            raise self._failed(event, failure_reason(error), str(error)) from None
        if isinstance(result, bool):
            return result
        kind = type(result).__name__
        raise self._failed(
            event,
            "result",
            f"the expression returned a {kind}, not a bool; compare it (e.g. == or !=)",
        )

    def _failed(self, event: dict[str, Any], reason: str, message: str) -> FilterFailed:
        self.counts.failed += 1
        self.counts.last_time = now_rfc3339()
        self.counts.last_reason, self.counts.last_message = reason, message[:500]
        if not self._warned:
            self._warned = True  # once per filter version: status and metrics count the rest
            log.warning(
                "filter expression %r failed on event %s (%s: %s); such events are "
                "dead-lettered (docs/filters.md)",
                self.expression,
                event.get("id"),
                reason,
                message,
            )
        return FilterFailed(reason, message[:500])

    def add_counts(self, counts: FilterCounts) -> None:
        """Count `counts` again (they were taken but could not be published)."""
        mine = self.counts
        mine.checked += counts.checked
        mine.failed += counts.failed
        if counts.failed and not mine.last_time:
            mine.last_time, mine.last_reason = counts.last_time, counts.last_reason
            mine.last_message = counts.last_message

    def take_counts(self) -> FilterCounts:
        """The counts since the last call, and start counting afresh."""
        counts, self.counts = self.counts, FilterCounts()
        return counts


_EVENT_FIELD = re.compile(r"\bevent\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")
_EVENT_ANY = re.compile(r"\bevent\b")


def _referenced_attributes(expression: str) -> frozenset[str] | None:
    """The top-level attributes `expression` reads as `event.NAME`, or None when it
    uses `event` any other way (`event["x"]`, `has(event)`...), or strings could mislead."""
    if '"' in expression or "'" in expression:
        # A string literal could contain "event" text; strip literals before counting.
        stripped = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expression)
    else:
        stripped = expression
    names = _EVENT_FIELD.findall(stripped)
    if len(names) != len(_EVENT_ANY.findall(stripped)):
        return None
    return frozenset(names)


def _attribute(event: dict[str, Any], name: str) -> str | None:
    value = event.get(name)
    if value is None or isinstance(value, dict | list):
        return None
    return value if isinstance(value, str) else str(value)
