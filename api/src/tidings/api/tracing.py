"""Traces: W3C Trace Context in and out, and OpenTelemetry spans when asked for.

Off by default. The standard variables turn it on and configure it
(docs/observability.md): `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`)
set, or `OTEL_TRACES_EXPORTER=otlp|console`; `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none` keeps it off. The OpenTelemetry SDK is imported
only then: with tracing off a process never loads it, and the hot path pays
one `is None` test per delivery.

What travels with an event, on or off, is its trace context, stored as the
CloudEvents distributed-tracing extension (`traceparent`, `tracestate`):

- ingest takes it from the event's own extension (structured and batch mode),
  else from the request's `traceparent`/`tracestate` headers (binary mode, plain
  JSON, or a structured event without the extension);
- with tracing on, ingest starts one PRODUCER span per event (`send NS/SOURCE`)
  as a child of that context, and stores the span's context instead; source
  adapters start a new trace per event the same way;
- each delivery attempt is a CLIENT span (`deliver NS/TRIGGER`), a child of the
  stored context, and the subscriber gets its `traceparent` header (every
  format). With tracing off the stored context is passed on as it is, so a
  producer's trace still reaches the subscriber.

Retries are spans of the same trace, each linked to the attempt before it.
No attempt's span id is stored anywhere: a counted attempt's span id is derived
from (trace, Trigger, stream entry, attempt number), so whichever replica makes
attempt 3 can link to attempt 2. Events stored without a context get a trace id
derived from their stream entry, so all their attempts share one trace too.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidings.api.settings import SettingsError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

    from tidings.api.events import CloudEvent
    from tidings.api.routes import Route

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
SYSTEM = "tidings"  # messaging.system

# version-traceid-spanid-flags; a future version may append fields (W3C Trace Context).
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_TRACESTATE_MAX = 512


@dataclass(frozen=True, slots=True)
class Context:
    """A W3C trace context: ids as ints, `state` the raw tracestate header."""

    trace_id: int
    span_id: int
    flags: int
    state: str = ""

    @property
    def traceparent(self) -> str:
        return format_traceparent(self.trace_id, self.span_id, self.flags)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def parse_traceparent(value: str | None, state: str | None = None) -> Context | None:
    """The context of a `traceparent` value, or None when it is not a valid one
    (W3C: an invalid traceparent is ignored, never repaired)."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    state = (state or "").strip()[:_TRACESTATE_MAX]
    if not (state.isascii() and state.isprintable()):
        # W3C: printable ASCII only. A CR, LF, control character or lone surrogate
        # (JSON lets "\ud800" in) could never be sent on: the state is dropped, the
        # traceparent and the event kept.
        state = ""
    return Context(trace_id, span_id, int(flags_hex, 16), state)


def trace_id_of(event: Mapping[str, Any]) -> str | None:
    """The hex trace id of a stored event (its `traceparent`), for log fields."""
    value = event.get(TRACEPARENT)
    if isinstance(value, str) and len(value) >= 35:
        return value[3:35]
    return None


def incoming_context(
    event_extensions: Mapping[str, str], headers: Mapping[str, str]
) -> Context | None:
    """An ingested event's context: its own extension, else the request's headers."""
    own = event_extensions.get(TRACEPARENT)
    if own is not None:
        return parse_traceparent(own, event_extensions.get(TRACESTATE))
    return parse_traceparent(headers.get(TRACEPARENT), headers.get(TRACESTATE))


def stamp(extensions: MutableMapping[str, str], context: Context | None) -> None:
    """Store `context` as the event's distributed-tracing extension (or drop an
    invalid one the producer sent: it would only mislead the subscriber)."""
    extensions.pop(TRACEPARENT, None)
    extensions.pop(TRACESTATE, None)
    if context is not None:
        extensions[TRACEPARENT] = context.traceparent
        if context.state:
            extensions[TRACESTATE] = context.state


def forward_headers(event: Mapping[str, Any], headers: MutableMapping[str, str]) -> None:
    """Tracing off: pass the stored context on to the subscriber as it is."""
    traceparent = event.get(TRACEPARENT)
    if isinstance(traceparent, str):
        headers[TRACEPARENT] = traceparent
        state = event.get(TRACESTATE)
        if isinstance(state, str) and state:
            headers[TRACESTATE] = state


# --- configuration ------------------------------------------------------------------------


def _env_true(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() == "true"


def exporter_choice(env: Mapping[str, str] = os.environ) -> str | None:
    """`otlp`, `console`, or None (off), from the standard variables; SettingsError
    names the variable when its value is not one Tidings supports."""
    if _env_true(env, "OTEL_SDK_DISABLED"):
        return None
    chosen = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not chosen:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return "otlp" if endpoint else None
    if chosen == "none":
        return None
    if chosen not in ("otlp", "console"):
        raise SettingsError(
            f"OTEL_TRACES_EXPORTER={chosen!r}: Tidings exports traces with otlp or console "
            "(or none); e.g. OTEL_TRACES_EXPORTER=otlp"
        )
    return chosen


def otlp_protocol(env: Mapping[str, str] = os.environ) -> str:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or ""
    ).strip() or "http/protobuf"
    if protocol not in ("http/protobuf", "grpc"):
        raise SettingsError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use http/protobuf (the default) or grpc"
        )
    return protocol


