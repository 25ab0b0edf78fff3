"""Status as a pure function: conditions that tell the truth, timestamps that hold still."""

from __future__ import annotations

from typing import Any

from tidings.api.routes import CompileError
from tidings.api.types import EventSourceSpec, EventSourceStatus, TriggerStatus
from tidings.operator import status
from tidings.operator.health import Reading
from tidings.operator.status import SourceFacts, TriggerFacts
from tidings.operator.world import AdapterEntry, SourceEntry
from tidings.sources.status import AdapterStatus, WalReading

URL = "http://mailer.shop.svc.cluster.local:8080/hook"
READY_SOURCE = SourceEntry(spec=EventSourceSpec.model_validate({"http": {}}), ready=True)


def facts(**overrides: Any) -> TriggerFacts:
    values: dict[str, Any] = {
        "namespace": "shop",
        "source": "users",
        "generation": 3,
        "paused": False,
        "source_entry": READY_SOURCE,
        "subscriber_url": URL,
        "subscriber_error": None,
        "compile_error": None,
        "reading": Reading(state="Delivering", lag=0, dead_lettered=0, expired=0),
    }
    values.update(overrides)
    return TriggerFacts(**values)


def by_type(built: TriggerStatus | EventSourceStatus) -> dict[str, dict[str, Any]]:
    """The conditions as written (wire form), by type."""
    return {c["type"]: c for c in built.to_wire()["conditions"]}


def build(f: TriggerFacts, current: TriggerStatus | None = None, now: str = "T1") -> TriggerStatus:
    return status.trigger_status(f, current, now=now, stale_after=120)


def test_a_trigger_status_is_written_in_the_crds_wire_form() -> None:
    written = build(facts(reading=Reading(state="Backoff", lag=4, failure_message="x"))).to_wire()
    conditions = written.pop("conditions")
    assert written == {
        "observedGeneration": 3,
        "subscriberURI": URL,
        "delivery": {"state": "Backoff", "lag": 4, "lastFailure": {"message": "x"}},
    }
    assert [(c["type"], c["status"], c["reason"]) for c in conditions] == [
        ("Ready", "True", "Ready"),
        ("SourceReady", "True", "SourceReady"),
        ("SubscriberResolved", "True", "SubscriberResolved"),
        ("Delivering", "False", "Backoff"),
    ]
    for condition in conditions:
        assert set(condition) == {
            "type",
            "status",
            "reason",
            "message",
            "observedGeneration",
            "lastTransitionTime",
        }
        assert (condition["observedGeneration"], condition["lastTransitionTime"]) == (3, "T1")


def test_a_trigger_without_a_report_or_a_route_writes_no_delivery() -> None:
    error = CompileError("SourceNotFound", "m")
    written = build(facts(reading=None, source_entry=None, compile_error=error)).to_wire()
    assert "delivery" not in written
    unrouted = facts(reading=Reading(state="Delivering"), source_entry=None, compile_error=error)
    assert "delivery" not in build(unrouted).to_wire()  # no route: nobody delivers it


def test_a_healthy_trigger_is_ready_and_delivering() -> None:
    built = build(facts()).to_wire()
    conditions = by_type(build(facts()))
    assert {t: c["status"] for t, c in conditions.items()} == {
        "Ready": "True",
        "SourceReady": "True",
        "SubscriberResolved": "True",
        "Delivering": "True",
    }
    assert built["observedGeneration"] == 3
    assert built["subscriberURI"] == URL
    assert all(c["observedGeneration"] == 3 for c in conditions.values())
    assert built["delivery"] == {"state": "Delivering", "lag": 0, "deadLettered": 0, "expired": 0}


def test_a_missing_source_is_source_not_found_and_not_ready() -> None:
    error = CompileError("SourceNotFound", "spec.source: EventSource shop/users not found")
    conditions = by_type(build(facts(source_entry=None, compile_error=error)))
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "SourceNotFound"
    assert conditions["SourceReady"]["reason"] == "SourceNotFound"
    assert "spec.source" in conditions["SourceReady"]["message"]
    assert conditions["Delivering"] == conditions["Delivering"] | {
        "status": "False",
        "reason": "NotReady",
    }


def test_a_missing_service_is_subscriber_not_found_with_the_compilers_message() -> None:
    error = CompileError("SubscriberNotFound", "spec.subscriber.ref: Service shop/mailer not found")
    built = build(facts(subscriber_url=None, subscriber_error=error, compile_error=error))
    conditions = by_type(built)
    assert conditions["SubscriberResolved"]["reason"] == "SubscriberNotFound"
    assert conditions["Ready"]["reason"] == "SubscriberNotFound"
    assert conditions["Ready"]["message"] == error.message
    assert "subscriberURI" not in built.to_wire()
    assert "state" not in built.to_wire().get("delivery", {})  # no route, nobody delivers


