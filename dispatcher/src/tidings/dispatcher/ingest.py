"""Ingest: CloudEvents over HTTP into a source's stream.

    POST /sources/{namespace}/{name}     202 once the events are stored
    GET  /healthz                        the process is alive
    GET  /readyz                         Redis answers and the routing table is loaded
    GET  /metrics                        Prometheus text, from the registry given

The request's mode is chosen by its headers:

- `Content-Type: application/cloudevents-batch+json` — batch: a JSON array of
  structured events, stored in one pipelined round trip;
- `Content-Type: application/cloudevents+json` — structured: one JSON event;
- a `ce-specversion` header — binary: attributes in `ce-*` headers, the body
  is the data (parsed when its Content-Type is JSON, stored as bytes otherwise);
- any other JSON Content-Type — plain JSON, wrapped in a CloudEvent: a new
  UUID id (or the `Idempotency-Key` header, so retries dedupe), `source` the
  EventSource's API path, `type` from `?type=` (default `dev.tidings.http.event`),
  optional `?subject=`, `time` now.

An objectStore source in notify mode takes only S3 event notifications (the
`{"Records": [...]}` JSON the stores POST, whatever their Content-Type): each
record for the source's bucket, prefix, suffix and events becomes one
CloudEvent (tidings.api.s3events); the others are counted as `ignored`. A body
that is not such a notification is 400 naming the field.

Auth follows the compiled EventSource: a bearer token, an HMAC-SHA256 of the
body in a header (hex, optionally `sha256=`-prefixed, as GitHub and most
webhook senders do; with `hmacTimestampHeader`, of `<timestamp>.<body>` and
only within `hmacTolerance`), Standard Webhooks signatures (webhook-id,
webhook-timestamp, webhook-signature), any one of those configured, or
nothing when `allowAnonymous`. A replay of a signed request inside its
tolerance carries the same event id (the sender's, the webhook-id, or a digest
of the timestamped signature for plain JSON) and is answered as a duplicate.
Notify sources also take the token as `?token=` (Versity Gateway and Ceph RGW
cannot set headers). Missing credentials are 401, wrong
ones 403.

Delayed delivery: an event may ask to be delivered no earlier than a time —
its CloudEvents extension `deliverafter` (RFC 3339), or for every event of the
request without one, a `Tidings-Deliver-After` header or `?deliverAfter=`
(an RFC 3339 time, or a duration from now such as `30s`, written into the
events as `deliverafter`). Further ahead than the source's `maxDelay`
(spec.http.maxDelay, default 168h) is 400 naming the limit; a time in the
past is no delay.

Each event's W3C trace context is stored with it as the CloudEvents
distributed-tracing extension (`traceparent`, `tracestate`): its own, else the
request's `traceparent` header; with tracing on, the context of a span started
here for the event (tidings.api.tracing). An invalid traceparent is dropped.

202 is sent only after XADD returned (and WAIT, when `wait_replicas` is set);
a Redis failure is 503 with Retry-After, never 202. Ids seen within the
dedupe window are answered 202 again and listed under `duplicates`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDictProxy
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client import Histogram as PromHistogram
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from tidings.api import codec, tracing
from tidings.api.codec import BATCH, STRUCTURED
from tidings.api.durations import DurationError, format_duration, parse_duration
from tidings.api.events import (
    DELIVER_AFTER,
    DELIVER_AFTER_HEADER,
    CloudEvent,
    new_id,
    now_rfc3339,
    parse_rfc3339_ms,
)
from tidings.api.process import event_fields
from tidings.api.routes import CompiledIngest, CompiledSource
from tidings.api.s3events import KeyFilter, NotificationError, events_from_notification
from tidings.api.sealing import OpenedSecrets, Sealer, SealError
from tidings.dispatcher import streams
from tidings.dispatcher.routing import TableWatcher
from tidings.dispatcher.streams import AppendResult

log = logging.getLogger(__name__)

DEFAULT_TYPE = "dev.tidings.http.event"
ROUTE = "/sources/{namespace}/{name}"

# Called after each stored request with its source, events and what became of them.
AppendHook = Callable[[CompiledSource, list[CloudEvent], AppendResult], None]


class IngestError(Exception):
    """A request we refuse; the message names the field and the fix."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return web.json_response({"error": self.message}, status=self.status, headers=self.headers)