# The span id the next span gets, when a counted attempt derives it (see the module doc).
_FORCED_SPAN_ID: contextvars.ContextVar[int] = contextvars.ContextVar("span_id", default=0)
_FORCED_TRACE_ID: contextvars.ContextVar[int] = contextvars.ContextVar("trace_id", default=0)


def derived_id(bits: int, *parts: str) -> int:
    """A non-zero id of `bits` bits from `parts`: the same everywhere, every time."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=bits // 8).digest()
    return int.from_bytes(digest, "big") or 1


class Tracer:
    """Spans of one process. Built by `setup` only when tracing is on."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
        from opentelemetry.trace.span import TraceState
        from opentelemetry.trace.status import Status, StatusCode

        self.provider = provider
        self._tracer = provider.get_tracer("tidings")
        self._trace = trace
        self._Link = Link
        self._NonRecordingSpan = NonRecordingSpan
        self._SpanContext = SpanContext
        self._SpanKind = SpanKind
        self._TraceFlags = TraceFlags
        self._TraceState = TraceState
        self._Status = Status
        self._StatusCode = StatusCode

    # --- contexts --------------------------------------------------------------------

    def _span_context(self, context: Context) -> Any:
        state = None
        if context.state:
            state = self._TraceState.from_header([context.state])
        return self._SpanContext(
            context.trace_id,
            context.span_id,
            is_remote=True,
            trace_flags=self._TraceFlags(context.flags),
            trace_state=state,
        )

    def _parent(self, context: Context | None) -> Any:
        if context is None:
            return None
        return self._trace.set_span_in_context(self._NonRecordingSpan(self._span_context(context)))

    @staticmethod
    def context_of(span: Span) -> Context:
        sc = span.get_span_context()
        state = sc.trace_state.to_header() if sc.trace_state else ""
        return Context(sc.trace_id, sc.span_id, int(sc.trace_flags), state)

    # --- producers: ingest and adapters -------------------------------------------------

    def start_send(
        self,
        event: CloudEvent,
        source_id: str,
        operation: str,
        parent: Context | None,
        source_kind: str = "http",
    ) -> Span:
        """A PRODUCER span for storing `event` in `source_id`'s stream (a child
        of `parent`, or a new trace); the event carries the span's context from now on.
        `operation`: `ingest` (HTTP) or `capture` (a source adapter)."""
        attributes: dict[str, Any] = {
            "tidings.source.kind": source_kind,
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": operation,
            "messaging.destination.name": source_id,
            "messaging.message.id": event.id,
            "cloudevents.event_id": event.id,
            "cloudevents.event_source": event.source,
            "cloudevents.event_type": event.type,
            "cloudevents.event_spec_version": "1.0",
            "tidings.source": source_id,
        }
        if event.subject is not None:
            attributes["cloudevents.event_subject"] = event.subject
        span = self._tracer.start_span(
            f"send {source_id}",
            context=self._parent(parent),
            kind=self._SpanKind.PRODUCER,
            attributes=attributes,
        )
        stamp(event.extensions, self.context_of(span))
        return span

    def end_send(self, span: Span, stream_id: str | None, duplicate: bool = False) -> None:
        if stream_id:
            span.set_attribute("tidings.stream_id", stream_id)
        if duplicate:
            span.set_attribute("tidings.duplicate", True)
        span.end()

    def capture(self, events: list[CloudEvent], source_id: str, source_kind: str) -> list[Span]:
        """A source adapter's events: each starts a new trace here."""
        return [self.start_send(e, source_id, "capture", None, source_kind) for e in events]

    def end_captured(self, spans: list[Span], skipped: int, first_id: str, last_id: str) -> None:
        """After an adapter's atomic write: the first `skipped` events were written
        before (a replay after a crash), the rest between `first_id` and `last_id`."""
        for index, span in enumerate(spans):
            if index < skipped:
                span.set_attribute("tidings.duplicate", True)
            elif len(spans) - skipped == 1:
                span.set_attribute("tidings.stream_id", first_id)
            span.end()

    def fail_send(self, span: Span, message: str) -> None:
        span.set_status(self._Status(self._StatusCode.ERROR, message))
        span.set_attribute("error.type", "not_stored")
        span.end()

    # --- delivery -----------------------------------------------------------------------

    def start_attempt(
        self,
        route: Route,
        event: Mapping[str, Any],
        stream_id: str,
        attempt: int,
        *,
        counted: bool,
        consumer: str,
        headers: MutableMapping[str, str],
    ) -> Span:
        """A CLIENT span for attempt number `attempt` of delivering `event` to
        `route`'s subscriber; puts its `traceparent` into `headers`.

        `counted`: the attempt spends one of the event's attempts and is the only
        one with its number (not a Backoff probe, not a reclaimed entry), so its span
        id is derived and the next attempt can link to it."""
        stored = parse_traceparent(event.get(TRACEPARENT), event.get(TRACESTATE))
        if stored is not None:
            trace_id = stored.trace_id
            parent = self._parent(stored)
        else:
            # No stored context: the entry's attempts still share one trace.
            trace_id = derived_id(128, route.stream, stream_id)
            parent = None
        trace_hex = f"{trace_id:032x}"
        links = []
        if attempt > 1:
            previous = derived_id(64, trace_hex, route.id, stream_id, str(attempt - 1))
            flags = stored.flags if stored is not None else 1
            linked = self._SpanContext(
                trace_id, previous, is_remote=True, trace_flags=self._TraceFlags(flags)
            )
            links.append(self._Link(linked, {"tidings.attempt": attempt - 1}))
        url = route.subscriber_url
        source_id = f"{route.namespace}/{route.source}"
        attributes: dict[str, Any] = {
            "http.request.method": "POST",
            "url.full": url,
            "server.address": _host(url),
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "deliver",
            "messaging.destination.name": source_id,
            "messaging.destination.subscription.name": route.id,
            "messaging.consumer.group.name": route.group,
            "messaging.message.id": str(event.get("id", "")),
            "messaging.client.id": consumer,
            "cloudevents.event_id": str(event.get("id", "")),
            "cloudevents.event_source": str(event.get("source", "")),
            "cloudevents.event_type": str(event.get("type", "")),
            "tidings.trigger": route.id,
            "tidings.source": source_id,
            "tidings.stream_id": stream_id,
            "tidings.attempt": attempt,
            "tidings.format": route.delivery.format,
        }
        port = _port(url)
        if port:
            attributes["server.port"] = port
        if "subject" in event:
            attributes["cloudevents.event_subject"] = str(event["subject"])
        span_token = trace_token = None
        if counted:
            span_token = _FORCED_SPAN_ID.set(
                derived_id(64, trace_hex, route.id, stream_id, str(attempt))
            )
        if parent is None:
            trace_token = _FORCED_TRACE_ID.set(trace_id)
        try:
            span = self._tracer.start_span(
                f"deliver {route.id}",
                context=parent,
                kind=self._SpanKind.CLIENT,
                attributes=attributes,
                links=links,
            )
        finally:
            if span_token is not None:
                _FORCED_SPAN_ID.reset(span_token)
            if trace_token is not None:
                _FORCED_TRACE_ID.reset(trace_token)
        context = self.context_of(span)
        headers[TRACEPARENT] = context.traceparent
        if context.state:
            headers[TRACESTATE] = context.state
        else:
            headers.pop(TRACESTATE, None)
        return span

    def end_attempt(
        self,
        span: Span,
        *,
        status: int | None,
        outcome: str,
        error_type: str | None,
        message: str | None,
        retry_in: float | None = None,
    ) -> None:
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        span.set_attribute("tidings.outcome", outcome)
        if retry_in is not None:
            span.set_attribute("tidings.retry.delay_seconds", retry_in)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(self._Status(self._StatusCode.ERROR, message or error_type))
        span.end()


