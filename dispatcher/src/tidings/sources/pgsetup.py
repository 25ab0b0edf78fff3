"""What the Postgres source owns in the database: its publication and its
replication slot; the checks before using them; WAL retention; cleanup.

Names derive from the EventSource (`tidings_<namespace>_<name>_<hash>`,
sanitized to what PostgreSQL allows, the hash keeps `a-b/c` and `a/b-c`
apart) unless spec.postgres.slotName / publicationName say otherwise.

A publication tidings creates carries a comment naming its EventSource: only
such a publication is altered to follow the spec and dropped on cleanup. A
publication that already existed under an overridden name is used as is and
left alone. The slot is always the source's own and is dropped on cleanup.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from tidings.api.types import PostgresSource
from tidings.sources.errors import (
    ColumnNotFound,
    ConnectionFailed,
    MissingReplicationPrivilege,
    NoReplicaIdentity,
    PublicationNotPermitted,
    SlotUnavailable,
    SourceError,
    TableNotFound,
    WalLevelNotLogical,
)
from tidings.sources.pgtypes import SESSION_OPTIONS
from tidings.sources.replication import quote_ident, with_options

log = logging.getLogger(__name__)

COMMENT_PREFIX = "managed by tidings: EventSource "
CONNECT_TIMEOUT = 10


def default_name(namespace: str, name: str) -> str:
    """`tidings_<ns>_<name>_<hash8>`, at most 63 characters of [a-z0-9_]."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:8]
    base = re.sub(r"[^a-z0-9_]", "_", f"tidings_{namespace}_{name}".lower())
    return f"{base[: 63 - 9]}_{digest}"


@dataclass(frozen=True)
class Names:
    slot: str
    publication: str


def names(spec: PostgresSource, namespace: str, name: str) -> Names:
    default = default_name(namespace, name)
    return Names(spec.slot_name or default, spec.publication_name or default)


@dataclass(frozen=True)
class Table:
    """A captured table, as named in the spec and as found in the catalog."""

    index: int  # position in spec.postgres.tables, for error messages
    spec_name: str
    schema: str
    name: str
    # The publication's column list for this table (PostgreSQL 15+), or None
    # for all columns: the spec's columns plus the replica identity's.
    publish_columns: tuple[str, ...] | None = None

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    @property
    def published(self) -> str:
        """The table as a publication lists it, with its column list if any."""
        if self.publish_columns is None:
            return self.qualified
        return f"{self.qualified} ({', '.join(quote_ident(c) for c in self.publish_columns)})"

    @property
    def subject(self) -> str:
        return f"{self.schema}.{self.name}"


def split_table(text: str) -> tuple[str, str]:
    """`public.users` -> (public, users); an unqualified name is in `public`."""
    schema, _, table = text.rpartition(".")
    return (schema or "public"), table


def column_lists(spec: PostgresSource) -> dict[str, list[str]]:
    """spec.postgres.columns keyed by `schema.table` (unqualified names are public)."""
    result: dict[str, list[str]] = {}
    for table, columns in (spec.columns or {}).items():
        schema, name = split_table(table)
        result[f"{schema}.{name}"] = list(columns)
    return result


async def connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    """A normal (SQL) connection, with the session settings tidings parses against."""
    try:
        params = with_options(dsn, SESSION_OPTIONS, autocommit=True)
        params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        return await psycopg.AsyncConnection.connect(**params)
    except psycopg.OperationalError as error:
        raise connection_error(error) from None
    except psycopg.ProgrammingError as error:  # a DSN that does not parse
        raise ConnectionFailed(
            f"spec.postgres.connectionSecretRef: the DSN is not valid ({error}); "
            "write a libpq URI (postgresql://user:password@host:5432/db) or key=value string"
        ) from None


def connection_error(error: Exception) -> SourceError:
    text = str(error).strip()
    if "replication" in text and ("role" in text or "permission" in text):
        return MissingReplicationPrivilege(
            f"{text}; grant it with ALTER ROLE <role> WITH REPLICATION "
            "(and allow replication connections in pg_hba.conf)"
        )
    if "pg_hba.conf" in text and "replication" in text:
        return ConnectionFailed(
            f"{text}; allow replication connections for this role in pg_hba.conf"
        )
    return ConnectionFailed(
        f"cannot connect with the DSN in spec.postgres.connectionSecretRef: {text}"
    )


