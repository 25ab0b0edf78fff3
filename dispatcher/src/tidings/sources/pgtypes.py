"""PostgreSQL column values (pgoutput text form) to JSON values, by column type.

The mapping (docs/sources.md repeats it for users):

| PostgreSQL                         | JSON                                              |
|------------------------------------|---------------------------------------------------|
| boolean                            | true / false                                      |
| smallint, integer, bigint, oid     | number                                            |
| real, double precision             | number; NaN / Infinity / -Infinity as strings     |
| numeric, money                     | string, exactly as PostgreSQL prints it           |
| json, jsonb                        | the JSON value itself                             |
| timestamp                          | "2024-05-01T12:30:00.5" (ISO 8601, no offset)      |
| timestamptz                        | "2024-05-01T12:30:00.5Z" (ISO 8601, UTC)            |
| date, time                         | "2024-05-01", "12:30:00" (ISO 8601)              |
| timetz                             | "12:30:00+02:00"                                  |
| interval                           | "P1DT2H" (ISO 8601 duration)                      |
| bytea                              | base64 string                                     |
| arrays of any of these             | JSON arrays (nested for multi-dimensional)        |
| domains                            | as their base type                                |
| anything else (text, uuid, enums…) | string, as PostgreSQL prints it                   |

Infinite timestamps and dates stay "infinity" / "-infinity"; BC dates stay as
PostgreSQL prints them. The replication connection pins DateStyle=ISO,
TimeZone=UTC, IntervalStyle=iso_8601 and bytea_output=hex, so the text forms
parsed here do not depend on the server's defaults.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tidings.sources.pgoutput import UNCHANGED, Column, Value

Converter = Callable[[str], Any]

# Session settings that make the server's text output match the parsers below.
SESSION_OPTIONS = (
    "-c DateStyle=ISO,MDY -c TimeZone=UTC -c IntervalStyle=iso_8601 "
    "-c bytea_output=hex -c extra_float_digits=1"
)


def _text(value: str) -> str:
    return value


def _bool(value: str) -> bool:
    return value == "t"


def _float(value: str) -> float | str:
    # JSON has no NaN or infinities; keep PostgreSQL's spelling for them.
    if value in ("NaN", "Infinity", "-Infinity"):
        return value
    return float(value)


_OFFSET = re.compile(r"([+-])(\d\d)(?::?(\d\d))?(?::?(\d\d))?$")
_TIMESTAMP = re.compile(r"^\d{4,}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?([+-]\d\d(:\d\d){0,2})?$")


def _offset(text: str) -> str:
    """`+00` -> `Z`, `+02` -> `+02:00`; historic second offsets are kept."""
    match = _OFFSET.search(text)
    if match is None:
        return text
    sign, hours, minutes, seconds = match.groups()
    if seconds:
        return text
    if hours == "00" and (minutes or "00") == "00":
        suffix = "Z"
    else:
        suffix = f"{sign}{hours}:{minutes or '00'}"
    return text[: match.start()] + suffix


def _timestamp(value: str) -> str:
    if not _TIMESTAMP.match(value):
        return value  # infinity, -infinity, BC dates
    return value.replace(" ", "T", 1)


def _timestamptz(value: str) -> str:
    if not _TIMESTAMP.match(value):
        return value
    return _offset(value.replace(" ", "T", 1))


def _timetz(value: str) -> str:
    return _offset(value)


def _json(value: str) -> Any:
    return json.loads(value)


_ESCAPED_OCTET = re.compile(rb"\\([0-7]{3}|\\)")


def _bytea(value: str) -> str:
    if value.startswith("\\x"):
        raw = bytes.fromhex(value[2:])
    else:  # bytea_output=escape: printable bytes as is, others as \ooo, \ as \\
        raw = _ESCAPED_OCTET.sub(
            lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1), 8)]),
            value.encode("latin-1"),
        )
    return base64.b64encode(raw).decode()


def _int(value: str) -> int:
    return int(value)


# Built-in type OIDs (pg_type.dat); stable across PostgreSQL versions.
SCALARS: dict[int, Converter] = {
    16: _bool,
    17: _bytea,
    20: _int,  # int8
    21: _int,  # int2
    23: _int,  # int4
    26: _int,  # oid
    114: _json,
    700: _float,
    701: _float,
    1114: _timestamp,
    1184: _timestamptz,
    1266: _timetz,
    3802: _json,  # jsonb
}
# Types printed as text on purpose: numeric keeps its precision as a string.
TEXT_TYPES = (18, 19, 25, 1042, 1043, 1700, 790, 1082, 1083, 1186, 2950, 869, 650, 829, 142)
# array OID -> element OID
ARRAYS: dict[int, int] = {
    1000: 16,
    1001: 17,
    1002: 18,
    1003: 19,
    1005: 21,
    1007: 23,
    1009: 25,
    1014: 1042,
    1015: 1043,
    1016: 20,
    1021: 700,
    1022: 701,
    1028: 26,
    791: 790,
    199: 114,
    143: 142,
    1182: 1082,
    1183: 1083,
    1115: 1114,
    1185: 1184,
    1187: 1186,
    1270: 1266,
    1231: 1700,
    2951: 2950,
    3807: 3802,
    1041: 869,
    651: 650,
}


class ArrayParseError(ValueError):
    pass


def parse_array(text: str, element: Converter = _text, delimiter: str = ",") -> list[Any]:
    """An array's text form (`{1,2,NULL}`, `{{"a b",c},{d,e}}`) as nested lists.

    Unquoted NULL is None; quoted elements unescape backslashes. A leading
    dimension decoration (`[0:1]={…}`, non-default lower bounds) is dropped.
    """
    if text.startswith("["):
        text = text[text.index("=") + 1 :]
    if not text.startswith("{"):
        raise ArrayParseError(f"not an array literal: {text[:40]!r}")
    stack: list[list[Any]] = []
    result: list[Any] = []
    pos, end = 0, len(text)
    while pos < end:
        char = text[pos]
        if char == "{":
            new: list[Any] = []
            if stack:
                stack[-1].append(new)
            else:
                result = new
            stack.append(new)
            pos += 1
        elif char == "}":
            stack.pop()
            pos += 1
        elif char == delimiter or char.isspace():
            pos += 1
        elif char == '"':
            pos += 1
            chunk: list[str] = []
            while text[pos] != '"':
                if text[pos] == "\\":
                    pos += 1
                chunk.append(text[pos])
                pos += 1
            pos += 1
            stack[-1].append(element("".join(chunk)))
        else:
            start = pos
            while pos < end and text[pos] not in (delimiter, "}"):
                pos += 1
            raw = text[start:pos].strip()
            stack[-1].append(None if raw == "NULL" else element(raw))
    if stack:
        raise ArrayParseError(f"unterminated array literal: {text[:40]!r}")
    return result


def _array_of(element: Converter, delimiter: str = ",") -> Converter:
    def convert(value: str) -> list[Any]:
        return parse_array(value, element, delimiter)

    return convert


@dataclass(frozen=True)
class TypeRow:
    """What pg_type says about a type tidings does not know built in."""

    oid: int
    typtype: str  # b base, d domain, e enum, c composite, r range, m multirange
    category: str  # A for arrays
    element: int  # element OID for arrays, else 0
    base: int  # base OID for domains, else 0
    delimiter: str


TYPE_QUERY = (
    "SELECT oid::int, typtype::text, typcategory::text, typelem::int, typbasetype::int, "
    "typdelim::text FROM pg_catalog.pg_type WHERE oid = ANY(%s)"
)


class TypeRegistry:
    """Converters by type OID: the built-ins, plus user types learnt from pg_type."""

    def __init__(self) -> None:
        self._converters: dict[int, Converter] = dict(SCALARS)
        for oid in TEXT_TYPES:
            self._converters[oid] = _text
        for array, element in ARRAYS.items():
            self._converters[array] = _array_of(self._converters.get(element, _text))
        self._rows: dict[int, TypeRow] = {}

    def unknown(self, oids: Iterable[int]) -> list[int]:
        """OIDs with no converter yet (look them up, then `learn`)."""
        return sorted({oid for oid in oids if oid not in self._converters})

    def learn(self, rows: Iterable[TypeRow]) -> list[int]:
        """Record pg_type rows; returns OIDs still needed (array elements, domain bases)."""
        for row in rows:
            self._rows[row.oid] = row
        needed: set[int] = set()
        for oid in list(self._rows):
            if oid in self._converters:
                continue
            converter = self._resolve(oid, needed)
            if converter is not None:
                self._converters[oid] = converter
        return sorted(needed)

    def _resolve(self, oid: int, needed: set[int]) -> Converter | None:
        row = self._rows[oid]
        if row.typtype == "d":
            target = row.base
        elif row.category == "A" and row.element:
            target = row.element
        else:
            return _text  # enums, composites, ranges, other base types: text
        inner = self._converters.get(target)
        if inner is None:
            if target in self._rows:
                inner = self._resolve(target, needed)
            if inner is None:
                needed.add(target)
                return None
        if row.typtype == "d":
            return inner
        element_row = self._rows.get(target)
        return _array_of(inner, element_row.delimiter if element_row else ",")

    def converter(self, oid: int) -> Converter:
        return self._converters.get(oid, _text)

    def to_json(self, oid: int, value: str | bytes) -> Any:
        if isinstance(value, bytes):  # binary format: not decoded per type
            return base64.b64encode(value).decode()
        return self._converters.get(oid, _text)(value)


def decode_row(
    registry: TypeRegistry, columns: Sequence[Column], values: Sequence[Value]
) -> tuple[dict[str, Any], list[str]]:
    """A row as {column: JSON value}, plus the names of unchanged TOASTed columns
    (left out of the dict: the server did not send them)."""
    row: dict[str, Any] = {}
    unchanged: list[str] = []
    converters = registry._converters
    for column, value in zip(columns, values, strict=True):
        if value is None:
            row[column.name] = None
        elif value is UNCHANGED:
            unchanged.append(column.name)
        elif isinstance(value, str):
            try:
                row[column.name] = converters.get(column.type_oid, _text)(value)
            except (ValueError, IndexError):
                # A text form this mapping does not expect: pass it on as printed
                # rather than stall the whole stream on one value.
                row[column.name] = value
        else:
            row[column.name] = registry.to_json(column.type_oid, value)  # type: ignore[arg-type]
    return row, unchanged
