"""Redis answers with bytes or str depending on the client's decode setting
(and Lua replies mix both); one helper turns either into text."""

from __future__ import annotations

from typing import overload


@overload
def text(value: bytes | str | int | float) -> str: ...
@overload
def text(value: None) -> None: ...


def text(value: bytes | str | int | float | None) -> str | None:
    """`value` as a str: bytes decoded as UTF-8, numbers formatted, None kept."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    return value if isinstance(value, str) else str(value)