async def _one(conn: psycopg.AsyncConnection[Any], sql: str, *args: Any) -> Any:
    cursor = await conn.execute(sql, args or None)
    row = await cursor.fetchone()
    return None if row is None else row[0] if len(row) == 1 else row


async def check_server(conn: psycopg.AsyncConnection[Any]) -> None:
    """wal_level must be logical; the role must be allowed to replicate."""
    wal_level = await _one(conn, "SHOW wal_level")
    if wal_level != "logical":
        raise WalLevelNotLogical(
            f"the server runs with wal_level={wal_level}; set wal_level = logical in "
            "postgresql.conf (or your provider's parameter group) and restart PostgreSQL"
        )
    row = await _one(
        conn,
        "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles "
        "WHERE rolname = current_user",
    )
    role, allowed = row
    # Managed services grant replication through a role membership instead.
    member = await _one(
        conn,
        "SELECT count(*) > 0 FROM pg_roles r WHERE r.rolname IN "
        "('rds_replication', 'cloudsqlreplica', 'azure_pg_admin') "
        "AND pg_has_role(current_user, r.oid, 'member')",
    )
    if not allowed and not member:
        raise MissingReplicationPrivilege(
            f"role {role} lacks the REPLICATION attribute; "
            f"run ALTER ROLE {quote_ident(role)} WITH REPLICATION"
        )


async def resolve_tables(conn: psycopg.AsyncConnection[Any], spec: PostgresSource) -> list[Table]:
    """Find every listed table; check columns and replica identity."""
    tables: list[Table] = []
    database = await _one(conn, "SELECT current_database()::text")
    # Column lists in publications arrived in PostgreSQL 15; before that the
    # adapter alone filters columns.
    version = int(await _one(conn, "SHOW server_version_num"))
    columns_by_table = column_lists(spec)
    listed = {"{}.{}".format(*split_table(t)) for t in spec.tables}
    for table in columns_by_table:
        if table not in listed:
            raise ColumnNotFound(
                f"spec.postgres.columns: table {table} is not in spec.postgres.tables; "
                "list it there or remove its column list"
            )
    needs_identity = "update" in spec.operations or "delete" in spec.operations
    for index, spec_name in enumerate(spec.tables):
        schema, name = split_table(spec_name)
        row = await _one(
            conn,
            "SELECT c.oid::int, c.relkind::text, c.relreplident::text, "
            "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            schema,
            name,
        )
        field = f"spec.postgres.tables[{index}]"
        if row is None or row[1] not in ("r", "p"):
            what = "not found" if row is None else "not a table"
            raise TableNotFound(
                f"{field}: table {schema}.{name} {what} in database {database}; create it "
                "or fix the name (names are case-sensitive, as stored in the catalog)"
            )
        oid, _, identity, has_primary_key = row
        if needs_identity and (identity == "n" or (identity == "d" and not has_primary_key)):
            # Publishing updates of such a table makes PostgreSQL refuse its UPDATEs.
            raise NoReplicaIdentity(
                f"{field}: table {schema}.{name} has no primary key, so once published its "
                "UPDATE and DELETE statements would fail; add a primary key or run "
                f"ALTER TABLE {quote_ident(schema)}.{quote_ident(name)} REPLICA IDENTITY FULL"
            )
        wanted = columns_by_table.get(f"{schema}.{name}")
        publish: tuple[str, ...] | None = None
        if wanted:
            cursor = await conn.execute(
                "SELECT attname::text, attgenerated <> '' FROM pg_attribute "
                "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                (oid,),
            )
            rows = await cursor.fetchall()
            # PostgreSQL 15-17 never publish generated columns and refuse them in
            # a column list: they are left out of it (their values never arrive).
            ordered = [r[0] for r in rows if not r[1]]
            generated = {r[0] for r in rows if r[1]}
            missing = [c for c in wanted if c not in ordered and c not in generated]
            if missing:
                raise ColumnNotFound(
                    f"spec.postgres.columns[{spec_name}]: table {schema}.{name} has no column "
                    f"{', '.join(missing)}; it has {', '.join(sorted([*ordered, *generated]))}"
                )
            if version >= 150000:
                identity_columns = await replica_identity_columns(conn, oid, identity)
                publish = publication_columns(
                    ordered, wanted, identity_columns, needs_identity=needs_identity
                )
        tables.append(Table(index, spec_name, schema, name, publish))
    return tables