def test_an_invalid_filter_is_reported_with_the_compilers_message() -> None:
    error = CompileError("InvalidFilter", "spec.filter.expression: unknown variable foo")
    conditions = by_type(build(facts(compile_error=error)))
    assert (conditions["Ready"]["reason"], conditions["Ready"]["message"]) == (
        "InvalidFilter",
        error.message,
    )
    # The subscriber itself is fine: each condition tells its own truth.
    assert conditions["SubscriberResolved"]["status"] == "True"


def test_a_source_that_is_not_ready_makes_the_trigger_not_ready() -> None:
    entry = SourceEntry(spec=READY_SOURCE.spec, ready=False, message="Secret x not found")
    conditions = by_type(build(facts(source_entry=entry)))
    assert conditions["SourceReady"]["reason"] == "SourceNotReady"
    assert "Secret x not found" in conditions["SourceReady"]["message"]
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (
        "False",
        "SourceNotReady",
    )


def test_paused_shows_state_paused_before_dispatchers_report_it() -> None:
    built = build(facts(paused=True))
    assert built.to_wire()["delivery"]["state"] == "Paused"
    conditions = by_type(built)
    assert conditions["Ready"]["status"] == "True"
    assert (conditions["Delivering"]["status"], conditions["Delivering"]["reason"]) == (
        "False",
        "Paused",
    )


def test_backoff_is_delivering_false_naming_the_failure_but_still_ready() -> None:
    reading = Reading(state="Backoff", lag=40, failure_status=503, failure_message="unavailable")
    conditions = by_type(build(facts(reading=reading)))
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Delivering"]["reason"] == "Backoff"
    assert "HTTP 503: unavailable" in conditions["Delivering"]["message"]


def test_no_report_and_a_stale_report_are_unknown_not_a_guess() -> None:
    no_report = by_type(build(facts(reading=None)))["Delivering"]
    assert (no_report["status"], no_report["reason"]) == ("Unknown", "NoReport")
    stale = by_type(build(facts(stale=True)))["Delivering"]
    assert (stale["status"], stale["reason"]) == ("Unknown", "ReportStale")


def test_last_transition_time_is_kept_while_the_status_holds() -> None:
    first = build(facts(), now="T1")
    # Same situation later; a message change alone does not move the timestamp either.
    later = build(facts(subscriber_url=URL + "x"), first, now="T2")
    assert {c["lastTransitionTime"] for c in later.to_wire()["conditions"]} == {"T1"}
    broken = build(
        facts(source_entry=None, compile_error=CompileError("SourceNotFound", "m")), later, now="T3"
    )
    times = {t: c["lastTransitionTime"] for t, c in by_type(broken).items()}
    assert times["Ready"] == "T3" and times["SourceReady"] == "T3"
    assert times["SubscriberResolved"] == "T1"


def test_an_unchanged_situation_gives_identical_status() -> None:
    first = build(facts(), now="T1")
    again = build(facts(), first, now="T9")
    assert status.same(first, again)


def test_owned_keeps_only_our_fields_and_condition_types() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "Ready", "message": ""}
    live = {
        "observedGeneration": 1,
        "somethingElse": {"x": 1},
        "conditions": [ready, {"type": "WalRetained", "status": "False", "reason": "R"}],
    }
    mine = status.owned(live, TriggerStatus, status.TRIGGER_CONDITIONS)
    assert mine.to_wire() == {"observedGeneration": 1, "conditions": [ready]}
    assert status.owned(None, TriggerStatus, status.TRIGGER_CONDITIONS).to_wire() == {
        "conditions": []
    }


def test_a_live_status_the_schema_would_refuse_is_owned_as_empty() -> None:
    live = {"observedGeneration": "one", "conditions": [{"type": "Ready"}]}
    mine = status.owned(live, EventSourceStatus, status.SOURCE_CONDITIONS)
    assert mine.to_wire() == {"conditions": []}


def test_same_ignores_condition_order() -> None:
    def of(*conditions: tuple[str, str]) -> EventSourceStatus:
        return EventSourceStatus.model_validate(
            {"conditions": [{"type": t, "status": s, "reason": "R"} for t, s in conditions]}
        )

    a = of(("A", "True"), ("B", "False"))
    assert status.same(a, of(("B", "False"), ("A", "True")))
    assert not status.same(a, of(("A", "True")))


# --- EventSource -----------------------------------------------------------------------


def source_facts(**overrides: Any) -> SourceFacts:
    values: dict[str, Any] = {
        "namespace": "shop",
        "name": "users",
        "generation": 2,
        "kind": "http",
        "url": "http://tidings-ingest.tidings.svc.cluster.local/sources/shop/users",
        "compile_error": None,
        "adapter_expected": False,
        "adapter": None,
    }
    values.update(overrides)
    return SourceFacts(**values)


