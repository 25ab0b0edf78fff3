"""The Postgres source: change data capture by logical replication (pgoutput).

One adapter streams one replication slot. Each change of a captured table
becomes a CloudEvent `dev.tidings.postgres.<op>` with subject `schema.table`
and data `{op, schema, table, new, old, lsn, commitTime, xid}`.

Exactly once into the stream:

- pgoutput sends whole transactions, in commit order. The events of every
  transaction received are written with tidings.sources.journal in
  one atomic Lua call together with the resume point (the commit's end LSN),
  several transactions per call when they come quickly. A transaction of more
  than `batch_events` events is written in chunks of that size (memory and
  Redis latency stay bounded): never lost or repeated, but a subscriber may
  see its first chunk before the rest.
- Each event has a position (commit LSN, sequence in the transaction); the
  journal skips positions at or below the last one written. So a transaction
  the server sends again after a crash — it was in Redis, but its LSN had not
  been confirmed — is dropped, not duplicated.
- The slot's confirmed LSN (what the server may forget) advances only after
  the write returned: a kill -9 at any moment loses nothing.

The adapter retries every failure with backoff (1 s doubling to 30 s) and
reports it in its status; errors a person must fix (tidings.sources.errors)
say what to do.

Deletion: the operator's finalizer deletes the adapter's Deployment, then drops
the slot and the publication. The pod keeps running for a few seconds and would
re-create both when its walsender is terminated, leaking them for good. So with
`still_wanted` (is the EventSource still there and not being deleted?) every
session asks before it creates anything, and again after: an adapter whose
creation came after the operator's drop also asks after the deletion began,
sees it, and drops what it made. Either way it then reports
Stopped/EventSourceDeleted and run() returns.

A slot created anew after the adapter had streamed from one (dropped by hand,
invalidated, a failover) means changes were missed. The adapter records when
and after which LSN in its state (slotRecreatedAt, slotRecreatedAfterLsn) and
reports it in every status as details `slotRecreated={"at", "afterLsn"}`, also
after restarts; the operator shows it as the condition ChangesMissed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis.exceptions
from redis.asyncio import Redis

from tidings.api.events import CloudEvent
from tidings.api.routes import CompiledSource
from tidings.api.types import PostgresSource
from tidings.sources import journal, pgsetup
from tidings.sources.errors import SlotUnavailable, SourceError
from tidings.sources.journal import Batch, position
from tidings.sources.metrics import SourceSeries
from tidings.sources.pgoutput import (
    Begin,
    Commit,
    Decoder,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
    Value,
    format_lsn,
    parse_lsn,
)
from tidings.sources.pgtypes import (
    SESSION_OPTIONS,
    TYPE_QUERY,
    TypeRegistry,
    TypeRow,
    decode_row,
)
from tidings.sources.replication import (
    Keepalive,
    ReplicationError,
    ReplicationStream,
)
from tidings.sources.status import StatusReporter

log = logging.getLogger(__name__)

TYPE_PREFIX = "dev.tidings.postgres."
MAX_SEQUENCE = 10**19  # "every event of this transaction" in a guard position


# Fields of keys.adapter_state recording the last time the slot was created anew
# after the adapter had streamed from an earlier one.
RECREATED_AT = "slotRecreatedAt"
RECREATED_AFTER_LSN = "slotRecreatedAfterLsn"

StillWanted = Callable[[], Awaitable[bool]]


def iso_time(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def slot_recreated(state: dict[str, str]) -> dict[str, str] | None:
    """The status detail `slotRecreated` from the adapter's state, if it happened."""
    if not state.get(RECREATED_AT):
        return None
    return {"at": state[RECREATED_AT], "afterLsn": state.get(RECREATED_AFTER_LSN, "")}


class _Deleted(Exception):
    """The EventSource is gone or being deleted: the adapter stops for good."""

    def __init__(self, *, cleanup: bool) -> None:
        super().__init__("the EventSource is being deleted")
        self.cleanup = cleanup  # this session may have created the slot or publication


@dataclass
class _Table:
    """A relation as the stream described it, plus what the spec asks of it."""

    relation: Relation
    subject: str
    columns: frozenset[str] | None  # spec.postgres.columns, or None for all