async def replica_identity_columns(
    conn: psycopg.AsyncConnection[Any], oid: int, identity: str
) -> list[str] | None:
    """The columns of the table's replica identity; None for FULL (all of them)."""
    if identity == "f":
        return None
    if identity == "n":
        return []
    flag = "indisreplident" if identity == "i" else "indisprimary"
    cursor = await conn.execute(
        "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        f"WHERE i.indrelid = %s AND i.{flag}",
        (oid,),
    )
    return [r[0] for r in await cursor.fetchall()]


def publication_columns(
    ordered: Sequence[str],
    wanted: Sequence[str],
    identity: Sequence[str] | None,
    *,
    needs_identity: bool,
) -> tuple[str, ...] | None:
    """The publication's column list: the wanted columns, in table order.

    Publishing UPDATE or DELETE with a column list that lacks a replica identity
    column makes PostgreSQL refuse those statements on the table, so the
    identity's columns are always added (the adapter still filters them out of
    events); with REPLICA IDENTITY FULL that is every column, so no list."""
    keep = set(wanted)
    if needs_identity:
        if identity is None:
            return None
        keep.update(identity)
    listed = tuple(c for c in ordered if c in keep)
    return listed or None  # nothing publishable listed: the whole row, filtered here


def publish_option(operations: Sequence[str]) -> str:
    order = ("insert", "update", "delete", "truncate")
    return ", ".join(op for op in order if op in operations)


async def ensure_publication(
    conn: psycopg.AsyncConnection[Any],
    publication: str,
    tables: Sequence[Table],
    operations: Sequence[str],
    owner: str,
) -> bool:
    """Create the publication, or make the one tidings created match the spec.
    Returns False for a foreign publication (used as is)."""
    comment = COMMENT_PREFIX + owner
    current = await _one(
        conn,
        "SELECT coalesce(obj_description(oid, 'pg_publication'), '') "
        "FROM pg_publication WHERE pubname = %s",
        publication,
    )
    table_list = ", ".join(t.published for t in tables)
    publish = publish_option(operations)
    name = quote_ident(publication)
    try:
        if current is None:
            async with conn.transaction():
                await conn.execute(
                    f"CREATE PUBLICATION {name} FOR TABLE {table_list} "
                    f"WITH (publish = '{publish}', publish_via_partition_root = true)"
                )
                await conn.execute(
                    sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(
                        sql.Identifier(publication), sql.Literal(comment)
                    )
                )
            log.info("created publication %s for %s", publication, table_list)
            return True
        if current != comment:
            log.info("using existing publication %s as it is (not created by tidings)", publication)
            return False
        async with conn.transaction():
            await conn.execute(f"ALTER PUBLICATION {name} SET TABLE {table_list}")
            await conn.execute(
                f"ALTER PUBLICATION {name} SET (publish = '{publish}', "
                "publish_via_partition_root = true)"
            )
        return True
    except pg_errors.InsufficientPrivilege as error:
        raise PublicationNotPermitted(
            f"cannot create or alter publication {publication}: {error}; make the role own "
            "the tables (or be superuser), or create the publication yourself and name it in "
            "spec.postgres.publicationName"
        ) from None


@dataclass(frozen=True)
class SlotInfo:
    created: bool
    lost: bool  # the server invalidated it (max_slot_wal_keep_size): changes were lost


