"""A Trigger's filter, compiled once per route version and applied to every event.

The event is its stored structured-mode JSON object (attributes and
extensions at the top level, `data` inline). Parts are ANDed, cheapest first:
types, exact attributes, prefixes, then the CEL expression (the Rust-backed
`cel` module, ~10 µs an event). An expression that fails on an event (a
missing field, a type mismatch) does not match it: one odd event must not stop
a Trigger.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import cel

from tidings.api.routes import CompiledFilter

log = logging.getLogger(__name__)


class Filter:
    def __init__(self, spec: CompiledFilter) -> None:
        self.types = frozenset(spec.types)
        self.attributes = dict(spec.attributes)
        self.prefix = dict(spec.prefix)
        self.expression = spec.expression
        self._program = cel.compile(spec.expression) if spec.expression else None
        # The binding converts the whole context on every call (~1 µs per field):
        # hand it only the attributes the expression names, when that is clear.
        self._needs = _referenced_attributes(spec.expression) if spec.expression else None
        self.matches_everything = not (
            self.types or self.attributes or self.prefix or self._program
        )
        self._warned = False

    def __call__(self, event: dict[str, Any]) -> bool:
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
            try:
                if self._needs is not None:
                    event = {name: event[name] for name in self._needs if name in event}
                return self._program.execute({"event": event}) is True
            except Exception as error:  # the binding raises KeyError, TypeError, ValueError...
                if not self._warned:
                    self._warned = True
                    log.info(
                        "filter expression %r failed on event %s (%s); such events do not match",
                        self.expression,
                        event.get("id"),
                        error,
                    )
                return False
        return True

    def explain(self, event: dict[str, Any]) -> str | None:
        """None when `event` passes; else the clause that drops it, named as in the
        Trigger's spec (`tidings trace`). Off the hot path: `__call__` is the fast one."""
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
            except Exception as error:
                return f"filter.expression: {self.expression!r} failed: {error}"
            if result is not True:
                return f"filter.expression: {self.expression!r} is {result!r}"
        return None


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