@dataclass
class _Transaction:
    commit_lsn: int
    commit_time: str
    xid: int
    seq: int = 0

    def __post_init__(self) -> None:
        self.id_prefix = f"{format_lsn(self.commit_lsn)}:"


class PostgresAdapter:
    """Streams one EventSource's slot into its stream; see the module docstring."""

    kind = "postgres"

    def __init__(
        self,
        source: CompiledSource,
        spec: PostgresSource,
        redis: Redis,
        *,
        dsn: str,
        batch_events: int = 5000,
        status_interval: float = 10.0,
        wal_check_interval: float = 60.0,
        backoff_max: float = 30.0,
        still_wanted: StillWanted | None = None,
    ) -> None:
        self.source = source
        self.spec = spec
        self.redis = redis
        self.dsn = dsn
        self.names = pgsetup.names(spec, source.namespace, source.name)
        self.batch_events = batch_events
        self.status_interval = status_interval
        self.wal_check_interval = wal_check_interval
        self.backoff_max = backoff_max
        # Whether the EventSource still exists and is not being deleted; None
        # (local runs from manifest files): always.
        self.still_wanted = still_wanted
        self.status = StatusReporter(redis, source.namespace, source.name)
        self.types = TypeRegistry()
        self._columns = pgsetup.column_lists(spec)
        self._stopping = asyncio.Event()
        self._stream: ReplicationStream | None = None
        self._recreated: dict[str, str] | None = None  # status detail slotRecreated
        self._cleanup_owed = False  # a drop after a deletion failed: retry it
        self.deleted = False  # run() returned because the EventSource is being deleted
        # Counters for logs, tests and the benchmark.
        self.events_written = 0
        self.events_skipped = 0
        self.confirmed_lsn = 0
        self.metrics: SourceSeries | None = None  # `tidings source --listen` attaches it

    # --- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        """Stream until stop() or the EventSource's deletion; every failure is
        reported and retried with backoff."""
        delay = 1.0
        with contextlib.suppress(redis.exceptions.RedisError):
            # So that even a first report of an error carries slotRecreated.
            self._recreated = slot_recreated(await journal.read_state(self.redis, self.source))
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await self._session()
            except _Deleted as deleted:
                if await self._stop_for_deletion(deleted):
                    return
            except SourceError as error:
                log.error("%s: %s", self.source.id, error)
                await self._report("Retrying", error.reason, error.message)
            except (psycopg.OperationalError, ReplicationError, OSError) as error:
                message = f"lost the database connection: {error}".strip()
                log.warning("%s: %s", self.source.id, message)
                await self._report("Retrying", "ConnectionLost", message)
            except psycopg.Error as error:
                message = f"the database refused a statement: {error}".strip()
                log.error("%s: %s", self.source.id, message)
                await self._report("Retrying", "DatabaseError", message)
            except redis.exceptions.RedisError as error:
                log.warning("%s: Redis error: %s", self.source.id, error)
                await self._report("Retrying", "RedisUnavailable", f"Redis: {error}")
            if self._stopping.is_set():
                break
            if time.monotonic() - started > 60:
                delay = 1.0  # it ran a while: a new failure starts the backoff over
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, self.backoff_max)
        await self._report("Stopped", "Stopped", "the adapter was stopped")

    async def stop(self) -> None:
        """Ask run() to return; safe at any moment (nothing unconfirmed is lost)."""
        self._stopping.set()
        if self._stream is not None:
            self._stream.wake()

    async def _report(self, state: str, reason: str, message: str, **details: Any) -> None:
        if self._recreated is not None:
            details.setdefault("slotRecreated", self._recreated)
        await self.status.report(state, reason, message, **details)

    # --- deletion -----------------------------------------------------------------------

    async def _wanted(self) -> bool:
        if self.still_wanted is None:
            return True
        try:
            return await self.still_wanted()
        except Exception as error:  # not knowing is no reason to stop capturing
            log.debug("%s: is the EventSource still there? %s", self.source.id, error)
            return True

    async def _stop_for_deletion(self, deleted: _Deleted) -> bool:
        """Drop what this session created, if anything, and report the stop.
        False when the drop failed (reported; run() retries it)."""
        if deleted.cleanup or self._cleanup_owed:
            self._cleanup_owed = True
            try:
                dropped = await pgsetup.cleanup(
                    self.spec, self.dsn, namespace=self.source.namespace, name=self.source.name
                )
            except (SourceError, psycopg.Error, OSError) as error:
                message = (
                    f"the EventSource is being deleted; dropping replication slot "
                    f"{self.names.slot} failed, retrying: {error}"
                )
                log.warning("%s: %s", self.source.id, message)
                await self._report("Retrying", "CleanupFailed", message)
                return False
            self._cleanup_owed = False
            log.info(
                "%s: the EventSource is being deleted; dropped what this adapter had just "
                "created (slot dropped: %s, publication dropped: %s)",
                self.source.id,
                dropped.slot_dropped,
                dropped.publication_dropped,
            )
        log.info("%s: the EventSource is being deleted: stopping", self.source.id)
        self.deleted = True
        await self._report(
            "Stopped",
            "EventSourceDeleted",
            "the EventSource is being deleted: the adapter stopped and creates no "
            f"replication slot or publication any more ({self.names.slot}, "
            f"{self.names.publication})",
        )
        return True

    # --- one connection's life ----------------------------------------------------------

    async def _session(self) -> None:
        # Before anything is created: a pod outliving its EventSource (the
        # operator's finalizer dropped the slot) must not create it again.
        if not await self._wanted():
            raise _Deleted(cleanup=False)
        conn = await pgsetup.connect(self.dsn)
        stream: ReplicationStream | None = None
        try:
            await pgsetup.check_server(conn)
            tables = await pgsetup.resolve_tables(conn, self.spec)
            await pgsetup.ensure_publication(
                conn, self.names.publication, tables, self.spec.operations, self.source.id
            )
            slot = await pgsetup.ensure_slot(conn, self.names.slot)
            # And after: if the operator's drop ran between the first check and
            # the creation, the deletion had begun before it, so this sees it.
            if not await self._wanted():
                raise _Deleted(cleanup=True)
            decoder = Decoder(await pgsetup.server_encoding(conn))
            try:
                stream = await ReplicationStream.connect(self.dsn, SESSION_OPTIONS)
            except psycopg.OperationalError as error:
                raise pgsetup.connection_error(error) from None
            start_lsn, guard = await self._resume_point(stream, slot)
            try:
                await stream.start(self.names.slot, self.names.publication, start_lsn)
            except psycopg.errors.ObjectInUse as error:
                raise SlotUnavailable(
                    f"{error}; another adapter is streaming this EventSource "
                    "(it is released when that process ends)"
                ) from None
            self._stream = stream
            if self._stopping.is_set():
                return
            log.info(
                "%s: streaming slot %s from %s",
                self.source.id,
                self.names.slot,
                format_lsn(start_lsn),
            )
            await self._report(
                "Running",
                "Streaming",
                f"streaming replication slot {self.names.slot}",
                slot=self.names.slot,
                publication=self.names.publication,
            )
            await self._stream_changes(conn, stream, decoder, guard, start_lsn)
        finally:
            self._stream = None
            if stream is not None:
                await stream.close()
            await conn.close()

    async def _resume_point(
        self, stream: ReplicationStream, slot: pgsetup.SlotInfo
    ) -> tuple[int, str]:
        """Where to start, and the guard position, from Redis.

        LSNs grow across one database cluster, so the guard stays valid when the
        slot or database changes, but not on another cluster (system id). A slot
        just created cannot replay anything written before, so its guard starts
        over too; that also covers a failover, where the new primary may reuse
        LSNs the old one had already streamed."""
        state = await journal.read_state(self.redis, self.source)
        origin = stream.identity.system_id
        reset = state.get("origin") != origin or slot.created or slot.lost
        if reset:
            values = {"origin": origin, journal.GUARD: "", "lsn": "0/0"}
            if state.get("lsn", "0/0") != "0/0" and (slot.created or slot.lost):
                log.error(
                    "%s: replication slot %s was missing and is created anew: changes "
                    "committed while it was gone (after %s) were not captured",
                    self.source.id,
                    self.names.slot,
                    state.get("lsn"),
                )
                # Kept for good, so every later report (and restart) still says so.
                values[RECREATED_AT] = iso_time(datetime.now(UTC).replace(microsecond=0))
                values[RECREATED_AFTER_LSN] = state["lsn"]
            await journal.set_state(self.redis, self.source, values)
            state.update(values)
            self._recreated = slot_recreated(state)
            return 0, ""
        self._recreated = slot_recreated(state)
        return parse_lsn(state.get("lsn", "0/0")), state.get(journal.GUARD, "")

    # --- the stream ---------------------------------------------------------------------

    async def _stream_changes(
        self,
        conn: psycopg.AsyncConnection[Any],
        stream: ReplicationStream,
        decoder: Decoder,
        guard: str,
        start_lsn: int,
    ) -> None:
        tables: dict[int, _Table] = {}
        txn: _Transaction | None = None
        pending: list[tuple[str, CloudEvent]] = []
        pending_end: int | None = None  # end LSN of the last whole transaction received
        flushable = confirmed = start_lsn
        last_status = time.monotonic()
        next_wal_check = time.monotonic()
        reply_requested = False

        complete = 0  # pending[:complete] belong to whole transactions

        async def write(*, chunk: bool = False) -> None:
            """Write the whole transactions received; with `chunk`, also the part of
            the open one received so far (it has grown past batch_events)."""
            nonlocal pending, pending_end, complete, guard, flushable
            upto = len(pending) if chunk else complete
            if upto:
                batch = Batch(events=pending[:upto])
                if pending_end is not None:
                    batch.state["lsn"] = format_lsn(pending_end)
                written = await journal.write(self.redis, self.source, batch)
                self.events_written += written.appended
                self.events_skipped += written.skipped
                if self.metrics is not None:
                    self.metrics.wrote(written.appended, written.skipped)
                guard = pending[upto - 1][0]
                del pending[:upto]
                complete = 0
            if pending_end is not None:
                flushable = max(flushable, pending_end)
                pending_end = None

        while not self._stopping.is_set():
            frames = stream.read_available()
            if not frames:
                await write()
                now = time.monotonic()
                if (
                    flushable > confirmed
                    or reply_requested
                    or now - last_status >= self.status_interval
                ):
                    await stream.send_status(flushable)
                    confirmed, last_status, reply_requested = flushable, now, False
                    self.confirmed_lsn = confirmed
                    if self.metrics is not None:
                        self.metrics.confirmed(confirmed)
                if now >= next_wal_check:
                    next_wal_check = now + self.wal_check_interval
                    await self._check_wal(conn)
                await stream.wait_readable(self.status_interval)
                continue
            for frame in frames:
                if isinstance(frame, Keepalive):
                    reply_requested = reply_requested or frame.reply_requested
                    # Everything before wal_end was sent; nothing of ours is pending.
                    if txn is None and not pending and pending_end is None:
                        flushable = max(flushable, frame.wal_end)
                    continue
                message = decoder.decode(frame.payload)
                if isinstance(message, Insert | Update | Delete):
                    assert txn is not None, "a change outside a transaction"
                    event = self._change(tables, txn, message, frame.data_start, guard)
                    if event is not None:
                        pending.append(event)
                        if len(pending) >= self.batch_events:
                            await write(chunk=True)
                elif isinstance(message, Begin):
                    txn = _Transaction(
                        message.final_lsn, iso_time(message.commit_time), message.xid
                    )
                elif isinstance(message, Commit):
                    txn = None
                    pending_end = message.end_lsn
                    complete = len(pending)
                elif isinstance(message, Relation):
                    await self._learn_types(conn, [c.type_oid for c in message.columns])
                    subject = f"{message.namespace}.{message.name}"
                    allowed = self._columns.get(subject)
                    tables[message.relation_id] = _Table(
                        message, subject, frozenset(allowed) if allowed else None
                    )
                elif isinstance(message, Truncate):
                    assert txn is not None, "a truncate outside a transaction"
                    for relation_id in message.relation_ids:
                        event = self._truncate(tables[relation_id], txn, frame.data_start, guard)
                        if event is not None:
                            pending.append(event)
                # Type, Origin and logical messages need nothing: user types are
                # looked up in pg_type when a Relation uses them.
            if complete >= self.batch_events:
                await write()

    def _change(
        self,
        tables: dict[int, _Table],
        txn: _Transaction,
        message: Insert | Update | Delete,
        lsn: int,
        guard: str,
    ) -> tuple[str, CloudEvent] | None:
        seq = txn.seq
        txn.seq += 1
        at = position(txn.commit_lsn, seq)
        if at <= guard:
            self.events_skipped += 1  # written before a restart
            if self.metrics is not None:
                self.metrics.skipped()
            return None
        table = tables[message.relation_id]
        columns = table.relation.columns
        new: dict[str, Any] | None = None
        old: dict[str, Any] | None = None
        unchanged: list[str] = []
        if isinstance(message, Insert):
            op = "insert"
            new, unchanged = decode_row(self.types, columns, message.new)
        elif isinstance(message, Update):
            op = "update"
            new, unchanged = decode_row(self.types, columns, message.new)
            old = self._old(columns, message.old, message.old_kind)
            if unchanged and message.old_kind == "O" and old is not None:
                # REPLICA IDENTITY FULL sends the whole old row: an unchanged
                # TOASTed value is known after all.
                for name in list(unchanged):
                    if name in old:
                        new[name] = old[name]
                        unchanged.remove(name)
        else:
            op = "delete"
            old = self._old(columns, message.old, message.old_kind)
        if table.columns is not None:
            new = None if new is None else {k: v for k, v in new.items() if k in table.columns}
            old = None if old is None else {k: v for k, v in old.items() if k in table.columns}
            unchanged = [c for c in unchanged if c in table.columns]
        data: dict[str, Any] = {
            "op": op,
            "schema": table.relation.namespace,
            "table": table.relation.name,
            "new": new,
            "old": old,
            "lsn": format_lsn(lsn),
            "commitTime": txn.commit_time,
            "xid": txn.xid,
        }
        if unchanged:
            data["unchangedToast"] = unchanged
        return at, self._event(op, table.subject, txn, seq, data)

    def _old(
        self, columns: Any, values: tuple[Value, ...] | None, kind: str | None
    ) -> dict[str, Any] | None:
        if values is None:
            return None
        row, _ = decode_row(self.types, columns, values)
        if kind == "K":  # only the replica identity columns carry values
            return {c.name: row[c.name] for c in columns if c.is_key and c.name in row}
        return row

    def _truncate(
        self, table: _Table, txn: _Transaction, lsn: int, guard: str
    ) -> tuple[str, CloudEvent] | None:
        seq = txn.seq
        txn.seq += 1
        at = position(txn.commit_lsn, seq)
        if at <= guard:
            self.events_skipped += 1
            if self.metrics is not None:
                self.metrics.skipped()
            return None
        data = {
            "op": "truncate",
            "schema": table.relation.namespace,
            "table": table.relation.name,
            "new": None,
            "old": None,
            "lsn": format_lsn(lsn),
            "commitTime": txn.commit_time,
            "xid": txn.xid,
        }
        return at, self._event("truncate", table.subject, txn, seq, data)

    def _event(
        self, op: str, subject: str, txn: _Transaction, seq: int, data: dict[str, Any]
    ) -> CloudEvent:
        return CloudEvent(
            # Stable across replays, so a subscriber can drop a duplicate by id.
            id=f"{txn.id_prefix}{seq}",
            source=self.source.api_path,
            type=TYPE_PREFIX + op,
            subject=subject,
            time=txn.commit_time,
            datacontenttype="application/json",
            data=data,
        )

    async def _learn_types(self, conn: psycopg.AsyncConnection[Any], oids: list[int]) -> None:
        needed = self.types.unknown(oids)
        for _ in range(5):  # arrays of domains of ... : a few levels at most
            if not needed:
                return
            cursor = await conn.execute(TYPE_QUERY, (needed,))
            rows = [TypeRow(*row) for row in await cursor.fetchall()]
            found = {row.oid for row in rows}
            needed = [oid for oid in self.types.learn(rows) if oid not in found]

    async def _check_wal(self, conn: psycopg.AsyncConnection[Any]) -> None:
        threshold = self.spec.max_retained_wal_bytes
        retention = await pgsetup.wal_retention(conn, self.names.slot, threshold)
        if retention.over_threshold:
            log.warning(
                "%s: replication slot %s retains %d bytes of WAL (over %d)",
                self.source.id,
                self.names.slot,
                retention.retained_bytes,
                threshold,
            )
        await self._report(
            "Running",
            "Streaming",
            f"streaming replication slot {self.names.slot}",
            walRetainedBytes=retention.retained_bytes,
            walThresholdBytes=threshold,
        )
