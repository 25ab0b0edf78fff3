"""A decoder of the `pgoutput` logical replication protocol (version 1).

`pgoutput` is the output plugin built into PostgreSQL (10+): nothing is
installed in the database. Each XLogData payload of the replication stream is
one message; `decode` turns it into one of the dataclasses below. Reference:
PostgreSQL's "Logical Replication Message Formats".

Column values stay as the server sent them, in text form: `NULL` is None, an
unchanged TOASTed value (an UPDATE that did not touch a large column, the
server does not resend it) is the `UNCHANGED` marker, text is `str`, and
binary-format values (only when the `binary` option is on) are `bytes`.
Turning text into JSON values by column type is tidings.sources.pgtypes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

# Timestamps in the protocol count microseconds from the PostgreSQL epoch.
PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


class _Unchanged:
    """An unchanged TOASTed column: the server did not send its value."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()

Value = str | bytes | None | _Unchanged


class DecodeError(ValueError):
    """A payload that is not a pgoutput message this decoder understands."""


def pg_time(microseconds: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=microseconds)


def format_lsn(lsn: int) -> str:
    """The form PostgreSQL prints an LSN in, e.g. `0/16B3748`."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    if not low:
        raise ValueError(f"{text!r} is not an LSN (expected e.g. 0/16B3748)")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int  # LSN of the transaction's commit record
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int  # the end of the commit record: where a restart resumes
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool  # part of the replica identity


@dataclass(frozen=True, slots=True)
class Relation:
    relation_id: int
    namespace: str
    name: str
    # d = default (primary key), n = nothing, f = full, i = index
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Type:
    """A user-defined type used by a relation (sent before the Relation)."""

    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_id: int
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Update:
    relation_id: int
    # The old row: key columns only ('K', REPLICA IDENTITY DEFAULT/INDEX and the
    # key changed), the whole row ('O', REPLICA IDENTITY FULL), or None.
    old: tuple[Value, ...] | None
    old_kind: str | None
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    relation_id: int
    old: tuple[Value, ...] | None
    old_kind: str | None


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_ids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """pg_logical_emit_message() output (only sent with the `messages` option)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = (
    Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | LogicalMessage
)

_I8 = struct.Struct("!b").unpack_from
_U8 = struct.Struct("!B").unpack_from
_I16 = struct.Struct("!h").unpack_from
_I32 = struct.Struct("!i").unpack_from
_U32 = struct.Struct("!I").unpack_from
_BEGIN = struct.Struct("!QqI").unpack_from
_COMMIT = struct.Struct("!BQQq").unpack_from
_COLUMN_TAIL = struct.Struct("!Ii").unpack_from


