"""W3C Trace Context handling and the OTEL_* switch (pure functions; the spans
themselves are tested against a real Jaeger in tests/integration)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from tidings.api import tracing
from tidings.api.process import JsonFormatter, event_fields
from tidings.api.settings import SettingsError

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_parsed_and_formatted_back() -> None:
    context = tracing.parse_traceparent(GOOD, "rojo=00f067aa0ba902b7")
    assert context is not None
    assert context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert context.span_id == 0x00F067AA0BA902B7
    assert context.flags == 1
    assert context.state == "rojo=00f067aa0ba902b7"
    assert context.traceparent == GOOD


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        GOOD + "-extra",  # version 00 has exactly four fields
    ],
)
def test_an_invalid_traceparent_is_ignored(value: str) -> None:
    assert tracing.parse_traceparent(value) is None


@pytest.mark.parametrize("state", ["a=1\r\nX-Evil: 1", "a=1\x01", "a=\ud800", "a=ü"])
def test_a_tracestate_that_could_never_be_sent_is_dropped_and_the_traceparent_kept(
    state: str,
) -> None:
    context = tracing.parse_traceparent(GOOD, state)
    assert context is not None and context.traceparent == GOOD and context.state == ""


def test_a_future_version_may_carry_more_fields() -> None:
    context = tracing.parse_traceparent("01" + GOOD[2:] + "-what-comes-next")
    assert context is not None and context.span_id == 0x00F067AA0BA902B7


def test_the_events_own_extension_wins_over_the_request_header() -> None:
    other = "00-11111111111111111111111111111111-2222222222222222-00"
    headers = {"traceparent": GOOD, "tracestate": "a=1"}
    own = tracing.incoming_context({"traceparent": other}, headers)
    assert own is not None and own.traceparent == other and own.state == ""
    from_header = tracing.incoming_context({}, headers)
    assert from_header is not None and from_header.traceparent == GOOD
    assert from_header.state == "a=1"


def test_stamping_stores_the_context_and_drops_an_invalid_one() -> None:
    extensions = {"traceparent": "nonsense", "tracestate": "x=1", "other": "kept"}
    tracing.stamp(extensions, None)
    assert extensions == {"other": "kept"}
    tracing.stamp(extensions, tracing.parse_traceparent(GOOD, "a=1"))
    assert extensions == {"other": "kept", "traceparent": GOOD, "tracestate": "a=1"}


def test_with_tracing_off_the_stored_context_is_forwarded_as_it_is() -> None:
    headers: dict[str, str] = {}
    tracing.forward_headers({"id": "1", "traceparent": GOOD, "tracestate": "a=1"}, headers)
    assert headers == {"traceparent": GOOD, "tracestate": "a=1"}
    headers = {}
    tracing.forward_headers({"id": "1"}, headers)
    assert headers == {}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),  # off by default
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1"}, None),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask(
    env: dict[str, str], expected: str | None
) -> None:
    assert tracing.exporter_choice(env) == expected


def test_an_unsupported_exporter_or_protocol_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        tracing.exporter_choice({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
        tracing.otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert tracing.otlp_protocol({}) == "http/protobuf"
    assert tracing.otlp_protocol({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}) == "grpc"


def test_derived_ids_are_stable_distinct_and_never_zero() -> None:
    first = tracing.derived_id(64, "trace", "ns/t", "1-0", "1")
    assert first == tracing.derived_id(64, "trace", "ns/t", "1-0", "1")
    assert first != tracing.derived_id(64, "trace", "ns/t", "1-0", "2")
    assert 0 < first < 2**64
    assert 0 < tracing.derived_id(128, "stream", "1-0") < 2**128


def test_with_tracing_off_no_process_loads_the_tracing_sdk_or_an_exporter() -> None:
    """Zero cost when off: setup() imports nothing, and no span processor, exporter
    or gRPC is loaded. (redis-py 8 itself imports OpenTelemetry's metrics SDK when
    it is installed, to offer its own opt-in metrics; that is not tracing.)"""
    code = (
        "import sys, tidings.dispatcher.cli, tidings.sources.cli, tidings.cli.dev;"
        "from tidings.api import tracing;"
        "before = set(sys.modules);"
        "assert tracing.setup('t', {}) is None;"
        "assert set(sys.modules) == before, set(sys.modules) - before;"
        "print(sorted(m for m in sys.modules if m.startswith("
        "('opentelemetry.sdk.trace', 'opentelemetry.exporter', 'grpc'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_json_logs_carry_the_event_fields() -> None:
    event = {"id": "order-42", "traceparent": GOOD}
    record = logging.LogRecord("tidings.test", logging.INFO, __file__, 1, "hello", None, None)
    for name, value in event_fields(event, source="shop/orders", trigger="shop/mailer").items():
        setattr(record, name, value)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello"
    assert line["trigger"] == "shop/mailer"
    assert line["source"] == "shop/orders"
    assert line["event_id"] == "order-42"
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "trace_id" not in event_fields({"id": "x"}, source="shop/orders")