def test_an_http_source_is_ready_with_its_url() -> None:
    built = status.source_status(source_facts(), None, now="T1").to_wire()
    assert built == {
        "observedGeneration": 2,
        "url": "http://tidings-ingest.tidings.svc.cluster.local/sources/shop/users",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Ready",
                "message": f"accepting events at {built['url']}",
                "observedGeneration": 2,
                "lastTransitionTime": "T1",
            }
        ],
    }


def test_a_source_with_a_missing_secret_is_not_ready() -> None:
    error = CompileError("SecretNotFound", "spec.http.auth.tokenSecretRef: Secret shop/t not found")
    built = status.source_status(source_facts(compile_error=error), None, now="T1")
    ready = built.to_wire()["conditions"][0]
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "SecretNotFound",
        error.message,
    )


def test_an_adapter_source_is_ready_only_when_its_adapter_is_available() -> None:
    pending = source_facts(
        kind="postgres",
        url=None,
        adapter_expected=True,
        adapter=AdapterEntry("tidings-source-users", "h", 0, "0/1 ready"),
    )
    conditions = by_type(status.source_status(pending, None, now="T"))
    assert conditions["AdapterReady"]["reason"] == "AdapterUnavailable"
    assert "0/1 ready" in conditions["AdapterReady"]["message"]
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (
        "False",
        "AdapterUnavailable",
    )
    running = source_facts(
        kind="postgres",
        url=None,
        adapter_expected=True,
        adapter=AdapterEntry("tidings-source-users", "h", 1),
        report=streaming(),
    )
    conditions = by_type(status.source_status(running, None, now="T"))
    assert conditions["Ready"]["status"] == conditions["AdapterReady"]["status"] == "True"
    assert conditions["Capturing"]["reason"] == "Streaming"
    assert conditions["Ready"]["message"] == "capturing postgres events: streaming slot s"


def streaming(**details: Any) -> AdapterStatus:
    return AdapterStatus(
        "Running", "Streaming", "streaming slot s", 1.0, 2.0, {"slot": "s", **details}
    )


def adapter_source(**overrides: Any) -> SourceFacts:
    values: dict[str, Any] = {
        "kind": "postgres",
        "url": None,
        "adapter_expected": True,
        "adapter": AdapterEntry("tidings-source-users", "h", 1),
    }
    values.update(overrides)
    return source_facts(**values)


def conditions_of(
    f: SourceFacts, current: EventSourceStatus | None = None, now: str = "T"
) -> dict[str, dict[str, Any]]:
    return by_type(status.source_status(f, current, now=now))


def test_an_adapter_that_retries_makes_the_source_not_ready_with_its_own_reason() -> None:
    report = AdapterStatus(
        "Retrying", "TableNotFound", "spec.postgres.tables[0]: public.users not found", 1.0, 2.0
    )
    for deployment in (AdapterEntry("a", "h", 1), AdapterEntry("a", "h", 0, "crash loop")):
        conditions = conditions_of(adapter_source(adapter=deployment, report=report))
        assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (
            "False",
            "TableNotFound",
        )
        assert conditions["Ready"]["message"] == report.message
        assert (conditions["Capturing"]["status"], conditions["Capturing"]["reason"]) == (
            "False",
            "TableNotFound",
        )


def test_an_available_adapter_that_has_not_reported_is_unknown_not_ready() -> None:
    conditions = conditions_of(adapter_source(report=None))
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (
        "Unknown",
        "AdapterNotReporting",
    )
    assert conditions["Capturing"]["status"] == "Unknown"


def test_a_compile_error_wins_over_the_adapters_report() -> None:
    error = CompileError("SecretNotFound", "spec.postgres.connectionSecretRef: …")
    conditions = conditions_of(adapter_source(compile_error=error, report=streaming()))
    assert conditions["Ready"]["reason"] == "SecretNotFound"
    assert conditions["Capturing"]["status"] == "True"  # the old adapter still runs


def test_capturing_keeps_its_transition_time_while_it_holds() -> None:
    first = status.source_status(adapter_source(report=streaming()), None, now="T1")
    again = status.source_status(adapter_source(report=streaming()), first, now="T2")
    assert again == first
    broken = AdapterStatus("Retrying", "ConnectionFailed", "no route to host", 3.0, 4.0)
    moved = conditions_of(adapter_source(report=broken), first, now="T3")
    assert moved["Capturing"]["lastTransitionTime"] == "T3"
    assert moved["AdapterReady"]["lastTransitionTime"] == "T1"


