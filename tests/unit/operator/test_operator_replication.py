"""The finalizer's decisions about a deleted Postgres EventSource's slot
(the dropping itself runs against real PostgreSQL in
tests/integration/operator/test_operator_postgres.py)."""

from __future__ import annotations

from tidings.api.types import PostgresSource
from tidings.operator import replication


class NoSecrets:
    def secret(self, namespace: str, name: str, key: str) -> str | None:
        return None


SPEC = PostgresSource.model_validate(
    {"connectionSecretRef": {"name": "db", "key": "dsn"}, "tables": ["public.users"]}
)


def test_only_a_valid_postgres_spec_has_a_slot_to_drop() -> None:
    assert replication.postgres_spec({"schedule": {"cron": "@daily"}}) is None
    assert replication.postgres_spec({"postgres": {"tables": "not a list"}}) is None
    found = replication.postgres_spec(
        {
            "postgres": {
                "connectionSecretRef": {"name": "db", "key": "dsn"},
                "tables": ["public.users"],
            }
        }
    )
    assert found is not None and found.tables == ["public.users"]


def test_retry_delays_double_and_are_capped() -> None:
    assert [replication.retry_delay(n, 60) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


async def test_a_missing_secret_is_retried_then_abandoned_with_the_sql_to_run() -> None:
    first = await replication.drop(
        SPEC, NoSecrets(), namespace="shop", name="users-db", attempt=1, attempts=3
    )
    assert (first.verdict, first.reason, first.delay) == ("retry", "CleanupFailed", 1.0)
    assert "Secret shop/db" in first.message and "attempt 1 of 3" in first.message
    last = await replication.drop(
        SPEC, NoSecrets(), namespace="shop", name="users-db", attempt=3, attempts=3
    )
    assert (last.verdict, last.event_type, last.reason) == (
        "abandoned",
        "Warning",
        "CleanupAbandoned",
    )
    assert "SELECT pg_drop_replication_slot('tidings_shop_users_db_" in last.message
    assert 'DROP PUBLICATION IF EXISTS "tidings_shop_users_db_' in last.message


async def test_a_dsn_that_does_not_parse_is_a_failure_not_a_crash() -> None:
    outcome = await replication.drop(
        SPEC,
        NoSecrets(),
        namespace="shop",
        name="users-db",
        attempt=1,
        attempts=1,
        known_dsn="this is not = a dsn ' at all",
    )
    assert outcome.verdict == "abandoned"
    assert "ConnectionFailed" in outcome.message


def test_the_sql_by_hand_drops_a_named_publication_only_if_tidings_made_it() -> None:
    named = PostgresSource.model_validate(
        {
            "connectionSecretRef": {"name": "db", "key": "dsn"},
            "tables": ["public.users"],
            "publicationName": "app_pub",
        }
    )
    sql = replication.by_hand(named, "shop", "users-db")
    assert "SELECT pg_drop_replication_slot('tidings_shop_users_db_" in sql
    assert "if its comment says 'managed by tidings'" in sql and "app_pub" in sql
