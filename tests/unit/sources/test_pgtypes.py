"""Column values from their PostgreSQL text form to JSON, by type OID."""

from __future__ import annotations

import base64

import pytest

from tidings.sources.pgoutput import UNCHANGED, Column
from tidings.sources.pgtypes import (
    ArrayParseError,
    TypeRegistry,
    TypeRow,
    decode_row,
    parse_array,
)


@pytest.fixture
def types() -> TypeRegistry:
    return TypeRegistry()


@pytest.mark.parametrize(
    ("oid", "text", "expected"),
    [
        (16, "t", True),
        (16, "f", False),
        (21, "-7", -7),
        (23, "42", 42),
        (20, "9223372036854775807", 9223372036854775807),
        (701, "1.5", 1.5),
        (700, "NaN", "NaN"),
        (701, "-Infinity", "-Infinity"),
        (1700, "12345678901234567890.000000001", "12345678901234567890.000000001"),
        (1700, "NaN", "NaN"),
        (25, "hello", "hello"),
        (2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (114, '{"a": [1, 2]}', {"a": [1, 2]}),
        (3802, '{"b": null}', {"b": None}),
        (3802, '"just a string"', "just a string"),
        (1082, "2024-05-01", "2024-05-01"),
        (1083, "12:30:00.25", "12:30:00.25"),
        (1266, "12:30:00+02", "12:30:00+02:00"),
        (1114, "2024-05-01 12:30:00.5", "2024-05-01T12:30:00.5"),
        (1114, "infinity", "infinity"),
        (1184, "2024-05-01 12:30:00+00", "2024-05-01T12:30:00Z"),
        (1184, "2024-05-01 12:30:00.123456+05:30", "2024-05-01T12:30:00.123456+05:30"),
        (1184, "-infinity", "-infinity"),
        (1186, "P1Y2M3DT4H5M6S", "P1Y2M3DT4H5M6S"),
        (999999, "(1,2)", "(1,2)"),  # unknown type: text as printed
    ],
)
def test_scalar_types_map_to_json(
    types: TypeRegistry, oid: int, text: str, expected: object
) -> None:
    assert types.to_json(oid, text) == expected


def test_bytea_hex_and_escape_forms_become_base64(types: TypeRegistry) -> None:
    assert types.to_json(17, "\\x00ff41") == base64.b64encode(b"\x00\xffA").decode()
    assert types.to_json(17, "a\\000\\\\b") == base64.b64encode(b"a\x00\\b").decode()


@pytest.mark.parametrize(
    ("oid", "text", "expected"),
    [
        (1007, "{1,2,NULL,4}", [1, 2, None, 4]),
        (1007, "{}", []),
        (1007, "{{1,2},{3,4}}", [[1, 2], [3, 4]]),
        (1007, "[0:1]={7,8}", [7, 8]),
        (
            1009,
            '{"a b","",NULL,"NULL","q\\"uote","back\\\\slash",plain}',
            ["a b", "", None, "NULL", 'q"uote', "back\\slash", "plain"],
        ),
        (1000, "{t,f}", [True, False]),
        (1231, "{1.10,NaN}", ["1.10", "NaN"]),
        (3807, '{"{\\"a\\": 1}","[2]"}', [{"a": 1}, [2]]),
        (1185, '{"2024-05-01 12:30:00+00"}', ["2024-05-01T12:30:00Z"]),
    ],
)
def test_arrays_become_json_arrays_of_converted_elements(
    types: TypeRegistry, oid: int, text: str, expected: object
) -> None:
    assert types.to_json(oid, text) == expected


def test_box_arrays_use_their_own_delimiter() -> None:
    assert parse_array("{(1,1),(0,0);(2,2),(1,1)}", delimiter=";") == ["(1,1),(0,0)", "(2,2),(1,1)"]


def test_unterminated_array_is_an_error() -> None:
    with pytest.raises(ArrayParseError):
        parse_array("{1,2")


def test_user_types_are_learnt_from_pg_type(types: TypeRegistry) -> None:
    # an enum, an array of it, a domain over int4 and an array of that domain
    assert types.unknown([23, 90001, 90002, 90003, 90004]) == [90001, 90002, 90003, 90004]
    still_needed = types.learn(
        [
            TypeRow(90001, "e", "E", 0, 0, ","),
            TypeRow(90002, "b", "A", 90001, 0, ","),
            TypeRow(90003, "d", "N", 0, 23, ","),
            TypeRow(90004, "b", "A", 90003, 0, ","),
        ]
    )
    assert still_needed == []
    assert types.unknown([90001, 90002, 90003, 90004]) == []
    assert types.to_json(90002, "{happy,sad}") == ["happy", "sad"]
    assert types.to_json(90003, "12") == 12
    assert types.to_json(90004, "{1,NULL}") == [1, None]


def test_learning_reports_missing_element_types(types: TypeRegistry) -> None:
    assert types.learn([TypeRow(90010, "b", "A", 90011, 0, ",")]) == [90011]
    assert types.learn([TypeRow(90011, "d", "N", 0, 16, ",")]) == []
    assert types.to_json(90010, "{t}") == [True]


def test_rows_keep_null_apart_from_unchanged_toast(types: TypeRegistry) -> None:
    columns = [
        Column("id", 23, -1, True),
        Column("bio", 25, -1, False),
        Column("doc", 3802, -1, False),
    ]
    row, unchanged = decode_row(types, columns, ("1", None, UNCHANGED))
    assert row == {"id": 1, "bio": None}
    assert unchanged == ["doc"]
