"""The recorded slot re-creation as a status detail, and when an EventSource
counts as being deleted."""

from __future__ import annotations

from tidings.sources.cli import being_deleted
from tidings.sources.postgres import (
    RECREATED_AFTER_LSN,
    RECREATED_AT,
    slot_recreated,
)
from tidings.sources.status import AdapterStatus, conditions


def test_a_slot_never_recreated_adds_no_detail() -> None:
    assert slot_recreated({"lsn": "0/1A2B", "origin": "7301"}) is None


def test_a_recorded_recreation_becomes_the_detail_the_operator_reads() -> None:
    state = {RECREATED_AT: "2026-11-28T17:30:00Z", RECREATED_AFTER_LSN: "0/1A2B"}
    detail = slot_recreated(state)
    assert detail == {"at": "2026-11-28T17:30:00Z", "afterLsn": "0/1A2B"}
    reported = AdapterStatus("Running", "Streaming", details={"slot": "s", "slotRecreated": detail})
    missed = [c for c in conditions(reported) if c.type == "ChangesMissed"]
    assert [(c.status, c.reason) for c in missed] == [("True", "SlotRecreated")]
    assert "0/1A2B" in missed[0].message and "2026-11-28T17:30:00Z" in missed[0].message


def test_an_eventsource_is_being_deleted_once_it_has_a_deletion_timestamp() -> None:
    assert being_deleted({"name": "db", "deletionTimestamp": "2026-11-28T17:30:00Z"})
    assert not being_deleted({"name": "db"})
    assert not being_deleted({"name": "db", "deletionTimestamp": None})
