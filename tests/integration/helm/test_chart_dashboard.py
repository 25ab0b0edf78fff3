"""The chart's Grafana dashboard, as `helm template` renders it, against a real
Prometheus (hack/build-promtool.sh builds the server) scraping a real `tidings dev`
with traffic made to fill every panel (tests/dashboard_stack.py): each panel's
query, with Grafana's template variables substituted as Grafana does, parses and
returns series, and those series show the state the traffic made."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helm_harness import Helm

from dashboard_stack import (
    PanelQuery,
    Prometheus,
    PromQLError,
    Stack,
    panel_queries,
    prometheus_binary,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

# Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval);
# a little more, so a late scrape under load leaves no gap.
SCRAPE = "1s"
RATE_INTERVAL = "10s"


@pytest.fixture(scope="module")
def dashboard(helm: Helm) -> dict[str, Any]:
    config_maps = [
        o
        for o in helm.render(set=["monitoring.dashboard.enabled=true"])
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")
    ]
    assert len(config_maps) == 1
    loaded: dict[str, Any] = json.loads(config_maps[0]["data"]["tidings.json"])
    return loaded


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_dsn: str) -> Iterator[Stack]:
    # A namespace of its own: the PostgreSQL slots are named after it.
    stack = Stack(
        tmp_path_factory.mktemp("dashboard"),
        namespace=f"dash-{uuid.uuid4().hex[:6]}",
        pg_dsn=pg_dsn,
        scrape_interval=SCRAPE,
    )
    try:
        stack.start(prometheus_binary())
        yield stack
    finally:
        stack.stop()


def answers(prometheus: Prometheus, queries: list[PanelQuery]) -> dict[PanelQuery, Any]:
    """Each query's instant result, or the PromQLError Prometheus gave."""
    found: dict[PanelQuery, Any] = {}
    for query in queries:
        try:
            found[query] = prometheus.query(query.expr)
        except PromQLError as error:
            found[query] = error
    return found