class Decoder:
    """Decodes pgoutput messages; `encoding` is the database's (names and text)."""

    def __init__(self, encoding: str = "utf-8") -> None:
        self.encoding = encoding

    def decode(self, payload: bytes | memoryview) -> Message:
        buf = bytes(payload)
        if not buf:
            raise DecodeError("empty pgoutput message")
        try:
            return self._decode(buf)
        except (struct.error, IndexError, UnicodeDecodeError) as error:
            raise DecodeError(f"malformed pgoutput {buf[:1]!r} message: {error}") from None

    def _decode(self, buf: bytes) -> Message:
        tag = buf[0]
        if tag == 0x49:  # 'I'
            (relation_id,) = _U32(buf, 1)
            if buf[5] != 0x4E:  # 'N'
                raise DecodeError(f"Insert: expected a new tuple, got {buf[5:6]!r}")
            new, _ = self._tuple(buf, 6)
            return Insert(relation_id, new)
        if tag == 0x55:  # 'U'
            (relation_id,) = _U32(buf, 1)
            pos = 5
            old: tuple[Value, ...] | None = None
            old_kind: str | None = None
            if buf[pos] in (0x4B, 0x4F):  # 'K' key, 'O' old row
                old_kind = chr(buf[pos])
                old, pos = self._tuple(buf, pos + 1)
            if buf[pos] != 0x4E:
                raise DecodeError(f"Update: expected a new tuple, got {buf[pos : pos + 1]!r}")
            new, _ = self._tuple(buf, pos + 1)
            return Update(relation_id, old, old_kind, new)
        if tag == 0x44:  # 'D'
            (relation_id,) = _U32(buf, 1)
            old_kind = chr(buf[5])
            if old_kind not in ("K", "O"):
                raise DecodeError(f"Delete: expected K or O, got {old_kind!r}")
            old, _ = self._tuple(buf, 6)
            return Delete(relation_id, old, old_kind)
        if tag == 0x42:  # 'B'
            final_lsn, commit_us, xid = _BEGIN(buf, 1)
            return Begin(final_lsn, pg_time(commit_us), xid)
        if tag == 0x43:  # 'C'
            flags, commit_lsn, end_lsn, commit_us = _COMMIT(buf, 1)
            return Commit(flags, commit_lsn, end_lsn, pg_time(commit_us))
        if tag == 0x52:  # 'R'
            return self._relation(buf)
        if tag == 0x59:  # 'Y'
            (type_oid,) = _U32(buf, 1)
            namespace, pos = self._string(buf, 5)
            name, _ = self._string(buf, pos)
            return Type(type_oid, namespace, name)
        if tag == 0x54:  # 'T'
            (count,) = _I32(buf, 1)
            (options,) = _I8(buf, 5)
            ids = struct.unpack_from(f"!{count}I", buf, 6)
            return Truncate(tuple(ids), bool(options & 1), bool(options & 2))
        if tag == 0x4F:  # 'O'
            (lsn,) = struct.unpack_from("!Q", buf, 1)
            name, _ = self._string(buf, 9)
            return Origin(lsn, name)
        if tag == 0x4D:  # 'M'
            (flags,) = _U8(buf, 1)
            (lsn,) = struct.unpack_from("!Q", buf, 2)
            prefix, pos = self._string(buf, 10)
            (length,) = _I32(buf, pos)
            content = buf[pos + 4 : pos + 4 + length]
            return LogicalMessage(bool(flags & 1), lsn, prefix, content)
        raise DecodeError(
            f"unknown pgoutput message {buf[:1]!r}; tidings asks for protocol version 1"
        )

    def _string(self, buf: bytes, pos: int) -> tuple[str, int]:
        end = buf.index(0, pos)
        return buf[pos:end].decode(self.encoding), end + 1

    def _relation(self, buf: bytes) -> Relation:
        (relation_id,) = _U32(buf, 1)
        namespace, pos = self._string(buf, 5)
        name, pos = self._string(buf, pos)
        identity = chr(buf[pos])
        (count,) = _I16(buf, pos + 1)
        pos += 3
        columns = []
        for _ in range(count):
            flags = buf[pos]
            column_name, pos = self._string(buf, pos + 1)
            type_oid, modifier = _COLUMN_TAIL(buf, pos)
            pos += 8
            columns.append(Column(column_name, type_oid, modifier, bool(flags & 1)))
        # An empty namespace means pg_catalog (the protocol abbreviates it).
        return Relation(relation_id, namespace or "pg_catalog", name, identity, tuple(columns))

    def _tuple(self, buf: bytes, pos: int) -> tuple[tuple[Value, ...], int]:
        (count,) = _I16(buf, pos)
        pos += 2
        values: list[Value] = []
        append = values.append
        encoding = self.encoding
        for _ in range(count):
            kind = buf[pos]
            if kind == 0x74:  # 't' text
                (length,) = _I32(buf, pos + 1)
                start = pos + 5
                pos = start + length
                append(buf[start:pos].decode(encoding))
            elif kind == 0x6E:  # 'n' NULL
                append(None)
                pos += 1
            elif kind == 0x75:  # 'u' unchanged TOAST
                append(UNCHANGED)
                pos += 1
            elif kind == 0x62:  # 'b' binary
                (length,) = _I32(buf, pos + 1)
                start = pos + 5
                pos = start + length
                append(buf[start:pos])
            else:
                raise DecodeError(f"unknown tuple column kind {chr(kind)!r}")
        return tuple(values), pos


_default = Decoder()


def decode(payload: bytes | memoryview) -> Message:
    """Decode one pgoutput message, assuming a UTF-8 database."""
    return _default.decode(payload)