# --- parsing (pure) -------------------------------------------------------------------


def event_from_plain_json(
    source: CompiledSource,
    body: bytes,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    message_id: str | None = None,
) -> CloudEvent:
    """Plain JSON, wrapped: see the module docstring for the attributes it gets."""
    data = codec.parse_json(body, "body")
    event_type = query.get("type", DEFAULT_TYPE)
    if not event_type:
        raise codec.FormatError(
            "type query parameter: must not be empty; e.g. ?type=com.example.created"
        )
    subject = query.get("subject") or None
    event_id = headers.get("Idempotency-Key") or message_id or new_id()
    # Query values and headers can carry undecodable bytes; ids and types must be text.
    codec.check_unicode(event_type, "type query parameter")
    codec.check_unicode(subject or "", "subject query parameter")
    codec.check_unicode(event_id, "Idempotency-Key (or webhook-id) header")
    return CloudEvent(
        id=event_id,
        source=source.api_path,
        type=event_type,
        data=data,
        subject=subject,
        time=now_rfc3339(),
        datacontenttype="application/json",
    )


def parse_events(
    source: CompiledSource,
    headers: Mapping[str, str],
    body: bytes,
    query: Mapping[str, str] | None = None,
    message_id: str | None = None,
) -> list[CloudEvent]:
    """The events of one request, or IngestError(400/415) naming what is wrong.
    `message_id` (of a verified signature) is the id of a plain JSON event
    without an Idempotency-Key."""
    try:
        return _parse_events(source, headers, body, query or {}, message_id)
    except codec.FormatError as error:
        raise IngestError(error.status, error.message) from None


def parse_notification(source: CompiledSource, body: bytes) -> tuple[list[CloudEvent], int]:
    """The events of an S3 event notification to an objectStore notify source,
    and how many records it ignored; IngestError(400) naming what is wrong."""
    store = source.object_store
    assert store is not None
    wanted = KeyFilter(store.prefix, store.suffix, frozenset(store.events))
    try:
        notification = events_from_notification(body, bucket=store.bucket, wanted=wanted)
    except NotificationError as error:
        raise IngestError(
            400, f"S3 event notification: {error} (configure the store to POST its records here)"
        ) from None
    return notification.events, notification.ignored


def _parse_events(
    source: CompiledSource,
    headers: Mapping[str, str],
    body: bytes,
    query: Mapping[str, str],
    message_id: str | None,
) -> list[CloudEvent]:
    media = codec.media_type(headers.get("Content-Type"))
    if media == BATCH:
        return codec.from_batch(body)
    if media == STRUCTURED:
        return [codec.from_structured(codec.parse_json(body, "body"))]
    if "ce-specversion" in headers:
        return [codec.from_binary(headers, body)]
    if any(header.lower().startswith("ce-") for header in headers):
        raise codec.FormatError(
            "ce-specversion header: required for binary mode; set ce-specversion: 1.0"
        )
    if codec.is_json_media(media):
        return [event_from_plain_json(source, body, query, headers, message_id)]
    if media.startswith("application/cloudevents"):
        raise codec.FormatError(
            f"Content-Type {media}: only the JSON event format is supported ({STRUCTURED})", 415
        )
    raise codec.FormatError(
        f"Content-Type {media or '(none)'}: send application/json, {STRUCTURED}, {BATCH}, "
        "or a binary-mode CloudEvent with ce-* headers",
        415,
    )


DELIVER_AFTER_QUERY = "deliverAfter"


def _requested_delay(
    headers: Mapping[str, str], query: Mapping[str, str], now_ms: int
) -> tuple[str, str] | None:
    """The request-wide deliver-after (header, else query) as (RFC 3339, where)."""
    for value, where in (
        (headers.get(DELIVER_AFTER_HEADER), f"{DELIVER_AFTER_HEADER} header"),
        (query.get(DELIVER_AFTER_QUERY), f"{DELIVER_AFTER_QUERY} query parameter"),
    ):
        if value is None:
            continue
        value = value.strip()
        if parse_rfc3339_ms(value) is not None:
            return value, where
        try:
            seconds = parse_duration(value, field=where)
        except DurationError:
            raise IngestError(
                400,
                f"{where}: {value!r} is neither an RFC 3339 time (2026-11-29T10:00:00Z) "
                "nor a duration from now (30s, 15m, 2h)",
            ) from None
        due = datetime.fromtimestamp(now_ms / 1000 + seconds, UTC)
        return due.isoformat(timespec="milliseconds").replace("+00:00", "Z"), where
    return None