def test_retained_wal_and_a_recreated_slot_are_warning_conditions_posted_once() -> None:
    quiet = status.source_status(
        adapter_source(report=streaming(walRetainedBytes=10, walThresholdBytes=1 << 20)),
        None,
        now="T1",
    )
    assert by_type(quiet)["WalRetained"]["status"] == "False"
    assert "ChangesMissed" not in by_type(quiet)
    report = streaming(
        walRetainedBytes=5 << 20,
        walThresholdBytes=1 << 20,
        slotRecreated={"at": "2026-11-28T10:00:00Z", "afterLsn": "0/16B3748"},
    )
    loud = status.source_conditions(adapter_source(report=report))
    by = {w.type: w for w in loud}
    assert (by["WalRetained"].status, by["WalRetained"].reason) == (
        "True",
        "RetainedWalOverThreshold",
    )
    assert "retains more WAL than" in by["WalRetained"].message
    assert (by["ChangesMissed"].status, by["ChangesMissed"].reason) == ("True", "SlotRecreated")
    assert "0/16B3748" in by["ChangesMissed"].message
    assert by["Ready"].status == "True"  # a warning, not an outage
    assert [w.type for w in status.warnings(quiet.conditions, loud)] == [
        "WalRetained",
        "ChangesMissed",
    ]
    written = status.source_status(adapter_source(report=report), quiet, now="T2")
    assert status.warnings(written.conditions, loud) == []


def test_a_growing_wal_within_the_threshold_does_not_change_status() -> None:
    small = adapter_source(report=streaming(walRetainedBytes=10, walThresholdBytes=1 << 20))
    larger = adapter_source(report=streaming(walRetainedBytes=9000, walThresholdBytes=1 << 20))
    first = status.source_status(small, None, now="T1")
    assert status.source_status(larger, first, now="T2") == first


def test_the_operators_own_wal_reading_counts_while_the_adapter_is_down() -> None:
    stopped = AdapterStatus(
        "Stopped", "Stopped", "the adapter was stopped", 1.0, 2.0, {"walRetainedBytes": 10}
    )
    over = WalReading("s", 5 << 20, 1 << 20)
    for report in (stopped, None):
        by = {w.type: w for w in status.source_conditions(adapter_source(report=report, wal=over))}
        assert (by["WalRetained"].status, by["WalRetained"].reason) == (
            "True",
            "RetainedWalOverThreshold",
        )
        assert by["Ready"].status != "True"


# --- FilterErrors ---------------------------------------------------------------------


def filtering(checked: int | None, errors: int | None) -> Reading:
    return Reading(
        state="Delivering",
        lag=0,
        filter_errors=errors,
        filter_error_reason="type",
        filter_error_message="No such overload",
        filter_recent_checked=checked,
        filter_recent_errors=errors,
    )


def test_a_filter_failing_on_most_events_raises_filter_errors_naming_the_fix() -> None:
    failing = by_type(build(facts(has_expression=True, name="mail", reading=filtering(10, 6))))
    condition = failing["FilterErrors"]
    assert (condition["status"], condition["reason"]) == ("True", "FilterErrors")
    assert "type: No such overload" in condition["message"]
    assert "tidings replay shop/mail --all" in condition["message"]
    assert failing["Ready"]["status"] == "True"  # routed: the expression compiles


def test_a_filter_failing_on_a_minority_or_nothing_is_filter_errors_false() -> None:
    for checked, errors in ((10, 5), (10, 0), (0, 0)):
        condition = by_type(build(facts(has_expression=True, reading=filtering(checked, errors))))
        assert condition["FilterErrors"]["status"] == "False", (checked, errors)
        assert condition["FilterErrors"]["reason"] == "FilterEvaluates"


def test_filter_errors_is_unknown_before_a_report_and_absent_without_expression() -> None:
    unknown = by_type(build(facts(has_expression=True, reading=filtering(None, None))))
    assert unknown["FilterErrors"]["status"] == "Unknown"
    assert "FilterErrors" not in by_type(build(facts(reading=filtering(10, 9))))
    broken = CompileError("InvalidFilter", "spec.filter.expression: bad")
    assert "FilterErrors" not in by_type(
        build(facts(has_expression=True, compile_error=broken, reading=filtering(10, 9)))
    )


def test_the_filter_error_count_and_last_error_are_in_status_delivery() -> None:
    delivery = build(facts(has_expression=True, reading=filtering(10, 6))).to_wire()["delivery"]
    assert delivery["filterErrors"] == 6
    assert delivery["lastFilterError"] == {"reason": "type", "message": "No such overload"}


def test_filter_errors_turning_true_is_one_warning() -> None:
    before = build(facts(has_expression=True, reading=filtering(10, 0))).conditions
    wanted = status.trigger_conditions(
        facts(has_expression=True, reading=filtering(10, 9)), stale_after=120
    )
    posted = status.warnings(before, wanted, types=("FilterErrors",))
    assert [w.reason for w in posted] == ["FilterErrors"]
    after = build(facts(has_expression=True, reading=filtering(10, 9))).conditions
    assert status.warnings(after, wanted, types=("FilterErrors",)) == []
