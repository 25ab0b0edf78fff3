"""The pgoutput decoder, against messages laid out as PostgreSQL's
"Logical Replication Message Formats" documents them."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest

from tidings.sources.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    DecodeError,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Relation,
    Truncate,
    Type,
    Update,
    decode,
    format_lsn,
    parse_lsn,
)


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def tuple_data(*values: object) -> bytes:
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED:
            out += b"u"
        elif isinstance(value, bytes):
            out += b"b" + struct.pack("!i", len(value)) + value
        else:
            raw = str(value).encode()
            out += b"t" + struct.pack("!i", len(raw)) + raw
    return out


# 2024-05-01 12:00:00 UTC in microseconds since 2000-01-01.
NOON_US = (
    int((datetime(2024, 5, 1, 12, tzinfo=UTC) - datetime(2000, 1, 1, tzinfo=UTC)).total_seconds())
    * 1_000_000
)


def test_begin_carries_commit_lsn_time_and_xid() -> None:
    message = decode(b"B" + struct.pack("!QqI", 0x16B3748, NOON_US, 731))
    assert message == Begin(0x16B3748, datetime(2024, 5, 1, 12, tzinfo=UTC), 731)


def test_commit_carries_end_lsn_for_resuming() -> None:
    message = decode(b"C" + struct.pack("!BQQq", 0, 0x100, 0x138, NOON_US))
    assert isinstance(message, Commit)
    assert (message.commit_lsn, message.end_lsn) == (0x100, 0x138)
    assert message.commit_time == datetime(2024, 5, 1, 12, tzinfo=UTC)


def test_relation_lists_columns_with_types_and_key_flags() -> None:
    body = struct.pack("!I", 16384) + cstr("public") + cstr("users") + b"d" + struct.pack("!h", 2)
    body += b"\x01" + cstr("id") + struct.pack("!Ii", 23, -1)
    body += b"\x00" + cstr("email") + struct.pack("!Ii", 1043, 259)
    message = decode(b"R" + body)
    assert isinstance(message, Relation)
    assert (message.relation_id, message.namespace, message.name) == (16384, "public", "users")
    assert message.replica_identity == "d"
    assert [(c.name, c.type_oid, c.type_modifier, c.is_key) for c in message.columns] == [
        ("id", 23, -1, True),
        ("email", 1043, 259, False),
    ]


def test_relation_in_pg_catalog_is_sent_with_an_empty_namespace() -> None:
    body = struct.pack("!I", 1) + cstr("") + cstr("t") + b"n" + struct.pack("!h", 0)
    message = decode(b"R" + body)
    assert isinstance(message, Relation) and message.namespace == "pg_catalog"


def test_type_message_names_a_user_type() -> None:
    message = decode(b"Y" + struct.pack("!I", 90001) + cstr("public") + cstr("mood"))
    assert message == Type(90001, "public", "mood")


def test_insert_distinguishes_null_from_text() -> None:
    message = decode(b"I" + struct.pack("!I", 7) + b"N" + tuple_data("1", None, ""))
    assert message == Insert(7, ("1", None, ""))


def test_update_without_old_tuple() -> None:
    message = decode(b"U" + struct.pack("!I", 7) + b"N" + tuple_data("1", "x"))
    assert message == Update(7, None, None, ("1", "x"))


def test_update_with_full_old_row_and_unchanged_toast() -> None:
    payload = (
        b"U"
        + struct.pack("!I", 7)
        + b"O"
        + tuple_data("1", "big")
        + b"N"
        + tuple_data("1", UNCHANGED)
    )
    message = decode(payload)
    assert isinstance(message, Update)
    assert message.old_kind == "O"
    assert message.old == ("1", "big")
    assert message.new[1] is UNCHANGED
    assert message.new[1] is not None


def test_update_with_old_key_when_the_key_changed() -> None:
    payload = (
        b"U" + struct.pack("!I", 7) + b"K" + tuple_data("1", None) + b"N" + tuple_data("2", "x")
    )
    message = decode(payload)
    assert isinstance(message, Update) and message.old_kind == "K" and message.old == ("1", None)


def test_delete_with_key_only() -> None:
    message = decode(b"D" + struct.pack("!I", 7) + b"K" + tuple_data("5", None))
    assert message == Delete(7, ("5", None), "K")


def test_truncate_lists_relations_and_options() -> None:
    message = decode(b"T" + struct.pack("!ib", 2, 3) + struct.pack("!II", 7, 8))
    assert message == Truncate((7, 8), cascade=True, restart_identity=True)


def test_origin_and_logical_message() -> None:
    assert decode(b"O" + struct.pack("!Q", 9) + cstr("node_a")) == Origin(9, "node_a")
    payload = b"M" + b"\x01" + struct.pack("!Q", 12) + cstr("app") + struct.pack("!i", 2) + b"hi"
    assert decode(payload) == LogicalMessage(True, 12, "app", b"hi")


def test_binary_values_stay_bytes() -> None:
    message = decode(b"I" + struct.pack("!I", 7) + b"N" + tuple_data(b"\x00\x01"))
    assert isinstance(message, Insert) and message.new == (b"\x00\x01",)


def test_text_is_decoded_with_the_database_encoding() -> None:
    raw = "é".encode("latin-1")
    payload = (
        b"I"
        + struct.pack("!I", 7)
        + b"N"
        + struct.pack("!h", 1)
        + b"t"
        + struct.pack("!i", 1)
        + raw
    )
    assert Decoder("latin-1").decode(payload) == Insert(7, ("é",))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"Z123",
        b"I\x00\x00",
        b"I" + struct.pack("!I", 7) + b"X",
        b"D" + struct.pack("!I", 7) + b"Q",
    ],
)
def test_malformed_messages_raise_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(payload)


def test_lsn_text_round_trips() -> None:
    assert format_lsn(0x16B3748) == "0/16B3748"
    assert format_lsn((3 << 32) | 0xA) == "3/A"
    assert parse_lsn("3/A") == (3 << 32) | 0xA
    with pytest.raises(ValueError):
        parse_lsn("123")
