"""Adapter status -> EventSource conditions, and `tidings source` argument rules."""

from __future__ import annotations

import json

import pytest

from tidings.sources.cli import UsageError, load_from_env, parse_ref
from tidings.sources.pgsetup import default_name
from tidings.sources.status import AdapterStatus, conditions


def test_no_status_yet_is_unknown() -> None:
    (ready,) = conditions(None, generation=3)
    assert (ready.type, ready.status, ready.reason) == (
        "Capturing",
        "Unknown",
        "AdapterNotReporting",
    )
    assert ready.observed_generation == 3


def test_a_retrying_adapter_is_not_ready_with_its_reason_and_message() -> None:
    status = AdapterStatus("Retrying", "TableNotFound", "spec.postgres.tables[0]: …", 1.0, 2.0)
    (ready,) = conditions(status)
    assert (ready.status, ready.reason) == ("False", "TableNotFound")
    assert ready.message.startswith("spec.postgres.tables[0]")
    assert ready.last_transition_time == "1970-01-01T00:00:01Z"


def test_retained_wal_over_the_threshold_is_a_warning_condition() -> None:
    details = {"walRetainedBytes": 3 << 20, "walThresholdBytes": 1 << 20, "slot": "s"}
    status = AdapterStatus("Running", "Streaming", "", 1.0, 2.0, details)
    ready, wal = conditions(status)
    assert ready.status == "True"
    assert (wal.type, wal.status, wal.reason) == ("WalRetained", "True", "RetainedWalOverThreshold")
    assert "maxRetainedWalBytes=1048576" in wal.message
    details["walRetainedBytes"] = 1000
    _, wal = conditions(AdapterStatus("Running", "Streaming", "", 1.0, 2.0, details))
    assert (wal.status, wal.reason) == ("False", "WithinThreshold")


@pytest.mark.parametrize("text", ["shop", "/users", "shop/", "a/b/c"])
def test_eventsource_must_be_namespace_slash_name(text: str) -> None:
    with pytest.raises(UsageError, match="NAMESPACE/NAME"):
        parse_ref(text)


def test_the_spec_can_come_from_the_environment() -> None:
    loaded = load_from_env(json.dumps({"schedule": {"cron": "@daily"}}), "shop", "daily")
    assert loaded.eventsource.spec.kind == "schedule"
    assert (loaded.eventsource.metadata.namespace, loaded.eventsource.metadata.name) == (
        "shop",
        "daily",
    )
    with pytest.raises(UsageError, match="TIDINGS_EVENTSOURCE_SPEC"):
        load_from_env('{"schedule": {}}', "shop", "daily")


def test_slot_names_are_valid_distinct_and_bounded() -> None:
    assert default_name("shop", "users-db").startswith("tidings_shop_users_db_")
    assert default_name("a-b", "c") != default_name("a", "b-c")
    long = default_name("n" * 63, "x" * 253)
    assert len(long) == 63 and long.replace("_", "").isalnum() and long == long.lower()


def test_a_publication_column_list_keeps_table_order_and_the_replica_identity() -> None:
    from tidings.sources.pgsetup import publication_columns

    ordered = ["id", "email", "name", "password_hash"]
    keep = publication_columns(ordered, ["name", "email"], ["id"], needs_identity=True)
    assert keep == ("id", "email", "name")
    insert_only = publication_columns(ordered, ["name"], ["id"], needs_identity=False)
    assert insert_only == ("name",)
    # REPLICA IDENTITY FULL: every column is identity, so no list at all.
    assert publication_columns(ordered, ["name"], None, needs_identity=True) is None
    # Only generated columns wanted (never in `ordered`): no empty list either.
    assert publication_columns(ordered, ["total"], [], needs_identity=False) is None
