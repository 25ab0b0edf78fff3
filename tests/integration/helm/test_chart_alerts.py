"""The chart's Grafana dashboard and PrometheusRule, as `helm template` renders them:
the rules pass `promtool check rules` and their unit tests (`promtool test rules`,
alerts_test.yaml: every alert fires when it should and not otherwise), and every
metric the rules and the dashboard read is one Tidings serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_harness import Helm, kinds
from prometheus_client import CollectorRegistry

from tidings.dispatcher.ingest import IngestMetrics
from tidings.dispatcher.metrics import DispatchMetrics
from tidings.sources.metrics import SourceMetrics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
UNIT_TESTS = Path(__file__).parent / "alerts_test.yaml"
ON = ["monitoring.prometheusRule.enabled=true", "monitoring.dashboard.enabled=true"]
ALERTS = {
    "TidingsTriggerInBackoff",
    "TidingsDeadLettersRising",
    "TidingsOldestUndeliveredTooOld",
    "TidingsEventsAboutToExpire",
    "TidingsAdapterNotCapturing",
    "TidingsFilterErrors",
}


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool built from Go modules by hack/build-promtool.sh (cached), or $PROMTOOL."""
    built = subprocess.run(
        ["bash", str(REPO / "hack" / "build-promtool.sh")],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert built.returncode == 0, (
        "promtool is needed: hack/build-promtool.sh builds it with Go from the module "
        f"proxy, or set PROMTOOL=/path/to/promtool\n{built.stderr[-2000:]}"
    )
    return built.stdout.strip().splitlines()[-1]


def rendered(helm: Helm, kind: str, *more: str) -> dict[str, Any]:
    """The one object of `kind` the monitoring values add (other ConfigMaps skipped)."""
    objects = [
        o
        for o in helm.render(set=[*ON, *more])
        if o["kind"] == kind
        and (kind != "ConfigMap" or o["metadata"]["name"].endswith("-dashboard"))
    ]
    assert len(objects) == 1, f"one {kind} expected, got {len(objects)}"
    return objects[0]


def served_metrics() -> set[str]:
    """Every series name the dispatchers, ingest and adapters expose."""
    registry = CollectorRegistry()
    DispatchMetrics(registry)
    IngestMetrics(registry)
    SourceMetrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
        }.get(family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def metrics_in(expr: str) -> set[str]:
    return set(re.findall(r"\btidings_[a-z0-9_]+", expr))


def test_rules_pass_promtool_check_and_every_alert_its_unit_tests(
    helm: Helm, promtool: str, tmp_path: Path
) -> None:
    rule = rendered(helm, "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    shutil.copy(UNIT_TESTS, tmp_path / "alerts_test.yaml")
    checked = subprocess.run(
        [promtool, "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    unit_tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    tested_alerts = {t["alertname"] for test in unit_tests for t in test["alert_rule_test"]}
    assert tested_alerts == ALERTS
    # Each alert has a case where it fires and one where it does not.
    for alert in ALERTS:
        cases = [
            t for test in unit_tests for t in test["alert_rule_test"] if t["alertname"] == alert
        ]
        assert any(c["exp_alerts"] for c in cases) and any(not c["exp_alerts"] for c in cases)


def test_thresholds_come_from_values(helm: Helm) -> None:
    rule = rendered(
        helm,
        "PrometheusRule",
        "monitoring.prometheusRule.alerts.backoff.for=45m",
        "monitoring.prometheusRule.alerts.timeToExpiry.seconds=600",
        "monitoring.prometheusRule.labels.release=prom",
        "monitoring.prometheusRule.extraLabels.team=payments",
    )
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(rules) == ALERTS
    assert rules["TidingsTriggerInBackoff"]["for"] == "45m"
    assert rules["TidingsEventsAboutToExpire"]["expr"].endswith("< 600")
    assert all(r["labels"]["team"] == "payments" for r in rules.values())
    assert rule["metadata"]["labels"]["release"] == "prom"


def test_rules_and_dashboard_read_only_metrics_tidings_serves(helm: Helm) -> None:
    served = served_metrics()
    rule = rendered(helm, "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert metrics_in(r["expr"]) <= served, r["alert"]
    dashboard = json.loads(
        rendered(helm, "ConfigMap", "monitoring.dashboard.labels.x=y")["data"]["tidings.json"]
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 12
    used = set().union(*(metrics_in(e) for e in exprs))
    assert used <= served, used - served
    for name in (
        "tidings_delivery_latency_seconds_bucket",
        "tidings_oldest_undelivered_age_seconds",
        "tidings_backlog_events",
        "tidings_time_to_expiry_seconds",
    ):
        assert name in used


def test_the_dashboard_is_a_configmap_for_grafanas_sidecar(helm: Helm) -> None:
    config_map = rendered(
        helm, "ConfigMap", "monitoring.dashboard.annotations.grafana_folder=Tidings"
    )
    meta = config_map["metadata"]
    assert meta["labels"]["grafana_dashboard"] == "1"
    assert meta["annotations"] == {"grafana_folder": "Tidings"}
    dashboard = json.loads(config_map["data"]["tidings.json"])
    assert dashboard["uid"] == "tidings-overview"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "trigger"}


def test_both_are_off_by_default(helm: Helm) -> None:
    found = kinds(helm.render())
    assert "PrometheusRule" not in found
    assert not [
        o
        for o in helm.render()
        if o["kind"] == "ConfigMap" and "dashboard" in o["metadata"]["name"]
    ]


def test_a_malformed_threshold_is_refused_naming_the_value(helm: Helm) -> None:
    done = helm.template(set=[*ON, "monitoring.prometheusRule.alerts.backoff.for=soon"])
    assert done.returncode != 0
    assert "backoff" in done.stderr and "for" in done.stderr
