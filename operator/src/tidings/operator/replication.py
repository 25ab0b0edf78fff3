"""Dropping a deleted Postgres EventSource's replication slot and publication.

A logical replication slot nobody reads makes the database keep WAL forever:
the classic CDC footgun. So the EventSource finalizer drops the slot (and the
publication, if Tidings created it) after the adapter Deployment is gone.

The database may be unreachable just then. The deletion handler retries with
a doubling delay (Kopf keeps the attempt count in an annotation, so it survives
an operator restart) and, after `attempts`, releases the EventSource anyway
with an error log and a Warning Event naming the SQL to run by hand: blocking
a namespace deletion forever over an external database would be worse.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from tidings.api.types import EventSourceSpec, PostgresSource
from tidings.sources.errors import SourceError

# tidings.sources.pgsetup and .replication (psycopg) are imported by the functions
# that reach a database: an operator without Postgres sources never loads them.

# One attempt may not hang the deletion (a DSN pointing at a black hole).
ATTEMPT_TIMEOUT = 30.0
# The longest delay between two attempts.
BACKOFF_MAX = 60.0


class Secrets(Protocol):
    def secret(self, namespace: str, name: str, key: str) -> str | None: ...


@dataclass(frozen=True)
class Outcome:
    """What one attempt decided: done, retry in `delay` seconds, or give up."""

    verdict: Literal["done", "retry", "abandoned"]
    event_type: str  # Normal | Warning
    reason: str
    message: str
    delay: float = 0.0


def postgres_spec(spec: Mapping[str, Any]) -> PostgresSource | None:
    try:
        return EventSourceSpec.model_validate(dict(spec)).postgres
    except ValidationError:
        # An invalid spec never got an adapter, so it never made a slot.
        return None


def by_hand(spec: PostgresSource, namespace: str, name: str) -> str:
    """The SQL a user runs when Tidings could not."""
    from tidings.sources import pgsetup
    from tidings.sources.replication import quote_ident

    owned = pgsetup.names(spec, namespace, name)
    drop_slot = f"SELECT pg_drop_replication_slot('{owned.slot}');"
    drop_publication = f"DROP PUBLICATION IF EXISTS {quote_ident(owned.publication)};"
    if spec.publication_name is None:
        return f"{drop_slot} {drop_publication}"
    # A named publication may be the user's own: Tidings drops only one it created.
    return f"{drop_slot} and, if its comment says 'managed by tidings', {drop_publication}"


def retry_delay(attempt: int, maximum: float) -> float:
    """1, 2, 4 … seconds, capped (attempt counts from 1)."""
    return float(min(2.0 ** (attempt - 1), maximum))


async def drop(
    spec: PostgresSource,
    secrets: Secrets,
    *,
    namespace: str,
    name: str,
    attempt: int,
    attempts: int,
    known_dsn: str | None = None,
) -> Outcome:
    """One attempt at dropping the slot and the publication."""
    from tidings.sources import pgsetup

    ref = spec.connection_secret_ref
    dsn = secrets.secret(namespace, ref.name, ref.key) or known_dsn
    failure: str
    if dsn is None:
        failure = (
            f"SecretNotFound: spec.postgres.connectionSecretRef: Secret {namespace}/{ref.name} "
            f"with key {ref.key!r} is gone, so the database cannot be reached"
        )
    else:
        try:
            result = await asyncio.wait_for(
                pgsetup.cleanup(spec, dsn, namespace=namespace, name=name), ATTEMPT_TIMEOUT
            )
        except SourceError as error:
            failure = str(error)
        except TimeoutError:
            failure = f"Timeout: the database did not answer within {ATTEMPT_TIMEOUT:.0f}s"
        except Exception as error:  # psycopg errors of every kind: retry, then give up
            failure = f"DatabaseError: {error}".strip()
        else:
            owned = pgsetup.names(spec, namespace, name)
            done = [
                f"replication slot {owned.slot}" if result.slot_dropped else "",
                f"publication {owned.publication}" if result.publication_dropped else "",
            ]
            what = " and ".join(d for d in done if d) or "nothing (already gone)"
            return Outcome("done", "Normal", "ReplicationDropped", f"dropped {what}")
    if attempt < attempts:
        return Outcome(
            "retry",
            "Warning",
            "CleanupFailed",
            f"attempt {attempt} of {attempts} to drop the replication slot failed: {failure}",
            delay=retry_delay(attempt, BACKOFF_MAX),
        )
    return Outcome(
        "abandoned",
        "Warning",
        "CleanupAbandoned",
        f"gave up dropping the replication slot after {attempts} attempts ({failure}); "
        "the EventSource is released, but the database keeps WAL for the slot until "
        f"it is dropped: run {by_hand(spec, namespace, name)}",
    )
