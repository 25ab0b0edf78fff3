"""The streaming replication protocol over a psycopg connection.

psycopg 3 has no replication API (psycopg2's ReplicationCursor was not
ported), but since 3.3 it lets `START_REPLICATION` through and leaves the
connection in COPY BOTH mode. From there this module talks the protocol at
the libpq level (psycopg.pq: get_copy_data / put_copy_data), driven by
asyncio readiness of the socket. libpq still does everything else: TLS,
SCRAM, .pgpass, every DSN option.

CopyData messages from the server are XLogData (`w`: a pgoutput message and
its WAL position) and primary keepalives (`k`); the client sends standby
status updates (`r`) that confirm how far it has durably consumed — that is
what moves the slot's confirmed_flush_lsn and lets the server recycle WAL.
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from tidings.sources.pgoutput import format_lsn

# Microseconds between the Unix and PostgreSQL epochs (2000-01-01).
_PG_EPOCH_OFFSET_US = 946_684_800_000_000
_XLOG = struct.Struct("!QQq")
_KEEPALIVE = struct.Struct("!QqB")
_STATUS = struct.Struct("!cQQQqB")


@dataclass(frozen=True, slots=True)
class XLogData:
    data_start: int  # WAL position of the change this message describes
    wal_end: int
    payload: memoryview


@dataclass(frozen=True, slots=True)
class Keepalive:
    wal_end: int  # the server has sent everything up to here
    reply_requested: bool


class ReplicationError(Exception):
    """The server ended the stream or sent something unexpected."""


def parse_frame(buf: memoryview) -> XLogData | Keepalive:
    tag = buf[0]
    if tag == 0x77:  # 'w'
        data_start, wal_end, _ = _XLOG.unpack_from(buf, 1)
        return XLogData(data_start, wal_end, buf[25:])
    if tag == 0x6B:  # 'k'
        wal_end, _, reply = _KEEPALIVE.unpack_from(buf, 1)
        return Keepalive(wal_end, bool(reply))
    raise ReplicationError(f"unexpected replication message {bytes(buf[:1])!r}")


def standby_status(flushed: int, *, now: float | None = None) -> bytes:
    """A standby status update confirming `flushed` as written, flushed and applied."""
    now_us = int((time.time() if now is None else now) * 1_000_000) - _PG_EPOCH_OFFSET_US
    return _STATUS.pack(b"r", flushed, flushed, flushed, now_us, 0)


def with_options(dsn: str, options: str, **params: Any) -> dict[str, Any]:
    """The DSN's parameters with `options` appended to any it already has."""
    info = conninfo_to_dict(dsn)
    existing = info.get("options")
    info["options"] = f"{existing} {options}" if existing else options
    info.update(params)
    return info


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class SystemIdentity:
    system_id: str
    database: str


class ReplicationStream:
    """A logical replication stream of one slot, through one publication."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], identity: SystemIdentity) -> None:
        self._conn = conn
        self._pgconn = conn.pgconn
        self.identity = identity
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._fd = self._pgconn.socket
        self._reading = False

    @classmethod
    async def connect(cls, dsn: str, options: str) -> ReplicationStream:
        """Open a replication connection (`replication=database`)."""
        params = with_options(dsn, options, replication="database", autocommit=True)
        conn = await psycopg.AsyncConnection.connect(**params)
        try:
            cursor = await conn.execute("IDENTIFY_SYSTEM")
            row = await cursor.fetchone()
            assert row is not None
            identity = SystemIdentity(system_id=str(row[0]), database=str(row[3]))
            return cls(conn, identity)
        except BaseException:
            await conn.close()
            raise

    async def start(self, slot: str, publication: str, start_lsn: int) -> None:
        """START_REPLICATION of `slot` (pgoutput, protocol 1) from `start_lsn`.

        The server starts at the slot's confirmed position if that is later."""
        publications = quote_ident(publication).replace("'", "''")
        await self._conn.execute(
            f"START_REPLICATION SLOT {quote_ident(slot)} LOGICAL {format_lsn(start_lsn)} "
            f"(proto_version '1', publication_names '{publications}')"
        )
        # Only now: psycopg registers its own reader on this socket while a
        # query runs, and asyncio keeps one reader per file descriptor.
        self._loop.add_reader(self._fd, self._readable.set)
        self._reading = True

    def read_available(self, limit: int = 10_000) -> list[XLogData | Keepalive]:
        """Every complete message already received (at most `limit`), without waiting."""
        out: list[XLogData | Keepalive] = []
        pgconn = self._pgconn
        while len(out) < limit:
            size, data = pgconn.get_copy_data(1)
            if size > 0:
                out.append(parse_frame(data))
            elif size == 0:
                break
            else:
                self._raise_ended()
        return out

    async def wait_readable(self, max_wait: float) -> None:
        """Wait until the socket has data (at most `max_wait` s), then take it into libpq."""
        try:
            await asyncio.wait_for(self._readable.wait(), max_wait)
        except TimeoutError:
            return
        self._readable.clear()
        self._pgconn.consume_input()

    def wake(self) -> None:
        """End a pending wait_readable early (used to stop)."""
        self._readable.set()

    async def send_status(self, flushed: int) -> None:
        self._put(standby_status(flushed))
        await self._flush()

    def _put(self, data: bytes) -> None:
        if self._pgconn.put_copy_data(data) != 1:
            raise ReplicationError(self._error("could not send a status update"))

    async def _flush(self) -> None:
        # Non-blocking libpq: flush() returns 1 while data is still queued.
        while self._pgconn.flush() == 1:
            self._writable.clear()
            self._loop.add_writer(self._fd, self._writable.set)
            try:
                await asyncio.wait_for(self._writable.wait(), 30)
            finally:
                self._loop.remove_writer(self._fd)

    def _raise_ended(self) -> None:
        result = self._pgconn.get_result()
        if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
            message = (result.error_message or b"").decode(errors="replace").strip()
            raise ReplicationError(f"the server ended replication: {message}")
        raise ReplicationError(self._error("the server ended replication"))

    def _error(self, what: str) -> str:
        detail = (self._pgconn.error_message or b"").decode(errors="replace").strip()
        return f"{what}: {detail}" if detail else what

    async def close(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        await self._conn.close()