def values(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    """label value -> the sample's value, the highest where several series share
    it (NaN where every one is NaN)."""
    found: dict[str, float] = {}
    for sample in result:
        key, value = sample["metric"].get(label, ""), float(sample["value"][1])
        if key not in found or math.isnan(found[key]) or value > found[key]:
            found[key] = value
    return found


def by_title(found: dict[PanelQuery, Any], title: str, ref: str = "A") -> list[dict[str, Any]]:
    (result,) = [r for q, r in found.items() if q.panel == title and q.ref == ref]
    assert isinstance(result, list), result
    return result


def state_shown(found: dict[PanelQuery, Any], ns: str) -> list[str]:
    """What the traffic should have put on the dashboard and is not there yet."""
    missing: list[str] = []

    def expect(what: str, ok: bool) -> None:
        if not ok:
            missing.append(what)

    outcomes = values(by_title(found, "Deliveries per second by outcome"), "outcome")
    for outcome in ("delivered", "retried", "dead_lettered", "filtered"):
        expect(f"deliveries {outcome}", outcomes.get(outcome, 0) > 0)
    p99 = values(by_title(found, "Delivery latency (stored → delivered)"), "trigger")
    expect("a final latency", not math.isnan(p99.get(f"{ns}/invoices", math.nan)))
    first = values(by_title(found, "Delivery latency (stored → delivered)", "C"), "trigger")
    expect("a first-attempt latency", not math.isnan(first.get(f"{ns}/fulfilment", math.nan)))
    expect("a backlog", values(by_title(found, "Backlog"), "trigger").get(f"{ns}/warehouse", 0) > 0)
    oldest = values(by_title(found, "Oldest undelivered event"), "trigger")
    expect("an oldest undelivered age", oldest.get(f"{ns}/warehouse", 0) > 0)
    expiry = values(by_title(found, "Time to expiry"), "trigger")
    expect("a time to expiry under maxAge", 0 < expiry.get(f"{ns}/warehouse", 0) <= 3600)
    backoff = values(by_title(found, "Triggers in Backoff"), "trigger")
    expect("warehouse in Backoff", backoff.get(f"{ns}/warehouse") == 1)
    expect("fulfilment not in Backoff", backoff.get(f"{ns}/fulfilment") == 0)
    dead = values(by_title(found, "Dead letters"), "trigger")
    expect("refunds' dead letters", dead.get(f"{ns}/refunds", 0) > 0)
    retries = values(by_title(found, "Attempt duration and retries", "B"), "trigger")
    expect("invoices' retries", retries.get(f"{ns}/invoices", 0) > 0)
    errors = by_title(found, "Filter errors")
    expect(
        "big-orders' type errors",
        any(
            s["metric"] == {"trigger": f"{ns}/big-orders", "reason": "type"}
            and float(s["value"][1]) > 0
            for s in errors
        ),
    )
    codes = values(by_title(found, "Ingest"), "code")
    expect("ingest 202 and 401", codes.get("202", 0) > 0 and codes.get("401", 0) > 0)
    stored = by_title(found, "Ingest", "B")
    expect("events stored", bool(stored) and float(stored[0]["value"][1]) > 0)
    captured = values(by_title(found, "Events captured per second"), "eventsource")
    expect("users-db capturing events", captured.get(f"{ns}/users-db", 0) > 0)
    running = values(by_title(found, "Adapters capturing"), "eventsource")
    expect("users-db Running", running.get(f"{ns}/users-db") == 1)
    expect("legacy-db not Running", running.get(f"{ns}/legacy-db") == 0)
    adapter_errors = values(by_title(found, "Adapter errors and WAL retained"), "eventsource")
    expect("legacy-db's errors", adapter_errors.get(f"{ns}/legacy-db", 0) > 0)
    wal = values(by_title(found, "Adapter errors and WAL retained", "B"), "eventsource")
    expect("users-db's WAL retained", f"{ns}/users-db" in wal)
    return missing


def test_every_panel_query_parses_and_shows_the_state_of_real_traffic(
    dashboard: dict[str, Any], stack: Stack
) -> None:
    assert stack.prometheus is not None
    queries = panel_queries(dashboard, rate_interval=RATE_INTERVAL)
    assert len(queries) == 19
    assert len({(q.panel, q.ref) for q in queries}) == len(queries), "refIds repeat in a panel"
    # The state builds up within a minute or so (Backoff after three failures in a
    # row, the adapters' first report); poll until the dashboard shows all of it.
    deadline = time.monotonic() + 240
    while True:
        found = answers(stack.prometheus, queries)
        refused = {q.panel: str(r) for q, r in found.items() if isinstance(r, PromQLError)}
        assert not refused, refused  # a query that does not parse never will
        empty = [f"{q.panel} ({q.ref}): {q.expr}" for q, r in found.items() if not r]
        missing = state_shown(found, stack.namespace) if not empty else ["(empty panels)"]
        if not empty and not missing:
            break
        if time.monotonic() > deadline:
            raise AssertionError(
                f"after 240 s, panels without series: {empty}; state not shown: {missing}; "
                f"ingest answers {stack.sent}\n{stack.dev_log()[-3000:]}"
            )
        time.sleep(2)


def test_choosing_triggers_narrows_every_trigger_panel_to_them(
    dashboard: dict[str, Any], stack: Stack
) -> None:
    assert stack.prometheus is not None
    chosen = [f"{stack.namespace}/warehouse", f"{stack.namespace}/big-orders"]
    queries = panel_queries(dashboard, rate_interval=RATE_INTERVAL, triggers=chosen)
    per_trigger = [q for q in queries if "trigger=~" in q.expr]
    assert len(per_trigger) >= 12
    for query in per_trigger:
        result = stack.prometheus.query(query.expr)
        triggers = {s["metric"].get("trigger") for s in result}
        assert triggers <= set(chosen), (query.panel, triggers)
    backoff = next(q for q in per_trigger if q.panel == "Triggers in Backoff")
    assert {s["metric"]["trigger"] for s in stack.prometheus.query(backoff.expr)} == set(chosen)


def test_a_malformed_query_is_refused_by_prometheus(stack: Stack) -> None:
    """The check above would catch a broken panel: Prometheus refuses what does not parse."""
    assert stack.prometheus is not None
    with pytest.raises(PromQLError, match="bad_data"):
        stack.prometheus.query("sum by (trigger) (rate(tidings_deliveries_total[$__rate_interval]")


def test_the_configmap_holds_the_dashboard_file_unchanged(dashboard: dict[str, Any]) -> None:
    source = json.loads(
        (Path(__file__).resolve().parents[3] / "helm/tidings/dashboards/tidings.json").read_text()
    )
    assert dashboard == source