async def ensure_slot(conn: psycopg.AsyncConnection[Any], slot: str) -> SlotInfo:
    row = await _one(
        conn,
        "SELECT plugin::text, database::text, coalesce(wal_status, '')::text "
        "FROM pg_replication_slots WHERE slot_name = %s",
        slot,
    )
    database = await _one(conn, "SELECT current_database()::text")
    lost = False
    if row is not None:
        plugin, slot_database, wal_status = row
        if slot_database != database or plugin != "pgoutput":
            raise SlotUnavailable(
                f"replication slot {slot} exists for database {slot_database} with plugin "
                f"{plugin}; choose another spec.postgres.slotName"
            )
        if wal_status != "lost":
            return SlotInfo(created=False, lost=False)
        log.error("replication slot %s was invalidated by the server; recreating it", slot)
        await drop_slot(conn, slot)
        lost = True
    try:
        await conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    except pg_errors.InsufficientPrivilege as error:
        raise MissingReplicationPrivilege(
            f"cannot create replication slot {slot}: {error}; "
            "run ALTER ROLE <role> WITH REPLICATION"
        ) from None
    except pg_errors.DuplicateObject:
        return SlotInfo(created=False, lost=lost)  # a twin replica made it first
    except (pg_errors.ConfigurationLimitExceeded, pg_errors.ObjectNotInPrerequisiteState) as error:
        raise SlotUnavailable(
            f"cannot create replication slot {slot}: {error}; raise max_replication_slots "
            "or drop unused slots (SELECT * FROM pg_replication_slots)"
        ) from None
    log.info("created replication slot %s", slot)
    return SlotInfo(created=True, lost=lost)


async def drop_slot(conn: psycopg.AsyncConnection[Any], slot: str) -> bool:
    """Drop the slot, ending a walsender still using it. Returns whether it existed."""
    pid = await _one(conn, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", slot)
    exists = await _one(
        conn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", slot
    )
    if not exists:
        return False
    if pid is not None:
        await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    for _ in range(50):  # the terminated walsender releases the slot asynchronously
        try:
            await conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            return True
        except pg_errors.ObjectInUse:
            await conn.execute("SELECT pg_sleep(0.1)")
        except pg_errors.UndefinedObject:
            return False
    raise SlotUnavailable(f"replication slot {slot} stays in use; drop it by hand")


@dataclass(frozen=True)
class WalRetention:
    slot: str
    exists: bool
    active: bool
    retained_bytes: int  # WAL the server keeps for this slot
    confirmed_lsn: str | None
    threshold: int

    @property
    def over_threshold(self) -> bool:
        return self.retained_bytes > self.threshold


async def wal_retention(
    conn: psycopg.AsyncConnection[Any], slot: str, threshold: int
) -> WalRetention:
    row = await _one(
        conn,
        "SELECT active, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint, "
        "confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        slot,
    )
    if row is None:
        return WalRetention(slot, False, False, 0, None, threshold)
    active, retained, confirmed = row
    return WalRetention(slot, True, bool(active), int(retained), confirmed, threshold)


async def check_wal_retention(
    spec: PostgresSource, dsn: str, *, namespace: str, name: str
) -> WalRetention:
    """For the operator: how much WAL the source's slot retains, against
    spec.postgres.maxRetainedWalBytes (`over_threshold` -> a warning condition)."""
    conn = await connect(dsn)
    try:
        return await wal_retention(
            conn, names(spec, namespace, name).slot, spec.max_retained_wal_bytes
        )
    finally:
        await conn.close()


@dataclass(frozen=True)
class Cleanup:
    slot_dropped: bool
    publication_dropped: bool


async def cleanup(spec: PostgresSource, dsn: str, *, namespace: str, name: str) -> Cleanup:
    """Drop the source's slot, and its publication if tidings created it.

    For the operator's finalizer when an EventSource is deleted. Idempotent.
    Raises SourceError (e.g. ConnectionFailed) when it cannot reach the database,
    so the finalizer can retry and report it."""
    owned = names(spec, namespace, name)
    conn = await connect(dsn)
    try:
        slot_dropped = await drop_slot(conn, owned.slot)
        comment = await _one(
            conn,
            "SELECT coalesce(obj_description(oid, 'pg_publication'), '') "
            "FROM pg_publication WHERE pubname = %s",
            owned.publication,
        )
        publication_dropped = False
        if comment == COMMENT_PREFIX + f"{namespace}/{name}":
            await conn.execute(f"DROP PUBLICATION IF EXISTS {quote_ident(owned.publication)}")
            publication_dropped = True
        return Cleanup(slot_dropped, publication_dropped)
    finally:
        await conn.close()


async def server_encoding(conn: psycopg.AsyncConnection[Any]) -> str:
    """The Python codec of the database encoding (the replication stream uses it)."""
    name = await _one(conn, "SHOW server_encoding")
    try:
        from psycopg._encodings import pg2pyenc

        return str(pg2pyenc(str(name).encode()))
    except Exception:  # SQL_ASCII and exotic encodings: bytes are passed through as UTF-8
        return "utf-8"
