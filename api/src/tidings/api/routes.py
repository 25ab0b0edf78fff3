"""The compiled route format: what crosses from the control plane to the data plane.

The operator (and `tidings dev`) compile each Trigger and EventSource once into
a `Route` / `CompiledSource`: durations in seconds, every default filled, the
subscriber URL resolved, secrets sealed. Dispatchers read only these; they never
call the Kubernetes API. Format changes bump FORMAT.

Compiling is a pure function of the spec and a `World` (what exists: sources,
Services, Secrets), so it is tested without a cluster and shared by the
operator and `tidings dev`.
"""

from __future__ import annotations

import base64
import binascii
import functools
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from tidings.api import keys
from tidings.api.destinations import CLUSTER, DestinationPolicy
from tidings.api.destinations import REASON as DESTINATION_NOT_ALLOWED
from tidings.api.durations import parse_duration
from tidings.api.expressions import compile_expression
from tidings.api.sealing import Sealer
from tidings.api.tls import TLSConfigError, client_context

# The API types are the compiler's input: its functions import them, so a
# dispatcher, which reads only the compiled formats, does not build their
# pydantic models at start.
if TYPE_CHECKING:
    from tidings.api.types import (
        DeliverySpec,
        Destination,
        EventSourceSpec,
        Filter,
        ReplaySpec,
        SecretKeyRef,
        TriggerGrantSpec,
        TriggerSpec,
    )

FORMAT = 1
CLUSTER_DOMAIN = "cluster.local"
CROSS_NAMESPACE_NOT_ALLOWED = "CrossNamespaceNotAllowed"


DEAD_LETTER_MAX_AGE = 30 * 24 * 3600.0  # seconds
DEAD_LETTER_MAX_EVENTS = 100_000
MAX_DELAY = 7 * 24 * 3600.0  # seconds: spec.http.maxDelay's default
ATTEMPT_LOG_MAX_AGE = 24 * 3600.0  # seconds
ATTEMPT_LOG_MAX_ENTRIES = 10_000
# delivery.backoff's defaults (tidings.dispatcher.backoff_state has the rule).
BACKOFF_FAILURE_RATIO = 0.9
BACKOFF_MIN_ATTEMPTS = 5
BACKOFF_MAX_PROBE_INTERVAL = 300.0  # seconds


def default_backoff_window(initial_delay: float) -> float:
    """Twice the first retry delay, 1 s to 5 min: long enough that a window holds the
    retries of the first attempts it saw fail, so a subscriber failing only first
    attempts never looks down; short enough that a down one enters Backoff soon."""
    return min(300.0, max(1.0, 2 * initial_delay))


class Internal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CompiledFilter(Internal):
    types: list[str] = []
    attributes: dict[str, str] = {}
    prefix: dict[str, str] = {}
    expression: str | None = None


class CompiledRetry(Internal):
    max_attempts: int
    backoff: Literal["exponential", "linear", "fixed"]
    initial_delay: float  # seconds
    max_delay: float
    jitter: float
    retry_after_max: float
    retry_on: list[str]


class CompiledTLS(Internal):
    """delivery.tls, sealed PEM: a CA bundle, and a client certificate with its key."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


class CompiledDelivery(Internal):
    format: Literal["binary", "structured", "data"]
    timeout: float  # seconds
    retry: CompiledRetry
    max_age: float  # seconds
    dead_letter_url: str | None = None
    # The DLQ's bounds. Left out of the JSON while at their defaults, so that
    # dispatchers older than these fields (which refuse unknown fields) keep
    # reading the routes of an operator upgraded before them.
    dead_letter_max_age: float = Field(
        DEAD_LETTER_MAX_AGE, exclude_if=lambda v: v == DEAD_LETTER_MAX_AGE
    )  # seconds
    dead_letter_max_events: int = Field(
        DEAD_LETTER_MAX_EVENTS, exclude_if=lambda v: v == DEAD_LETTER_MAX_EVENTS
    )
    # The attempt log's bounds (tidings.api.attempts); left out at their defaults too.
    attempt_log_max_age: float = Field(
        ATTEMPT_LOG_MAX_AGE, exclude_if=lambda v: v == ATTEMPT_LOG_MAX_AGE
    )  # seconds
    attempt_log_max_entries: int = Field(
        ATTEMPT_LOG_MAX_ENTRIES, exclude_if=lambda v: v == ATTEMPT_LOG_MAX_ENTRIES
    )
    # delivery.backoff; left out at their defaults too. None: default_backoff_window.
    backoff_failure_ratio: float = Field(
        BACKOFF_FAILURE_RATIO, exclude_if=lambda v: v == BACKOFF_FAILURE_RATIO
    )
    backoff_min_attempts: int = Field(
        BACKOFF_MIN_ATTEMPTS, exclude_if=lambda v: v == BACKOFF_MIN_ATTEMPTS
    )
    backoff_window: float | None = Field(None, exclude_if=lambda v: v is None)  # seconds
    backoff_max_probe_interval: float = Field(
        BACKOFF_MAX_PROBE_INTERVAL, exclude_if=lambda v: v == BACKOFF_MAX_PROBE_INTERVAL
    )  # seconds
    concurrency: int
    rate_per_second: float | None = None
    rate_burst: int | None = None
    ordering_key: str | None = None  # e.g. "event.subject"
    headers: dict[str, str] = {}
    signing_secrets: list[str] = []  # sealed; each unseals to "whsec_<base64>"
    # Headers from Secrets (auth.bearer/basic, headersFrom): name -> sealed value.
    # Left out of the JSON when empty, like tls: a dispatcher older than these
    # fields refuses such a route (unknown field) instead of delivering without them.
    secret_headers: dict[str, str] = Field(default_factory=dict, exclude_if=lambda v: not v)
    tls: CompiledTLS | None = Field(None, exclude_if=lambda v: v is None)

    @property
    def window(self) -> float:
        """backoff.window, or its default from the retry policy (seconds)."""
        if self.backoff_window is None:
            return default_backoff_window(self.retry.initial_delay)
        return self.backoff_window


class Route(Internal):
    """One Trigger, compiled. Identified by "namespace/name"."""

    format: int = FORMAT
    namespace: str
    name: str
    uid: str = ""
    generation: int = 0
    source: str  # EventSource name, same namespace
    stream: str  # its stream key
    group: str  # this Trigger's consumer group on that stream
    filter: CompiledFilter
    subscriber_url: str
    delivery: CompiledDelivery
    paused: bool = False
    # Where the consumer group is created (XGROUP CREATE's id; spec.startFrom):
    # "$" now, "0" the beginning, or the id just before a time. Left out of the
    # JSON at "$", so older dispatchers keep reading these routes.
    cursor_start: str = Field("$", exclude_if=lambda v: v == "$")
    # spec.delivery.delay, seconds (0: none). Left out at 0 for the same reason.
    delay: float = Field(0.0, exclude_if=lambda v: v == 0)

    @property
    def id(self) -> str:
        return keys.source_id(self.namespace, self.name)


def cursor_start(start_from: str) -> str:
    """XGROUP CREATE's id for spec.startFrom: `$`, `0`, or the last id before a
    time (ids are <ms>-<seq>; the group delivers those after it)."""
    from tidings.api.types import parse_time

    if start_from == "now":
        return "$"
    if start_from == "beginning":
        return "0"
    ms = int(parse_time(start_from, field="spec.startFrom") * 1000)
    return f"{ms - 1}-{MAX_SEQUENCE}" if ms > 0 else "0"


# The largest sequence part of a stream id (a 64-bit unsigned integer).
MAX_SEQUENCE = 2**64 - 1


class CompiledReplay(Internal):
    """One Replay, compiled: what a dispatcher needs to run it (tidings.dispatcher.replays).
    Identified by "namespace/name"; its Trigger is "namespace/trigger"."""

    format: int = FORMAT
    namespace: str
    name: str
    uid: str
    trigger: str
    source: str  # the Trigger's source when compiled
    dead_letters: bool  # from the DLQ (else from the source's stream)
    dead_letter_since: float | None = None  # seconds before the start
    dead_letter_ids: list[str] = []
    stream_since_ms: int | None = None  # default: the oldest stored event
    stream_until_ms: int | None = None  # exclusive; default: the start
    filter: CompiledFilter | None = None
    rate: float | None = None  # events per second

    @property
    def id(self) -> str:
        return keys.source_id(self.namespace, self.name)

    @property
    def trigger_id(self) -> str:
        return keys.source_id(self.namespace, self.trigger)


def compile_filter(spec: Filter) -> CompiledFilter:
    return CompiledFilter(
        types=spec.types or [],
        attributes=spec.attributes or {},
        prefix=spec.prefix or {},
        expression=spec.expression,
    )


def compile_replay(
    *, namespace: str, name: str, uid: str, spec: ReplaySpec, route: Route
) -> CompiledReplay:
    """Compile a Replay against its Trigger's route; CompileError(InvalidFilter) for a
    stream filter whose expression does not compile."""
    from tidings.api.types import parse_time

    window = spec.from_.stream
    dead = spec.from_.dead_letters
    compiled_filter = None
    if window is not None and window.filter is not None:
        if window.filter.expression is not None:
            check_expression(window.filter.expression, "spec.from.stream.filter.expression")
        compiled_filter = compile_filter(window.filter)
    return CompiledReplay(
        namespace=namespace,
        name=name,
        uid=uid,
        trigger=spec.trigger,
        source=route.source,
        dead_letters=dead is not None,
        dead_letter_since=parse_duration(dead.since) if dead and dead.since else None,
        dead_letter_ids=list(dead.ids or []) if dead else [],
        stream_since_ms=(
            int(parse_time(window.since, field="since") * 1000) if window and window.since else None
        ),
        stream_until_ms=(
            int(parse_time(window.until, field="until") * 1000) if window and window.until else None
        ),
        filter=compiled_filter,
        rate=spec.rate.per_second if spec.rate else None,
    )


class CompiledIngest(Internal):
    token_sealed: str | None = None
    # objectStore notify: stores that cannot set headers (Versity Gateway,
    # Ceph RGW) send the token as ?token=. Left out of the JSON when False.
    token_in_query: bool = Field(False, exclude_if=lambda v: not v)
    hmac_secret_sealed: str | None = None
    hmac_header: str = "X-Signature-256"
    # Timestamped HMAC (`<timestamp>.<body>`) and Standard Webhooks. Left out of
    # the JSON while unset, so dispatchers older than them keep reading the
    # sources that do not use them (and refuse, loudly, the ones that do).
    hmac_timestamp_header: str | None = Field(None, exclude_if=lambda v: v is None)
    hmac_tolerance: float = Field(300.0, exclude_if=lambda v: v == 300.0)  # seconds
    webhook_secrets: list[str] = Field(
        default_factory=list, exclude_if=lambda v: not v
    )  # sealed; each unseals to "whsec_<base64>"
    webhook_tolerance: float = Field(300.0, exclude_if=lambda v: v == 300.0)  # seconds
    allow_anonymous: bool = False
    max_body_bytes: int = 1048576
    dedupe_window: float = 300.0  # seconds
    # spec.http.maxDelay: the longest deliverafter accepted. Left out at its default.
    max_delay: float = Field(MAX_DELAY, exclude_if=lambda v: v == MAX_DELAY)  # seconds


class CompiledObjectStore(Internal):
    bucket: str
    prefix: str = ""
    suffix: str = ""
    events: list[str] = ["created"]


class CompiledSource(Internal):
    """One EventSource, compiled. Identified by "namespace/name"."""

    format: int = FORMAT
    namespace: str
    name: str
    uid: str = ""
    generation: int = 0
    kind: Literal["http", "postgres", "kubernetes", "schedule", "objectStore"]
    stream: str
    ingest: CompiledIngest | None = None  # http sources, objectStore in notify mode
    # objectStore in notify mode: which records of a notification become events.
    object_store: CompiledObjectStore | None = Field(None, exclude_if=lambda v: v is None)
    retention_max_age: float  # seconds
    retention_max_events: int

    @property
    def id(self) -> str:
        return keys.source_id(self.namespace, self.name)

    @property
    def api_path(self) -> str:
        """The CloudEvents `source` of its events."""
        return f"/apis/tidings.dev/v1alpha1/namespaces/{self.namespace}/eventsources/{self.name}"


# --- compiling ------------------------------------------------------------------------


class CompileError(Exception):
    """A Trigger or EventSource that cannot be compiled; reason is a condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class World(Protocol):
    """What the compiler may look up. The operator answers from the API server
    (via its caches); `tidings dev` from the loaded manifest files."""

    def source(self, namespace: str, name: str) -> EventSourceSpec | None: ...

    def service_ports(self, namespace: str, name: str) -> list[int] | None:
        """The Service's ports, or None if it does not exist."""
        ...

    def secret(self, namespace: str, name: str, key: str) -> str | None:
        """The decoded value of a Secret key, or None if the Secret or key is missing."""
        ...

    def grants(self, namespace: str) -> list[TriggerGrantSpec]:
        """The TriggerGrants in a namespace: its consent to other namespaces' Triggers."""
        ...


def check_expression(expression: str, field: str = "spec.filter.expression") -> None:
    """Compile a CEL filter once to reject it early; raises CompileError(InvalidFilter)."""
    problem = expression_problem(expression)
    if problem is not None:
        raise CompileError("InvalidFilter", f"{field}: {problem}")


@functools.lru_cache(maxsize=4096)
def expression_problem(expression: str) -> str | None:
    """Why a CEL filter is refused, or None. Remembered: the operator compiles
    every Trigger again at each restart and resync, and Triggers share
    expressions (compiling was a fifth of a Trigger's compile at a restart)."""
    try:
        program = compile_expression(expression)
    except ValueError as error:
        return str(error)
    unknown = sorted(set(program.variables()) - {"event"})
    if unknown:
        return (
            f"unknown variable {', '.join(unknown)}; "
            "the event is available as `event` (event.type, event.data...)"
        )
    return None


def _secret(world: World, namespace: str, ref: SecretKeyRef, field: str) -> str:
    value = world.secret(namespace, ref.name, ref.key)
    if value is None:
        raise CompileError(
            "SecretNotFound",
            f"{field}: Secret {namespace}/{ref.name} with key {ref.key!r} not found; "
            "create it or fix the reference",
        )
    if not value.strip():
        raise CompileError(
            "InvalidSecret",
            f"{field}: Secret {namespace}/{ref.name} key {ref.key!r} is empty; "
            "put the secret's value in it",
        )
    return value


def webhook_secrets(
    world: World, namespace: str, ref: SecretKeyRef, field: str, sealer: Sealer
) -> list[str]:
    """The sealed `whsec_<base64>` secrets of a Secret key (space-separated: several
    during a rotation) that verify inbound Standard Webhooks; InvalidSecret naming
    the field if one is not."""
    raw = _secret(world, namespace, ref, field)
    secrets = raw.split()
    for secret in secrets:
        try:
            valid = secret.startswith("whsec_") and bool(
                base64.b64decode(secret.removeprefix("whsec_"), validate=True)
            )
        except ValueError:
            valid = False
        if not valid:
            raise CompileError(
                "InvalidSecret",
                f"{field}: Secret {namespace}/{ref.name} key {ref.key!r} must hold "
                "whsec_<base64> values (space-separated during rotation)",
            )
    if not secrets:
        raise CompileError(
            "InvalidSecret", f"{field}: Secret {namespace}/{ref.name} key {ref.key!r} is empty"
        )
    return [sealer.seal(secret) for secret in secrets]


def _credential(world: World, namespace: str, ref: SecretKeyRef, field: str) -> str:
    """A Secret value that goes into a request header: one line, not empty. A
    trailing newline (a Secret made from a file) is dropped."""
    value = _secret(world, namespace, ref, field).removesuffix("\n").removesuffix("\r")
    if not value or "\n" in value or "\r" in value:
        raise CompileError(
            "InvalidSecret",
            f"{field}: Secret {namespace}/{ref.name} key {ref.key!r} must hold one non-empty line",
        )
    return value


def secret_headers(
    world: World, namespace: str, delivery: DeliverySpec, sealer: Sealer
) -> dict[str, str]:
    """delivery.auth and delivery.headersFrom as request headers, values sealed."""
    from tidings.api.types import SecretKeyRef

    headers: dict[str, str] = {}
    auth = delivery.auth
    if auth is not None and auth.bearer is not None:
        field = "spec.delivery.auth.bearer.secretRef"
        token = _credential(world, namespace, auth.bearer.secret_ref, field)
        headers["Authorization"] = sealer.seal(f"Bearer {token}")
    if auth is not None and auth.basic is not None:
        field, name = "spec.delivery.auth.basic.secretRef", auth.basic.secret_ref.name
        user = _credential(world, namespace, SecretKeyRef(name=name, key="username"), field)
        password = _credential(world, namespace, SecretKeyRef(name=name, key="password"), field)
        if ":" in user:
            raise CompileError(
                "InvalidSecret",
                f"{field}: the username in Secret {namespace}/{name} may not contain ':' "
                "(RFC 7617)",
            )
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = sealer.seal(f"Basic {basic}")
    for index, header in enumerate(delivery.headers_from or []):
        field = f"spec.delivery.headersFrom[{index}].secretKeyRef"
        headers[header.name] = sealer.seal(
            _credential(world, namespace, header.secret_key_ref, field)
        )
    return headers


def compile_tls(
    world: World, namespace: str, delivery: DeliverySpec, subscriber_url: str, sealer: Sealer
) -> CompiledTLS | None:
    """delivery.tls, checked (an https subscriber; PEM that loads) and sealed."""
    from tidings.api.types import SecretKeyRef

    tls = delivery.tls
    if tls is None or (tls.ca_secret_ref is None and tls.client_cert_secret_ref is None):
        return None
    if not subscriber_url.startswith("https://"):
        raise CompileError(
            "InvalidSpec",
            f"spec.delivery.tls: the subscriber {subscriber_url} is not https; "
            "use subscriber.uri https://… or drop delivery.tls",
        )
    ca = cert = key = None
    if tls.ca_secret_ref is not None:
        ref = SecretKeyRef(name=tls.ca_secret_ref.name, key=tls.ca_secret_ref.key)
        ca = _secret(world, namespace, ref, "spec.delivery.tls.caSecretRef")
    if tls.client_cert_secret_ref is not None:
        field, name = "spec.delivery.tls.clientCertSecretRef", tls.client_cert_secret_ref.name
        cert = _secret(world, namespace, SecretKeyRef(name=name, key="tls.crt"), field)
        key = _secret(world, namespace, SecretKeyRef(name=name, key="tls.key"), field)
    try:
        client_context(ca_pem=ca, cert_pem=cert, key_pem=key)
    except TLSConfigError as error:
        names = ", ".join(
            f"{namespace}/{r.name}"
            for r in (tls.ca_secret_ref, tls.client_cert_secret_ref)
            if r is not None
        )
        raise CompileError("InvalidSecret", f"spec.delivery.tls: Secret {names}: {error}") from None
    return CompiledTLS(
        ca=sealer.seal(ca) if ca is not None else None,
        cert=sealer.seal(cert) if cert is not None else None,
        key=sealer.seal(key) if key is not None else None,
    )


def signing_secrets_of(raw: str, where: str) -> list[str]:
    """The `whsec_<base64>` values of a signing Secret (space-separated during a
    rotation); CompileError(InvalidSecret) for anything a dispatcher could not
    sign with. Standard Webhooks keys are 24 to 64 random bytes."""
    values = raw.split()
    for position, value in enumerate(values, 1):
        which = f"value {position} of {len(values)}" if len(values) > 1 else "the value"
        encoded = value.removeprefix("whsec_")
        try:
            key = base64.b64decode(encoded, validate=True) if value != encoded else None
        except (binascii.Error, ValueError):
            key = None
        if key is None or not 24 <= len(key) <= 64:
            raise CompileError(
                "InvalidSecret",
                f"{where}: {which} is not whsec_<base64 of 24 to 64 random bytes> "
                "(Standard Webhooks); make one with "
                "`echo whsec_$(head -c 32 /dev/urandom | base64)`, space-separate "
                "several during a rotation",
            )
    return values


def check_destination(policy: DestinationPolicy, url: str, field: str) -> None:
    """CompileError(DestinationNotAllowed), naming the rule, when `policy` refuses
    `url`'s host as written (its addresses are checked again at connect time)."""
    refusal = policy.check_url(url)
    if refusal is not None:
        raise CompileError(
            DESTINATION_NOT_ALLOWED,
            f"{field}: {url}: {refusal.message} (rule {refusal.rule}; the destination policy "
            "is the operator's --destinations-* flags, chart values destinations.*)",
        )


def resolve_destination(
    world: World,
    namespace: str,
    dest: Destination,
    field: str,
    policy: DestinationPolicy | None = None,
) -> str:
    """The URL of a Service ref (`http://NAME.NS.svc.cluster.local:PORT/PATH`) or a
    uri; checked against `policy` when one is given."""
    url = _destination_url(world, namespace, dest, field)
    if policy is not None:
        check_destination(policy, url, f"{field}.uri" if dest.uri is not None else f"{field}.ref")
    return url


def check_cross_namespace(
    world: World, namespace: str, target: str, service: str, field: str
) -> None:
    """CompileError(CrossNamespaceNotAllowed) unless a TriggerGrant in `target`
    admits Triggers of `namespace` to its Service `service`. Checked before the
    Service is looked up, so a refusal tells nothing about what `target` holds."""
    if target == namespace:
        return
    if any(grant.admits(namespace, service) for grant in world.grants(target)):
        return
    raise CompileError(
        CROSS_NAMESPACE_NOT_ALLOWED,
        f"{field}: Service {target}/{service} is in another namespace, and no TriggerGrant in "
        f"namespace {target} admits Triggers of namespace {namespace} to it; its owners can "
        f"create one (spec.from: [{{namespace: {namespace}}}], spec.to: "
        f"[{{kind: Service, name: {service}}}])",
    )


def cluster_service(host: str) -> tuple[str, str] | None:
    """(namespace, name) when `host` is a Service's cluster DNS name
    (NAME.NS.svc or NAME.NS.svc.cluster.local, with or without the final dot)."""
    labels = host.rstrip(".").lower().split(".")
    if labels[2:] in (["svc"], ["svc", *CLUSTER_DOMAIN.split(".")]) and len(labels) >= 3:
        return labels[1], labels[0]
    return None


def _destination_url(world: World, namespace: str, dest: Destination, field: str) -> str:
    if dest.uri is not None:
        # A uri naming another namespace's Service needs that namespace's consent
        # as a ref does (IP addresses are the NetworkPolicies' to guard).
        service = cluster_service(urlsplit(dest.uri).hostname or "")
        if service is not None:
            check_cross_namespace(world, namespace, service[0], service[1], f"{field}.uri")
        return dest.uri
    assert dest.ref is not None  # the model guarantees ref xor uri
    ref_namespace = dest.ref.namespace or namespace
    check_cross_namespace(world, namespace, ref_namespace, dest.ref.name, f"{field}.ref")
    ports = world.service_ports(ref_namespace, dest.ref.name)
    if ports is None:
        raise CompileError(
            "SubscriberNotFound",
            f"{field}.ref: Service {ref_namespace}/{dest.ref.name} not found; "
            "create it or fix the reference",
        )
    port = dest.ref.port
    if port is None:
        port = ports[0] if len(ports) == 1 else 80
    elif ports and port not in ports:
        raise CompileError(
            "SubscriberNotFound",
            f"{field}.ref.port: Service {ref_namespace}/{dest.ref.name} has no port {port} "
            f"(it has {', '.join(map(str, ports))})",
        )
    host = f"{dest.ref.name}.{ref_namespace}.svc.{CLUSTER_DOMAIN}"
    authority = host if port == 80 else f"{host}:{port}"
    return f"http://{authority}{dest.path or ''}"


def compile_trigger(
    *,
    namespace: str,
    name: str,
    spec: TriggerSpec,
    world: World,
    sealer: Sealer,
    destinations: DestinationPolicy = CLUSTER,
    uid: str = "",
    generation: int = 0,
) -> Route:
    """Compile a Trigger, or raise CompileError with the condition reason to report.
    `destinations` is the destination policy (default: a cluster's, loopback refused)."""
    if world.source(namespace, spec.source) is None:
        raise CompileError(
            "SourceNotFound",
            f"spec.source: EventSource {namespace}/{spec.source} not found; "
            "create it or fix spec.source",
        )
    if spec.filter.expression is not None:
        check_expression(spec.filter.expression)
    subscriber_url = resolve_destination(
        world, namespace, spec.subscriber, "spec.subscriber", destinations
    )
    delivery = spec.delivery
    dead_letter_url = None
    if delivery.dead_letter is not None:
        dead_letter_url = resolve_destination(
            world, namespace, delivery.dead_letter, "spec.delivery.deadLetter", destinations
        )
    signing_secrets: list[str] = []
    if delivery.signing is not None:
        ref = delivery.signing.secret_ref
        raw = _secret(world, namespace, ref, "spec.delivery.signing.secretRef")
        where = f"spec.delivery.signing.secretRef: Secret {namespace}/{ref.name} key {ref.key!r}"
        signing_secrets = [sealer.seal(secret) for secret in signing_secrets_of(raw, where)]
    sealed_headers = secret_headers(world, namespace, delivery, sealer)
    tls = compile_tls(world, namespace, delivery, subscriber_url, sealer)
    retry = delivery.retry
    return Route(
        namespace=namespace,
        name=name,
        uid=uid,
        generation=generation,
        source=spec.source,
        stream=keys.stream(namespace, spec.source),
        group=keys.group(name),
        filter=compile_filter(spec.filter),
        subscriber_url=subscriber_url,
        delivery=CompiledDelivery(
            format=delivery.format,
            timeout=parse_duration(delivery.timeout),
            retry=CompiledRetry(
                max_attempts=retry.max_attempts,
                backoff=retry.backoff,
                initial_delay=parse_duration(retry.initial_delay),
                max_delay=parse_duration(retry.max_delay),
                jitter=retry.jitter,
                retry_after_max=parse_duration(retry.retry_after_max),
                retry_on=list(retry.retry_on),
            ),
            max_age=parse_duration(delivery.max_age),
            dead_letter_url=dead_letter_url,
            dead_letter_max_age=parse_duration(delivery.dead_letter_retention.max_age),
            dead_letter_max_events=delivery.dead_letter_retention.max_events,
            attempt_log_max_age=parse_duration(delivery.attempt_log.max_age),
            attempt_log_max_entries=delivery.attempt_log.max_entries,
            backoff_failure_ratio=delivery.backoff.failure_ratio,
            backoff_min_attempts=delivery.backoff.min_attempts,
            backoff_window=(
                parse_duration(delivery.backoff.window)
                if delivery.backoff.window is not None
                else None
            ),
            backoff_max_probe_interval=parse_duration(delivery.backoff.max_probe_interval),
            concurrency=delivery.concurrency,
            rate_per_second=delivery.rate_limit.per_second if delivery.rate_limit else None,
            rate_burst=(
                (delivery.rate_limit.burst or max(1, int(delivery.rate_limit.per_second)))
                if delivery.rate_limit
                else None
            ),
            ordering_key=delivery.ordering.key if delivery.ordering else None,
            headers=delivery.headers or {},
            signing_secrets=signing_secrets,
            secret_headers=sealed_headers,
            tls=tls,
        ),
        paused=spec.paused,
        cursor_start=cursor_start(spec.start_from),
        delay=parse_duration(delivery.delay) if delivery.delay else 0.0,
    )


def ingest_token_secret_name(source_name: str) -> str:
    """The Secret the operator generates when an http source names no token Secret."""
    return f"{source_name}-ingest-token"


def compile_source(
    *,
    namespace: str,
    name: str,
    spec: EventSourceSpec,
    world: World,
    sealer: Sealer,
    uid: str = "",
    generation: int = 0,
) -> CompiledSource:
    """Compile an EventSource, or raise CompileError with the condition reason to report."""
    from tidings.api.types import SecretKeyRef

    ingest = None
    auth = spec.ingest_auth
    if auth is not None:
        at = "spec.http.auth" if spec.http is not None else "spec.objectStore.auth"
        token_sealed = hmac_sealed = None
        webhooks = auth.standard_webhooks
        if auth.token_secret_ref is not None:
            token = _secret(world, namespace, auth.token_secret_ref, f"{at}.tokenSecretRef")
            token_sealed = sealer.seal(token)
        elif auth.generated_token:
            generated = SecretKeyRef(name=ingest_token_secret_name(name), key="token")
            token = _secret(world, namespace, generated, f"{at} (generated token)")
            token_sealed = sealer.seal(token)
        if auth.hmac_secret_ref is not None:
            hmac_secret = _secret(world, namespace, auth.hmac_secret_ref, f"{at}.hmacSecretRef")
            hmac_sealed = sealer.seal(hmac_secret)
        dedupe_window = parse_duration(spec.http.dedupe_window) if spec.http else 300.0
        hmac_tolerance = parse_duration(auth.hmac_tolerance)
        sealed_webhook_secrets: list[str] = []
        webhook_tolerance = 300.0
        if webhooks is not None:
            sealed_webhook_secrets = webhook_secrets(
                world, namespace, webhooks.secret_ref, f"{at}.standardWebhooks.secretRef", sealer
            )
            webhook_tolerance = parse_duration(webhooks.tolerance)
        windows = [(f"{at}.standardWebhooks.tolerance", webhook_tolerance)] if webhooks else []
        if auth.hmac_timestamp_header is not None and hmac_sealed is not None:
            windows.append((f"{at}.hmacTolerance", hmac_tolerance))
        for field, tolerance in windows:
            # A replay inside the tolerance carries the same event id: the dedupe
            # window must still remember it.
            if tolerance > dedupe_window:
                raise CompileError(
                    "InvalidSpec",
                    f"{field} ({tolerance:g}s) is longer than the dedupe window "
                    f"({dedupe_window:g}s): a replayed request would not be recognised; "
                    "lower the tolerance or raise spec.http.dedupeWindow",
                )
        ingest = CompiledIngest(
            token_sealed=token_sealed,
            token_in_query=spec.http is None,
            hmac_secret_sealed=hmac_sealed,
            hmac_header=auth.hmac_header,
            hmac_timestamp_header=auth.hmac_timestamp_header if hmac_sealed else None,
            hmac_tolerance=hmac_tolerance,
            webhook_secrets=sealed_webhook_secrets,
            webhook_tolerance=webhook_tolerance,
            allow_anonymous=auth.allow_anonymous,
            max_body_bytes=spec.http.max_body_bytes if spec.http is not None else 1048576,
            dedupe_window=dedupe_window,
            max_delay=parse_duration(spec.http.max_delay) if spec.http else MAX_DELAY,
        )
    object_store = None
    if spec.object_store is not None and spec.object_store.mode == "notify":
        store = spec.object_store
        object_store = CompiledObjectStore(
            bucket=store.bucket, prefix=store.prefix, suffix=store.suffix, events=store.events
        )
    kind: Literal["http", "postgres", "kubernetes", "schedule", "objectStore"] = spec.kind  # type: ignore[assignment]
    return CompiledSource(
        namespace=namespace,
        name=name,
        uid=uid,
        generation=generation,
        kind=kind,
        stream=keys.stream(namespace, name),
        ingest=ingest,
        object_store=object_store,
        retention_max_age=parse_duration(spec.retention.max_age),
        retention_max_events=spec.retention.max_events,
    )