def apply_delays(
    events: list[CloudEvent],
    headers: Mapping[str, str],
    query: Mapping[str, str],
    max_delay: float,
    now_ms: int,
) -> None:
    """Check each event's `deliverafter` (set from the header or query when it has
    none) against `max_delay` seconds; IngestError(400) naming the field and the
    limit. Nothing is stored when one event of the request is refused."""
    requested = _requested_delay(headers, query, now_ms)
    for index, event in enumerate(events):
        where = f"[{index}].{DELIVER_AFTER}" if len(events) > 1 else DELIVER_AFTER
        value = event.extensions.get(DELIVER_AFTER)
        if value is None and requested is not None:
            value, where = requested
            event.extensions[DELIVER_AFTER] = value
        if value is None:
            continue
        due = parse_rfc3339_ms(value)
        if due is None:
            raise IngestError(
                400, f"{where}: {value!r} is not an RFC 3339 time, e.g. 2026-11-29T10:00:00Z"
            )
        ahead = (due - now_ms) / 1000
        if ahead > max_delay:
            raise IngestError(
                400,
                f"{where}: {value} is {format_duration(ahead)} from now, beyond this "
                f"EventSource's maxDelay of {format_duration(max_delay)} "
                "(spec.http.maxDelay); deliver sooner or raise maxDelay",
            )


# --- auth (pure) ----------------------------------------------------------------------


def check_auth(
    ingest: CompiledIngest,
    headers: Mapping[str, str],
    body: bytes | None,
    unseal: Callable[[str], str],
    query: Mapping[str, str] | None = None,
    now: float | None = None,
) -> str | None:
    """Pass, or raise IngestError 401 (no credentials) / 403 (wrong credentials).

    `body` may be None when no signature is configured (the check then needs no
    body). `query` holds `token` for sources with `token_in_query` (objectStore
    notify). Returns the id of a verified signed message (webhook-id, or a digest
    of a timestamped HMAC): a plain JSON body takes it as its event id, so a
    replay within the tolerance is a duplicate, not a second event.
    """
    presented = False
    in_query = (query or {}).get("token") if ingest.token_in_query else None
    if (
        ingest.token_sealed is not None
        and in_query is not None
        and not headers.get("Authorization")
    ):
        expected = unseal(ingest.token_sealed).encode()
        if not in_query or not hmac.compare_digest(in_query.encode(), expected):
            raise IngestError(403, "token query parameter: the token is not valid")
        return None
    if ingest.token_sealed is not None:
        authorization = headers.get("Authorization", "")
        if authorization:
            presented = True
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise IngestError(401, "Authorization header: expected `Bearer <token>`")
            expected = unseal(ingest.token_sealed).encode()
            if not hmac.compare_digest(token.strip().encode(), expected):
                raise IngestError(403, "Authorization header: the bearer token is not valid")
            return None
    if ingest.webhook_secrets and headers.get("webhook-signature"):
        assert body is not None, "Standard Webhooks need the body"
        return _check_standard_webhooks(ingest, headers, body, unseal, now)
    if ingest.hmac_secret_sealed is not None:
        signature = headers.get(ingest.hmac_header, "")
        if signature:
            presented = True
            assert body is not None, "HMAC auth needs the body"
            return _check_hmac(ingest, signature, headers, body, unseal, now)
    if presented or ingest.allow_anonymous:
        return None
    wanted = []
    if ingest.token_sealed is not None:
        wanted.append("an Authorization: Bearer <token> header")
        if ingest.token_in_query:
            wanted.append("the token as ?token=<token>")
    if ingest.hmac_secret_sealed is not None:
        signed = "the body"
        if ingest.hmac_timestamp_header is not None:
            signed = f"<{ingest.hmac_timestamp_header}>.<body>, with that header,"
        wanted.append(f"an HMAC-SHA256 signature of {signed} in {ingest.hmac_header}")
    if ingest.webhook_secrets:
        wanted.append("Standard Webhooks headers webhook-id, webhook-timestamp, webhook-signature")
    raise IngestError(
        401,
        "credentials required: send " + " or ".join(wanted or ["credentials"]),
        headers={"WWW-Authenticate": "Bearer"} if ingest.token_sealed else None,
    )


def _check_timestamp(value: str, header: str, tolerance: float, now: float | None) -> int:
    """The Unix-seconds timestamp of a signed request, or 401/403 naming the header."""
    if not value:
        raise IngestError(401, f"{header} header: required with the signature (Unix seconds)")
    try:
        timestamp = int(value.strip())
    except ValueError:
        raise IngestError(401, f"{header} header: expected Unix seconds, e.g. 1767225600") from None
    skew = (time.time() if now is None else now) - timestamp
    if abs(skew) > tolerance:
        raise IngestError(
            403,
            f"{header} header: {timestamp} is {abs(skew):.0f}s {'old' if skew > 0 else 'ahead'}, "
            f"outside the tolerance of {tolerance:g}s (a replayed request, or a clock off; "
            "sign with the current time)",
        )
    return timestamp


def _check_standard_webhooks(
    ingest: CompiledIngest,
    headers: Mapping[str, str],
    body: bytes,
    unseal: Callable[[str], str],
    now: float | None,
) -> str:
    """Standard Webhooks: v1,<base64 HMAC-SHA256 of `id.timestamp.body`>, any of
    the space-separated signatures by any of the source's secrets."""
    msg_id = headers.get("webhook-id", "").strip()
    if not msg_id:
        raise IngestError(401, "webhook-id header: required with webhook-signature")
    timestamp = _check_timestamp(
        headers.get("webhook-timestamp", ""), "webhook-timestamp", ingest.webhook_tolerance, now
    )
    content = f"{msg_id}.{timestamp}.".encode() + body
    given = [
        sig.encode()
        for version, _, sig in (
            part.partition(",") for part in headers["webhook-signature"].split()
        )
        if version == "v1"
    ]
    for sealed in ingest.webhook_secrets:
        key = base64.b64decode(unseal(sealed).removeprefix("whsec_"))
        expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
        if any(hmac.compare_digest(sig, expected) for sig in given):
            return msg_id
    raise IngestError(
        403,
        "webhook-signature header: no v1 signature matches (expected v1,<base64 HMAC-SHA256 of "
        "webhook-id.webhook-timestamp.body> with one of the source's whsec_ secrets)",
    )


def _check_hmac(
    ingest: CompiledIngest,
    signature: str,
    headers: Mapping[str, str],
    body: bytes,
    unseal: Callable[[str], str],
    now: float | None,
) -> str | None:
    """Hex HMAC-SHA256 of the body, or of `<timestamp>.<body>` with a timestamp header."""
    given = signature.strip()
    if given.lower().startswith("sha256="):
        given = given[len("sha256=") :]
    content, signed = body, "the raw body"
    stamp_header = ingest.hmac_timestamp_header
    if stamp_header is not None:
        timestamp = _check_timestamp(
            headers.get(stamp_header, ""), stamp_header, ingest.hmac_tolerance, now
        )
        content, signed = f"{timestamp}.".encode() + body, f"<{stamp_header}>.<raw body>"
    key = unseal(ingest.hmac_secret_sealed or "").encode()
    expected_hex = hmac.new(key, content, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(given.lower().encode(), expected_hex.encode()):
        raise IngestError(
            403,
            f"{ingest.hmac_header} header: the signature does not match "
            f"(expected hex HMAC-SHA256 of {signed}, optionally prefixed sha256=)",
        )
    if stamp_header is None:
        return None  # body-only: nothing tells a resend from a replay
    return hashlib.sha256(f"{stamp_header}.{expected_hex}".encode()).hexdigest()[:32]


# --- metrics ----------------------------------------------------------------------------


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "tidings_ingest_requests",
            "Ingest requests by source and HTTP status.",
            ["source", "code"],
            registry=registry,
        )
        self.events = Counter(
            "tidings_ingest_events",
            "Events received by source and outcome (accepted, duplicate).",
            ["source", "outcome"],
            registry=registry,
        )
        self.latency = PromHistogram(
            "tidings_ingest_request_seconds",
            "Time from request start to answer, for requests that reached a known source.",
            ["source"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5),
            registry=registry,
        )
        # The label children, looked up once: `labels()` takes a lock and builds a
        # tuple on every call, a few µs of each request. Keys are known sources
        # (or "") and status codes, so these stay small.
        self._requests: dict[tuple[str, int], Counter] = {}
        self._events: dict[tuple[str, str], Counter] = {}
        self._latency: dict[str, PromHistogram] = {}

    def count_request(self, source: str, status: int) -> None:
        child = self._requests.get((source, status))
        if child is None:
            child = self._requests[source, status] = self.requests.labels(source, str(status))
        child.inc()

    def count_events(self, source: str, outcome: str, count: int) -> None:
        child = self._events.get((source, outcome))
        if child is None:
            child = self._events[source, outcome] = self.events.labels(source, outcome)
        child.inc(count)

    def observe_latency(self, source: str, seconds: float) -> None:
        child = self._latency.get(source)
        if child is None:
            child = self._latency[source] = self.latency.labels(source)
        child.observe(seconds)


# --- the server -----------------------------------------------------------------------


class Ingest:
    """The request handlers and what they share. Create with `build_app`."""

    def __init__(
        self,
        redis: Redis,
        watcher: TableWatcher,
        registry: CollectorRegistry,
        sealer: Sealer,
        *,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        redis_timeout: float = 5.0,
        on_append: AppendHook | None = None,
    ) -> None:
        self.redis = redis
        self.watcher = watcher
        self.registry = registry
        self.sealer = sealer
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self.on_append = on_append
        self.metrics = IngestMetrics(registry)
        # Concurrent requests to one source share script calls (streams.Coalescer).
        self.appender = streams.Coalescer(
            redis,
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
            timeout=redis_timeout + (wait_timeout if wait_replicas > 0 else 0.0),
        )
        self._opened = OpenedSecrets(sealer)
        self.draining = False

    def start_draining(self) -> None:
        """The process is stopping: every answer from now on says
        `Connection: close`, so a producer's keep-alive connection ends after
        it and the producer's next request opens a new one, which the Service
        sends to another dispatcher; /readyz turns 503."""
        self.draining = True

    async def close_while_draining(
        self, request: web.Request, response: web.StreamResponse
    ) -> None:
        if self.draining:
            # aiohttp wrote its headers before this hook: say it, then do it.
            response.headers["Connection"] = "close"
            response.force_close()

    def unseal(self, sealed: str) -> str:
        return self._opened.unseal(sealed)

    async def post_events(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        label = ""  # only known sources get their own series (no cardinality attacks)
        try:
            source = self._source(namespace, name)
            label = source.id
            response = await self._ingest(request, source)
        except IngestError as error:
            response = error.response()
        except SealError as error:
            # The operator sealed with another key: no request can pass until fixed.
            log.error("ingest into %s: %s", label, error)
            response = IngestError(500, f"server misconfigured: {error}").response()
        if label:
            self.metrics.observe_latency(label, time.perf_counter() - started)
        self.metrics.count_request(label, response.status)
        return response

    def _source(self, namespace: str, name: str) -> CompiledSource:
        if not self.watcher.loaded.is_set():
            raise IngestError(
                503, "not ready: the routing table is not loaded yet", {"Retry-After": "1"}
            )
        source = self.watcher.current.sources.get(f"{namespace}/{name}")
        if source is None or source.ingest is None:
            what = (
                "exists but takes no POSTs (not http, not objectStore notify)"
                if source
                else "not found"
            )
            raise IngestError(
                404,
                f"EventSource {namespace}/{name} {what}; POST to an EventSource with spec.http "
                f"or spec.objectStore in notify mode (kubectl get eventsources -n {namespace})",
            )
        return source

    async def _ingest(self, request: web.Request, source: CompiledSource) -> web.Response:
        ingest = source.ingest
        assert ingest is not None
        headers: CIMultiDictProxy[str] = request.headers
        signed = ingest.hmac_secret_sealed is not None or bool(ingest.webhook_secrets)
        if not signed:
            # Refuse unauthenticated requests before reading their bodies.
            check_auth(ingest, headers, None, self.unseal, request.query)
        body = await read_body(request, ingest.max_body_bytes)
        message_id = None
        if signed:
            message_id = check_auth(ingest, headers, body, self.unseal, request.query)
        ignored = 0
        if source.object_store is not None:
            events, ignored = parse_notification(source, body)
        else:
            events = parse_events(source, headers, body, request.query, message_id)
            apply_delays(events, headers, request.query, ingest.max_delay, int(time.time() * 1000))
        result = await self._traced_append(source, events, headers)
        self.metrics.count_events(source.id, "accepted", len(result.accepted))
        if result.duplicates:
            self.metrics.count_events(source.id, "duplicate", len(result.duplicates))
        if self.on_append is not None:
            self.on_append(source, events, result)
        answer: dict[str, object] = {
            "accepted": [e.event_id for e in result.accepted],
            "duplicates": [e.event_id for e in result.duplicates],
        }
        if source.object_store is not None:
            answer["ignored"] = ignored  # records of other buckets, keys or changes
        return web.json_response(answer, status=202)

    async def _traced_append(
        self, source: CompiledSource, events: list[CloudEvent], headers: Mapping[str, str]
    ) -> AppendResult:
        """Append, with each event's trace context stored (tidings.api.tracing):
        a span of ours per event when tracing is on, the producer's context when off."""
        tracer = tracing.tracer()
        if tracer is None:
            for event in events:
                tracing.stamp(event.extensions, tracing.incoming_context(event.extensions, headers))
            result = await self._append(source, events)
        else:
            spans = [
                tracer.start_send(
                    event, source.id, "ingest", tracing.incoming_context(event.extensions, headers)
                )
                for event in events
            ]
            try:
                result = await self._append(source, events)
            except IngestError as error:
                for span in spans:
                    tracer.fail_send(span, error.message)
                raise
            for span, appended in zip(spans, result.events, strict=True):
                tracer.end_send(span, appended.stream_id, appended.duplicate)
        if log.isEnabledFor(logging.DEBUG):
            for event, appended in zip(events, result.events, strict=True):
                log.debug(
                    "%s event %s in %s as %s",
                    "duplicate" if appended.duplicate else "stored",
                    event.id,
                    source.id,
                    appended.stream_id,
                    extra=event_fields(event.attributes(), source=source.id),
                )
        return result

    async def _append(self, source: CompiledSource, events: list[CloudEvent]) -> AppendResult:
        try:
            # Within redis_timeout (+ WAIT's): the appender holds every call to it.
            result = await self.appender.append(source, events)
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("ingest into %s failed: Redis: %s", source.id, error or type(error))
            raise IngestError(
                503,
                f"not stored: Redis is unavailable ({type(error).__name__}); retry, "
                "the same event id is accepted once",
                {"Retry-After": "1"},
            ) from None
        if result.replicas is not None and result.replicas < self.wait_replicas:
            raise IngestError(
                503,
                f"stored on the primary, but only {result.replicas} of {self.wait_replicas} "
                f"replicas acknowledged within {self.wait_timeout:g}s; retry, the same event id "
                "is accepted once",
                {"Retry-After": "1"},
            )
        return result

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"ready": False, "reason": "stopping (SIGTERM)"}, status=503)
        if not self.watcher.loaded.is_set():
            return web.json_response(
                {"ready": False, "reason": "the routing table is not loaded yet"}, status=503
            )
        try:
            async with asyncio.timeout(1.0):
                await self.redis.ping()
        except (RedisError, OSError, TimeoutError) as error:
            return web.json_response(
                {"ready": False, "reason": f"Redis unreachable: {type(error).__name__} {error}"},
                status=503,
            )
        table = self.watcher.current
        return web.json_response(
            {
                "ready": True,
                "tableVersion": table.version,
                "sources": len(table.sources),
                "routes": len(table.routes),
            }
        )

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, or IngestError(413) as soon as it exceeds `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except web.RequestPayloadError as error:
        # A Content-Encoding that does not decode (found by the fuzzer: it was a 500).
        encoding = request.headers.get("Content-Encoding", "")
        raise IngestError(
            400,
            f"body: cannot be read ({str(error).splitlines()[0]}; Content-Encoding "
            f"{encoding or '(none)'}); send it uncompressed or compressed as it says",
        ) from None
    except ConnectionResetError:
        # The client went away mid-body: nothing is stored, and nobody reads the answer.
        raise IngestError(400, "body: the connection closed before the body ended") from None
    return b"".join(chunks)


def _too_large(limit: int) -> IngestError:
    return IngestError(
        413,
        f"body: larger than this EventSource's limit of {limit} bytes "
        "(spec.http.maxBodyBytes); send smaller events or split the batch",
    )


class _QuietBadRequests(logging.Filter):
    """aiohttp logs every request it cannot parse (a bad header, a broken body) as an
    ERROR with a traceback, after answering it 400: a client's mistake, not ours, and
    a flood of them must not flood the log. They go to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        # RequestPayloadError: a body that does not decode, met while aiohttp drains
        # what a refused request (401, 413) left unread.
        client_error = isinstance(error, web.RequestPayloadError) or (
            isinstance(error, HttpProcessingError) and (error.code or 0) < 500
        )
        if client_error:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info = None
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            record.msg = f"{record.msg}: {detail}"
            return logging.getLogger("aiohttp.server").isEnabledFor(logging.DEBUG)
        return True


_SERVER_LOG_FILTER = _QuietBadRequests()


INGEST: web.AppKey[Ingest] = web.AppKey("ingest", Ingest)


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """The `Expect` header: 100-continue is answered, anything else refused with
    417. aiohttp's own handler echoes the value into its 417, and a value that
    is not ASCII made that a 500 (found by the ingest fuzz test)."""
    if request.version != (1, 1):
        return None
    if request.headers.get("Expect", "").lower() != "100-continue":
        return IngestError(417, "Expect: only 100-continue is understood").response()
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the 100 is not part of the response's size
    return None


def _refused(
    status: int, message: str, **headers: str
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def refuse(request: web.Request) -> web.Response:
        return IngestError(status, message, headers).response()

    return refuse


_NOT_FOUND = _refused(
    404,
    "no such path: POST events to /sources/<namespace>/<name>; GET /healthz, /readyz and /metrics",
)


def build_app(
    redis: Redis,
    watcher: TableWatcher,
    registry: CollectorRegistry,
    sealer: Sealer,
    *,
    wait_replicas: int = 0,
    wait_timeout: float = 1.0,
    redis_timeout: float = 5.0,
    on_append: AppendHook | None = None,
) -> web.Application:
    """The ingest, health and metrics endpoints as one aiohttp application.

    The caller owns `watcher` (start it before serving; /readyz reports 503
    until it has loaded the table) and `redis`. `/metrics` serves everything in
    `registry`, the ingest counters included. With `wait_replicas` > 0 every
    append waits up to `wait_timeout` seconds for that many replicas (WAIT)
    and answers 503 if fewer acknowledged. An append that takes longer than
    `redis_timeout` seconds (plus `wait_timeout` with WAIT) is answered 503
    too, so a hung Redis cannot hold requests; the retry is safe (dedupe).
    `on_append` is called after each stored request (`tidings dev` prints
    from it). Raises ValueError for WAIT on a Redis Cluster client.
    """
    if wait_replicas > 0 and isinstance(redis, RedisCluster):
        raise ValueError(f"wait_replicas={wait_replicas}: {streams.CLUSTER_WAIT}")
    ingest = Ingest(
        redis,
        watcher,
        registry,
        sealer,
        wait_replicas=wait_replicas,
        wait_timeout=wait_timeout,
        redis_timeout=redis_timeout,
        on_append=on_append,
    )
    server_log = logging.getLogger("aiohttp.server")
    if _SERVER_LOG_FILTER not in server_log.filters:
        server_log.addFilter(_SERVER_LOG_FILTER)
    app = web.Application()
    app[INGEST] = ingest
    app.on_response_prepare.append(ingest.close_while_draining)
    # Every path and method has a route of ours, with ingest's Expect handler: for
    # aiohttp's own 404 and 405, its default handler answered a value that is not
    # ASCII with a 500 (found by the fuzz test).
    app.router.add_post(ROUTE, ingest.post_events, expect_handler=expect_continue)
    not_post = _refused(405, "method not allowed: POST events here", Allow="POST")
    app.router.add_route("*", ROUTE, not_post, expect_handler=expect_continue)
    for path, handler in (
        ("/healthz", ingest.healthz),
        ("/readyz", ingest.readyz),
        ("/metrics", ingest.metrics_text),
    ):
        app.router.add_get(path, handler, expect_handler=expect_continue)
        not_get = _refused(405, f"method not allowed: GET {path}", Allow="GET, HEAD")
        app.router.add_route("*", path, not_get, expect_handler=expect_continue)
    # Last: subapplications (the console of `tidings dev`) resolve before it.
    app.router.add_route("*", "/{path:.*}", _NOT_FOUND, expect_handler=expect_continue)
    return app