def _host(url: str) -> str:
    rest = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    return rest.split(":", 1)[0]


def _port(url: str) -> int:
    rest = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    tail = rest.rsplit("]", 1)[-1]
    if ":" in tail and tail.rsplit(":", 1)[1].isdigit():
        return int(tail.rsplit(":", 1)[1])
    return 443 if url.startswith("https:") else 80


# --- the process's tracer -----------------------------------------------------------------

_tracer: Tracer | None = None


def tracer() -> Tracer | None:
    """This process's Tracer, or None when tracing is off (the common case)."""
    return _tracer


def setup(service_name: str, env: Mapping[str, str] = os.environ) -> Tracer | None:
    """Turn tracing on when the OTEL_* variables ask for it; None otherwise, having
    imported nothing. SettingsError names a variable Tidings cannot honour."""
    global _tracer
    exporter = exporter_choice(env)
    if exporter is None:
        return None
    protocol = otlp_protocol(env) if exporter == "otlp" else ""
    if _tracer is not None:
        return _tracer
    _tracer = Tracer(_provider(service_name, exporter, protocol))
    log.info(
        "tracing on: %s%s, service %s",
        exporter,
        f" ({protocol})" if protocol else "",
        _tracer.provider.resource.attributes.get("service.name"),
    )
    return _tracer


def shutdown() -> None:
    """Export what is buffered and stop (at process exit)."""
    global _tracer
    if _tracer is not None:
        _tracer.provider.shutdown()
        _tracer = None


def _provider(service_name: str, exporter: str, protocol: str) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class DerivedIds(RandomIdGenerator):
        """Random ids, except where a counted attempt derives its own."""

        def generate_span_id(self) -> int:
            return _FORCED_SPAN_ID.get() or super().generate_span_id()

        def generate_trace_id(self) -> int:
            return _FORCED_TRACE_ID.get() or super().generate_trace_id()

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the process's own name.
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    span_exporter: SpanExporter
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        span_exporter = GrpcExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        span_exporter = HttpExporter()
    # The sampler comes from OTEL_TRACES_SAMPLER(_ARG), batching from OTEL_BSP_*.
    provider = TracerProvider(resource=resource, id_generator=DerivedIds())
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider
