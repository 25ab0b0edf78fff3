"""The API types of tidings.dev/v1alpha1: EventSource, Trigger and Replay.

These pydantic models are the single definition of the API. The CRD YAML in
crds/ and helm/tidings/crds/ is generated from them (tidings.api.crd), the
operator validates and compiles objects with them, and `tidings dev` loads
manifests with them. Field names are camelCase on the wire, snake_case here.

Cross-field rules that the API server must enforce are written as CEL
(`x-kubernetes-validations`) next to the model they constrain.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel, to_snake

from tidings.api.codec import RESERVED_HEADER_PREFIXES, RESERVED_HEADERS
from tidings.api.durations import DURATION_PATTERN, parse_duration

GROUP = "tidings.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# RFC 1123 label / subdomain names, as Kubernetes validates object names.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _validations(*rules: tuple[str, str]) -> dict[str, Any]:
    """Attach CEL rules (rule, message) to a model's generated schema."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


def Duration(default: str | None = None, description: str = "") -> Any:
    """A duration string field (`10s`, `72h`), bounded so CEL can afford to parse it."""
    return Field(default, pattern=DURATION_PATTERN, max_length=32, description=description)


class ApiModel(BaseModel):
    """Base for API types: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest (camelCase, unset fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _check_durations(model: BaseModel, *names: str) -> None:
    for name in names:
        value = getattr(model, name)
        if value is not None:
            parse_duration(value, field=name)


# --- shared references -------------------------------------------------------------


class SecretKeyRef(ApiModel):
    """A key of a Secret in the object's own namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="Secret name.")
    key: str = Field(
        pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="Key within the Secret."
    )


class ServiceRef(ApiModel):
    """A Service in the object's own namespace (or `namespace`)."""

    kind: Literal["Service"] = Field("Service", description="Only Service is supported.")
    name: str = Field(pattern=DNS_LABEL, max_length=63, description="Service name.")
    namespace: str | None = Field(
        None, pattern=DNS_LABEL, max_length=63, description="Defaults to the Trigger's namespace."
    )
    port: int | None = Field(None, ge=1, le=65535, description="Service port; defaults to 80.")


class Destination(ApiModel):
    """Where to send HTTP requests: a Service `ref` (+ `path`), or an absolute `uri`."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            ("has(self.ref) != has(self.uri)", "set exactly one of ref or uri"),
            ("!has(self.uri) || !has(self.path)", "path goes with ref; put it in uri instead"),
        )
    )

    ref: ServiceRef | None = Field(None, description="A Service to call.")
    uri: str | None = Field(
        None,
        pattern=r"^https?://[^\s]+$",
        max_length=2048,
        description="An absolute http(s) URL, instead of ref.",
    )
    path: str | None = Field(
        None, pattern=r"^/[^\s]*$", max_length=1024, description="Path appended to ref's URL."
    )

    @model_validator(mode="after")
    def _one_target(self) -> Destination:
        if (self.ref is None) == (self.uri is None):
            raise ValueError("set exactly one of ref or uri")
        if self.uri is not None and self.path is not None:
            raise ValueError("path goes with ref; put it in uri instead")
        return self


# --- EventSource ----------------------------------------------------------------------


class StandardWebhooks(ApiModel):
    """Standard Webhooks signatures from the producer (webhook-id, webhook-timestamp,
    webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>)."""

    secret_ref: SecretKeyRef = Field(
        description="Secret key with one or more space-separated whsec_<base64> secrets "
        "(several during a rotation: a signature by any of them passes)."
    )
    tolerance: str = Duration(
        "5m", "Requests whose webhook-timestamp is further from now than this are refused."
    )

    @model_validator(mode="after")
    def _durations(self) -> StandardWebhooks:
        _check_durations(self, "tolerance")
        return self


class HttpAuth(ApiModel):
    """How producers authenticate to the ingest endpoint."""

    token_secret_ref: SecretKeyRef | None = Field(
        None, description="Bearer token producers must send (Authorization: Bearer ...)."
    )
    hmac_secret_ref: SecretKeyRef | None = Field(
        None,
        description="Shared secret for HMAC-SHA256 signatures of the body (third-party webhooks).",
    )
    hmac_header: str = Field(
        "X-Signature-256",
        max_length=128,
        pattern=r"^[A-Za-z0-9-]+$",
        description="Header carrying the HMAC signature (hex, optionally prefixed sha256=).",
    )
    hmac_timestamp_header: str | None = Field(
        None,
        max_length=128,
        pattern=r"^[A-Za-z0-9-]+$",
        description="Header carrying the request's Unix time in seconds. When set, the HMAC "
        "covers `<timestamp>.<body>` and a request outside hmacTolerance is refused, so a "
        "captured request cannot be replayed later. Unset: the HMAC covers the body alone "
        "(for senders such as GitHub that sign nothing else).",
    )
    hmac_tolerance: str = Duration(
        "5m", "With hmacTimestampHeader: how far the timestamp may be from now."
    )
    standard_webhooks: StandardWebhooks | None = Field(
        None, description="Verify Standard Webhooks signatures (Svix and others send these)."
    )
    allow_anonymous: bool = Field(
        False, description="Accept events without credentials. Off by default."
    )

    @model_validator(mode="after")
    def _durations(self) -> HttpAuth:
        _check_durations(self, "hmac_tolerance")
        return self

    @property
    def generated_token(self) -> bool:
        """No credentials configured and not anonymous: the operator (and `tidings
        dev`) generate a token in the Secret <name>-ingest-token."""
        return (
            self.token_secret_ref is None
            and self.hmac_secret_ref is None
            and self.standard_webhooks is None
            and not self.allow_anonymous
        )


class HttpSource(ApiModel):
    auth: HttpAuth = Field(
        default_factory=HttpAuth,
        description="Default: a bearer token is required; without tokenSecretRef the "
        "operator generates one in the Secret <name>-ingest-token.",
    )
    max_body_bytes: int = Field(
        1048576, ge=1024, le=64 * 1048576, description="Largest request body accepted (413 above)."
    )
    dedupe_window: str = Duration("5m", "An event id seen again within this window is dropped.")
    max_delay: str = Duration(
        "168h",
        "Longest delay a producer may ask for (CloudEvents extension deliverafter, "
        "Tidings-Deliver-After header, ?deliverAfter=); further is refused with 400.",
    )

    @model_validator(mode="after")
    def _durations(self) -> HttpSource:
        _check_durations(self, "dedupe_window", "max_delay")
        return self


TABLE_NAME = r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$"


Operation = Literal["insert", "update", "delete", "truncate"]
DEFAULT_OPERATIONS: tuple[Operation, ...] = ("insert", "update", "delete")


class PostgresSource(ApiModel):
    connection_secret_ref: SecretKeyRef = Field(
        description="Secret key holding a libpq DSN of a role with REPLICATION."
    )
    tables: list[Annotated[str, Field(pattern=TABLE_NAME, max_length=127)]] = Field(
        min_length=1,
        max_length=256,
        description="Tables to capture, schema-qualified (public.users).",
    )
    operations: list[Operation] = Field(
        default_factory=lambda: list(DEFAULT_OPERATIONS),
        json_schema_extra={"default": ["insert", "update", "delete"]},
        min_length=1,
        max_length=4,
        description="Operations to capture.",
    )
    columns: dict[str, list[str]] | None = Field(
        None, description="Optional column list per table (table -> columns)."
    )
    slot_name: str | None = Field(
        None,
        pattern=r"^[a-z0-9_]{1,63}$",
        description="Replication slot name; derived from the EventSource when unset.",
    )
    publication_name: str | None = Field(
        None,
        pattern=r"^[a-z0-9_]{1,63}$",
        description="Publication name; derived from the EventSource when unset.",
    )
    max_retained_wal_bytes: int = Field(
        1 << 30,
        ge=1 << 20,
        description="Warn (condition WalRetained) when the slot retains more WAL than this.",
    )


class LabelSelectorRequirement(ApiModel):
    key: str = Field(max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class LabelSelector(ApiModel):
    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None


class KubernetesResource(ApiModel):
    api_version: str = Field(max_length=253, description="e.g. v1, apps/v1.")
    kind: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=63, description="e.g. ConfigMap.")
    namespace: str | None = Field(
        None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Namespace to watch; defaults to the EventSource's.",
    )
    label_selector: LabelSelector | None = None


class KubernetesSource(ApiModel):
    resources: list[KubernetesResource] = Field(min_length=1, max_length=32)


class ScheduleSource(ApiModel):
    cron: str = Field(
        max_length=128,
        pattern=r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4}\S+)$",
        description="Five-field cron expression or @hourly-style macro.",
    )
    time_zone: str = Field(
        "UTC", max_length=64, pattern=r"^[A-Za-z0-9_+\-/]+$", description="IANA time zone."
    )
    data: dict[str, Any] | None = Field(None, description="The data of every tick event.")
    max_catch_up: int = Field(
        1, ge=0, le=1000, description="Missed ticks fired after an outage (the newest ones)."
    )


class ObjectStoreCredentialsRef(ApiModel):
    """A Secret in the EventSource's namespace with the store's access keys."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="Secret name.")
    access_key_id_key: str = Field(
        "accessKeyId",
        pattern=r"^[-._a-zA-Z0-9]+$",
        max_length=253,
        description="Key of the access key id.",
    )
    secret_access_key_key: str = Field(
        "secretAccessKey",
        pattern=r"^[-._a-zA-Z0-9]+$",
        max_length=253,
        description="Key of the secret access key.",
    )


ObjectEvent = Literal["created", "deleted"]


class ObjectStoreSource(ApiModel):
    """An S3 bucket: the store pushes event notifications (notify), or the
    adapter lists the bucket every pollInterval (poll)."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            (
                "self.mode != 'poll' || has(self.credentialsSecretRef)",
                "mode poll lists the bucket: set credentialsSecretRef",
            )
        )
    )

    endpoint: str = Field(
        pattern=r"^https?://[^\s/]+/?$",
        max_length=2048,
        description="The S3 API, e.g. http://s3.storage.svc:7070 or https://s3.eu-central-1.amazonaws.com.",
    )
    region: str = Field("us-east-1", pattern=r"^[a-z0-9-]+$", max_length=64)
    bucket: str = Field(
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,254}$", max_length=255, description="The bucket."
    )
    credentials_secret_ref: ObjectStoreCredentialsRef | None = Field(
        None, description="Access keys (poll mode); keys accessKeyId and secretAccessKey."
    )
    ca_secret_ref: SecretKeyRef | None = Field(
        None, description="PEM CA bundle that signs an https endpoint's certificate."
    )
    prefix: str = Field("", max_length=1024, description="Only keys starting with this.")
    suffix: str = Field("", max_length=1024, description="Only keys ending with this.")
    events: list[ObjectEvent] = Field(
        default_factory=lambda: list[ObjectEvent](["created"]),
        json_schema_extra={"default": ["created"]},
        min_length=1,
        max_length=2,
        description="Which changes become events.",
    )
    mode: Literal["notify", "poll"] = Field(
        description="notify: the store POSTs S3 event notifications to the ingest URL in "
        "status; poll: list the bucket every pollInterval (any S3 API)."
    )
    poll_interval: str = Duration("10s", "Poll mode: time between two listings.")
    initial_sync: Literal["skip", "emit"] = Field(
        "skip",
        description="Poll mode, first listing: skip records the objects present without "
        "events; emit sends created for each.",
    )
    auth: HttpAuth = Field(
        default_factory=HttpAuth,
        description="Notify mode: how the store authenticates to ingest, as for http sources "
        "(the token may also be sent as ?token=, for stores that cannot set headers).",
    )

    @model_validator(mode="after")
    def _poll_needs_credentials(self) -> ObjectStoreSource:
        _check_durations(self, "poll_interval")
        if self.mode == "poll" and self.credentials_secret_ref is None:
            raise ValueError("mode poll lists the bucket: set credentialsSecretRef")
        return self


class Retention(ApiModel):
    max_age: str = Duration("168h", "Events older than this may be trimmed from the stream.")
    max_events: int = Field(
        1_000_000, ge=1, description="The stream keeps at most about this many events."
    )


SOURCE_KINDS = ("http", "postgres", "kubernetes", "schedule", "objectStore")


class EventSourceSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            (
                "[has(self.http), has(self.postgres), has(self.kubernetes), has(self.schedule), "
                "has(self.objectStore)].filter(x, x).size() == 1",
                "set exactly one of http, postgres, kubernetes, schedule, objectStore",
            )
        )
    )

    http: HttpSource | None = Field(None, description="Producers POST events to an ingest URL.")
    postgres: PostgresSource | None = Field(None, description="Change data capture of tables.")
    kubernetes: KubernetesSource | None = Field(None, description="Watch Kubernetes objects.")
    schedule: ScheduleSource | None = Field(None, description="Emit a tick on a cron schedule.")
    object_store: ObjectStoreSource | None = Field(
        None, description="Objects created or deleted in an S3 bucket."
    )
    retention: Retention = Field(default_factory=Retention)

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> EventSourceSpec:
        chosen = [kind for kind in SOURCE_KINDS if self.part(kind) is not None]
        if len(chosen) != 1:
            raise ValueError("set exactly one of http, postgres, kubernetes, schedule, objectStore")
        return self

    def part(self, kind: str) -> ApiModel | None:
        """The spec of `kind` (a SOURCE_KINDS name, as on the wire), or None."""
        value = getattr(self, to_snake(kind))
        return value if isinstance(value, ApiModel) else None

    @property
    def ingest_auth(self) -> HttpAuth | None:
        """How POSTs to the ingest URL authenticate: http sources, and
        objectStore sources in notify mode (the store posts its notifications)."""
        if self.http is not None:
            return self.http.auth
        if self.object_store is not None and self.object_store.mode == "notify":
            return self.object_store.auth
        return None

    @property
    def kind(self) -> str:
        """The kind as the API spells it: http, postgres, …, objectStore."""
        return next(kind for kind in SOURCE_KINDS if self.part(kind) is not None)


# --- Trigger --------------------------------------------------------------------------


class Filter(ApiModel):
    """All parts optional and ANDed; an empty filter matches every event."""

    types: list[str] | None = Field(
        None, max_length=64, description="Event types to accept (exact)."
    )
    attributes: dict[str, str] | None = Field(
        None, description="CloudEvents attributes that must equal these values."
    )
    prefix: dict[str, str] | None = Field(
        None, description="CloudEvents attributes that must start with these values."
    )
    expression: str | None = Field(
        None, max_length=4096, description="A CEL expression over `event`; compiled once."
    )


RETRY_ON_PATTERN = r"^(network|timeout|[1-5][0-9][0-9]|[1-5]xx)$"


class BackoffPolicy(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            (
                # has(): the API server also checks this rule on the schema's `default: {}`.
                "!has(self.maxDelay) || !has(self.initialDelay) || "
                "duration(self.maxDelay) >= duration(self.initialDelay)",
                "retry.maxDelay must be at least retry.initialDelay",
            )
        )
    )

    max_attempts: int = Field(12, ge=1, le=1000, description="Attempts before dead-lettering.")
    backoff: Literal["exponential", "linear", "fixed"] = "exponential"
    initial_delay: str = Duration("1s", "Delay before the first retry.")
    max_delay: str = Duration("1h", "Cap on any one delay.")
    jitter: float = Field(0.2, ge=0, le=1, description="Random +/- fraction of each delay.")
    retry_after_max: str = Duration("10m", "Honour Retry-After up to this long.")
    retry_on: list[Annotated[str, Field(pattern=RETRY_ON_PATTERN, max_length=16)]] = Field(
        default_factory=lambda: ["network", "timeout", "408", "429", "5xx"],
        json_schema_extra={"default": ["network", "timeout", "408", "429", "5xx"]},
        max_length=64,
        description="Failures that are retried; any other 4xx is dead-lettered at once.",
    )

    @model_validator(mode="after")
    def _delays(self) -> BackoffPolicy:
        _check_durations(self, "initial_delay", "max_delay", "retry_after_max")
        if parse_duration(self.max_delay) < parse_duration(self.initial_delay):
            raise ValueError("retry.maxDelay must be at least retry.initialDelay")
        return self


class RateLimit(ApiModel):
    per_second: float = Field(gt=0, le=1_000_000, description="Sustained deliveries per second.")
    burst: int | None = Field(None, ge=1, description="Bucket size; defaults to perSecond.")


class Ordering(ApiModel):
    key: str = Field(
        max_length=256,
        pattern=r"^event\.[A-Za-z0-9_.]+$",
        description="Attribute path whose value orders deliveries, e.g. event.subject.",
    )


class Signing(ApiModel):
    secret_ref: SecretKeyRef = Field(
        description="Secret key with one or more space-separated whsec_<base64> secrets."
    )


class SecretRef(ApiModel):
    """A whole Secret in the object's own namespace (its keys are fixed by the field)."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="Secret name.")


class BearerAuth(ApiModel):
    secret_ref: SecretKeyRef = Field(
        description="Secret key holding the token, sent as Authorization: Bearer <token>."
    )


class BasicAuth(ApiModel):
    secret_ref: SecretRef = Field(
        description="Secret with the keys username and password (Authorization: Basic)."
    )


class DeliveryAuth(ApiModel):
    """How Tidings authenticates to the subscriber; at most one scheme."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            ("!(has(self.bearer) && has(self.basic))", "set at most one of bearer or basic"),
        )
    )

    bearer: BearerAuth | None = Field(None, description="A bearer token from a Secret.")
    basic: BasicAuth | None = Field(None, description="HTTP basic auth from a Secret.")

    @model_validator(mode="after")
    def _one_scheme(self) -> DeliveryAuth:
        if self.bearer is not None and self.basic is not None:
            raise ValueError("set at most one of bearer or basic")
        return self


HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
HEADER_NAME_MAX = 128
HEADER_VALUE_MAX = 8192
_HEADER_NAME = re.compile(HEADER_NAME)


def _cel(pattern: str) -> str:
    """`pattern` inside a single-quoted CEL string."""
    return pattern.replace("\\", "\\\\").replace("'", "\\'")


class HeaderFromSecret(ApiModel):
    name: str = Field(
        pattern=HEADER_NAME,
        max_length=HEADER_NAME_MAX,
        description="Request header, e.g. X-Api-Key.",
    )
    secret_key_ref: SecretKeyRef = Field(description="Secret key holding the header's value.")


class CaSecretRef(ApiModel):
    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="Secret name.")
    key: str = Field(
        "ca.crt",
        pattern=r"^[-._a-zA-Z0-9]+$",
        max_length=253,
        description="Key holding the PEM CA bundle.",
    )


class DeliveryTLS(ApiModel):
    """TLS towards an https subscriber: a private CA, and a client certificate (mTLS)."""

    ca_secret_ref: CaSecretRef | None = Field(
        None,
        description="PEM CA bundle (key ca.crt) that signs the subscriber's certificate; "
        "replaces the system CAs for this Trigger.",
    )
    client_cert_secret_ref: SecretRef | None = Field(
        None,
        description="Client certificate and key (keys tls.crt and tls.key, as cert-manager "
        "writes them) presented to the subscriber.",
    )


class DeadLetterRetention(ApiModel):
    max_age: str = Duration("720h", "Dead letters older than this are dropped.")
    max_events: int = Field(
        100_000, ge=1, le=10_000_000, description="The DLQ keeps at most this many entries."
    )

    @model_validator(mode="after")
    def _durations(self) -> DeadLetterRetention:
        _check_durations(self, "max_age")
        return self


class AttemptLog(ApiModel):
    max_entries: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="The attempt log keeps about this many attempts (trimmed approximately).",
    )
    max_age: str = Duration("24h", "Attempts older than this are dropped (approximately).")

    @model_validator(mode="after")
    def _durations(self) -> AttemptLog:
        _check_durations(self, "max_age")
        return self


class SubscriberBackoff(ApiModel):
    """When the subscriber counts as down and the Trigger enters Backoff."""

    failure_ratio: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Backoff when at least this share of the window's attempts failed, "
        "for a whole window.",
    )
    min_attempts: int = Field(
        5,
        ge=1,
        le=1_000_000,
        description="Attempts needed before either rule may decide: in the window (ratio), "
        "or in a row (nothing but failures).",
    )
    window: str | None = Duration(
        None,
        "How long the subscriber must look down before Backoff: every attempt failing, or "
        "failureRatio of them. Default: twice retry.initialDelay (1s to 5m), so the window "
        "sees the retries of failed first attempts. 0s: minAttempts failures in a row suffice.",
    )
    max_probe_interval: str = Duration("5m", "Longest wait between probes in Backoff.")

    @model_validator(mode="after")
    def _durations(self) -> SubscriberBackoff:
        _check_durations(self, "window", "max_probe_interval")
        return self


class DeliverySpec(ApiModel):
    format: Literal["binary", "structured", "data"] = Field(
        "binary", description="CloudEvents binary or structured mode, or the data alone."
    )
    timeout: str = Duration("10s", "Per-attempt timeout.")
    retry: BackoffPolicy = Field(default_factory=BackoffPolicy)
    max_age: str = Duration("72h", "Dead-letter an event older than this.")
    dead_letter: Destination | None = Field(
        None, description="Optional sink for dead letters; a DLQ stream is always kept."
    )
    dead_letter_retention: DeadLetterRetention = Field(
        default_factory=DeadLetterRetention,
        description="How many dead letters the Trigger's DLQ keeps, and how long.",
    )
    attempt_log: AttemptLog = Field(
        default_factory=AttemptLog,
        description="Every delivery attempt is recorded (tidings tail, tidings trace): "
        "how many, and how long.",
    )
    backoff: SubscriberBackoff = Field(
        default_factory=SubscriberBackoff,
        description="When a failing subscriber counts as down: Backoff stops pulling and "
        "probes it, spending no attempts, until it answers.",
    )
    concurrency: int = Field(100, ge=1, le=100_000, description="In-flight limit, all replicas.")
    rate_limit: RateLimit | None = Field(None, description="Rate limit across all replicas.")
    ordering: Ordering | None = Field(None, description="Deliver in order per key.")
    headers: dict[str, Annotated[str, Field(max_length=HEADER_VALUE_MAX)]] | None = Field(
        None,
        max_length=64,
        description="Extra request headers.",
        # At `kubectl apply` already, as the compiler checks them again (a CRD has
        # no schema for map keys, so CEL; the bounds keep its cost estimate low).
        json_schema_extra=_validations(
            (
                f"self.all(k, size(k) <= {HEADER_NAME_MAX} && k.matches('{_cel(HEADER_NAME)}'))",
                "a header name is letters, digits and !#$%&'*+.^_`|~- only (no ':', spaces "
                f"or other characters), at most {HEADER_NAME_MAX}",
            ),
            (
                r"self.all(k, !self[k].contains('\r') && !self[k].contains('\n') "
                r"&& !self[k].contains('\x00'))",
                "a header value may not contain CR, LF or NUL; put it on one line",
            ),
        ),
    )
    auth: DeliveryAuth | None = Field(
        None, description="Credentials for the subscriber, from Secrets (bearer or basic)."
    )
    headers_from: list[HeaderFromSecret] | None = Field(
        None, max_length=32, description="Request headers whose values come from Secrets."
    )
    tls: DeliveryTLS | None = Field(
        None, description="A private CA and a client certificate for an https subscriber."
    )
    signing: Signing | None = Field(None, description="Standard Webhooks signing.")
    delay: str | None = Duration(
        None,
        "Deliver every event no earlier than this long after it was stored (on top of a "
        "producer's deliverafter). maxAge counts from when the event is due.",
    )

    @model_validator(mode="after")
    def _durations(self) -> DeliverySpec:
        _check_durations(self, "timeout", "max_age", "delay")
        return self

    @model_validator(mode="after")
    def _one_source_per_header(self) -> DeliverySpec:
        """Each header has one origin: headers, headersFrom or auth; never one Tidings sets."""
        for name, value in (self.headers or {}).items():
            # Checked as headersFrom names are: `Host:x` would put a second Host line
            # on the wire, a CR or LF a header of its own; the client refuses both.
            if _HEADER_NAME.fullmatch(name) is None or len(name) > HEADER_NAME_MAX:
                raise ValueError(
                    f"delivery.headers: {name!r} is not a header name; use letters, "
                    "digits and !#$%&'*+.^_`|~- only (no ':', spaces or other characters), "
                    f"at most {HEADER_NAME_MAX}"
                )
            if any(c in value for c in "\r\n\0"):
                raise ValueError(
                    f"delivery.headers.{name}: a value may not contain CR, LF or NUL; "
                    "put it on one line"
                )
        taken = {name.lower(): f"headers.{name}" for name in self.headers or {}}
        if self.auth is not None and (self.auth.bearer or self.auth.basic):
            if "authorization" in taken:
                raise ValueError(
                    "delivery.headers.Authorization and delivery.auth both set Authorization; "
                    "keep one"
                )
            taken["authorization"] = "auth"
        for index, header in enumerate(self.headers_from or []):
            name = header.name.lower()
            if name in RESERVED_HEADERS or name.startswith(RESERVED_HEADER_PREFIXES):
                raise ValueError(
                    f"delivery.headersFrom[{index}].name: {header.name} is set by Tidings "
                    "(ce-*, webhook-*, Content-Type, Content-Length, Host); pick another header"
                )
            if name in taken:
                raise ValueError(
                    f"delivery.headersFrom[{index}].name: {header.name} is also set by "
                    f"delivery.{taken[name]}; keep one"
                )
            taken[name] = f"headersFrom[{index}]"
        return self


# RFC 3339 with a zone, as CloudEvents' `time` (checked again with CEL's timestamp()).
_TIME = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
RFC3339 = f"^{_TIME}$"
START_FROM = f"^(now|beginning|{_TIME})$"


def parse_time(value: str, *, field: str) -> float:
    """An RFC 3339 time as seconds since the epoch, or ValueError naming the field."""
    if not re.fullmatch(RFC3339, value):
        raise ValueError(
            f"{field}: {value!r} is not an RFC 3339 time with a zone, e.g. 2026-11-29T10:00:00Z"
        )
    return datetime.fromisoformat(value.upper().replace("Z", "+00:00")).timestamp()


class TriggerSpec(ApiModel):
    source: str = Field(
        pattern=DNS_SUBDOMAIN, max_length=253, description="An EventSource in this namespace."
    )
    filter: Filter = Field(default_factory=Filter)
    subscriber: Destination
    delivery: DeliverySpec = Field(default_factory=DeliverySpec)
    paused: bool = Field(False, description="Stop delivering and keep the cursor.")
    start_from: str = Field(
        "now",
        pattern=START_FROM,
        max_length=64,
        description="Where a new Trigger's cursor starts: now (events stored from its "
        "creation on), beginning (the oldest event the source still keeps) or an RFC 3339 "
        "time. Applied once, when the cursor is created; changing it later does not move "
        "the cursor (create a Replay instead).",
    )

    @model_validator(mode="after")
    def _start_from(self) -> TriggerSpec:
        if self.start_from not in ("now", "beginning"):
            parse_time(self.start_from, field="spec.startFrom")
        return self


# --- Replay ---------------------------------------------------------------------------

STREAM_ID = r"^[0-9]+-[0-9]+$"


class DeadLetterSelection(ApiModel):
    """Which dead letters of the Trigger: all (empty), those of the last `since`,
    or those with these DLQ ids."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            ("!has(self.since) || !has(self.ids)", "set at most one of since or ids")
        )
    )

    since: str | None = Duration(None, "Dead letters of the last DURATION, e.g. 2h.")
    ids: list[Annotated[str, Field(pattern=STREAM_ID, max_length=41)]] | None = Field(
        None,
        max_length=10_000,
        description="DLQ entry ids, as `tidings replay --dry-run` lists them.",
    )

    @model_validator(mode="after")
    def _one(self) -> DeadLetterSelection:
        _check_durations(self, "since")
        if self.since is not None and self.ids is not None:
            raise ValueError("set at most one of since or ids")
        return self


class StreamWindow(ApiModel):
    """Events of the Trigger's source stored from `since` up to `until`."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            (
                "!has(self.since) || !has(self.until) || "
                "timestamp(self.since) < timestamp(self.until)",
                "until must be after since",
            )
        )
    )

    since: str | None = Field(
        None,
        pattern=RFC3339,
        max_length=64,
        description="RFC 3339; default: the oldest event the source still keeps.",
    )
    until: str | None = Field(
        None,
        pattern=RFC3339,
        max_length=64,
        description="RFC 3339, exclusive; default: when the Replay starts.",
    )
    filter: Filter | None = Field(
        None, description="Only events this filter (as a Trigger's) also accepts."
    )

    @model_validator(mode="after")
    def _window(self) -> StreamWindow:
        since = parse_time(self.since, field="since") if self.since else None
        until = parse_time(self.until, field="until") if self.until else None
        if since is not None and until is not None and until <= since:
            raise ValueError("until must be after since")
        return self


class ReplayFrom(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=_validations(
            (
                "has(self.deadLetters) != has(self.stream)",
                "set exactly one of deadLetters or stream",
            )
        )
    )

    dead_letters: DeadLetterSelection | None = Field(
        None, description="The Trigger's dead letters (its DLQ)."
    )
    stream: StreamWindow | None = Field(
        None, description="Events still stored in the source's stream (within its retention)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ReplayFrom:
        if (self.dead_letters is None) == (self.stream is None):
            raise ValueError("set exactly one of deadLetters or stream")
        return self


class ReplayRate(ApiModel):
    per_second: float = Field(
        gt=0, le=1_000_000, description="Events handed to the Trigger per second, at most."
    )


class ReplaySpec(ApiModel):
    """What to deliver again, to one Trigger. Immutable: a Replay runs once."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            (
                "self == oldSelf",
                "spec is immutable: a Replay runs once; create a new Replay to replay again",
            )
        )
    )

    trigger: str = Field(
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="A Trigger in this namespace; only it receives the events.",
    )
    from_: ReplayFrom = Field(alias="from", description="Exactly one of deadLetters or stream.")
    rate: ReplayRate | None = Field(
        None, description="A limit on top of the Trigger's own concurrency and rate limits."
    )


# --- status ---------------------------------------------------------------------------
# What the operator writes (tidings.operator.status builds these models and
# writes their wire form), so the CRD's status schema and the operator's
# output cannot drift apart.


class Condition(ApiModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    message: str = Field("", max_length=32768)
    observed_generation: int | None = None
    last_transition_time: str | None = None


class LastFailure(ApiModel):
    time: str | None = None
    status: int | None = None
    message: str | None = None


class LastFilterError(ApiModel):
    time: str | None = None
    reason: str | None = Field(
        None, description="type | function | arithmetic | result | other (docs/filters.md)."
    )
    message: str | None = None


# What the dispatchers report (tidings.api.keys.STATE_STATE); Paused also
# at once from spec.paused. No `Idle`: "nothing to deliver" is `lag: 0`.
DeliveryState = Literal["Delivering", "Backoff", "Paused"]


class DeliveryStatus(ApiModel):
    state: DeliveryState | None = Field(
        None,
        description="Delivering; Backoff (the subscriber keeps failing: its oldest event is "
        "retried at growing intervals); Paused.",
    )
    lag: int | None = None
    dead_lettered: int | None = None
    expired: int | None = Field(None, description="Events trimmed by retention undelivered.")
    last_failure: LastFailure | None = None
    filter_errors: int | None = Field(
        None,
        description="Events the filter expression failed on (not a missing field): "
        "dead-lettered, see docs/filters.md.",
    )
    last_filter_error: LastFilterError | None = None
    delayed: int | None = Field(
        None,
        description="Delayed events not due yet (deliverafter, delivery.delay): scheduled, "
        "not late; in neither lag nor oldestUndelivered.",
    )
    oldest_undelivered: str | None = Field(
        None,
        description="When the oldest event not yet delivered became due (RFC 3339): when it "
        "was stored, a delayed event when its delay ended; shown while that is over a "
        "minute ago.",
    )
    expires_at: str | None = Field(
        None,
        description="When that event hits the Trigger's maxAge or the source's retention "
        "(RFC 3339): the forecast of loss if the subscriber does not recover.",
    )


class ObjectStatus(ApiModel):
    """What both kinds report; other writers may add fields (and condition types)."""

    model_config = ConfigDict(extra="allow")

    observed_generation: int | None = None
    conditions: list[Condition] | None = None


class TriggerStatus(ObjectStatus):
    subscriber_uri: str | None = Field(None, alias="subscriberURI")
    delivery: DeliveryStatus | None = None


class EventSourceStatus(ObjectStatus):
    url: str | None = Field(None, description="Ingest URL, for http sources.")


ReplayPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class ReplayStatus(ObjectStatus):
    phase: ReplayPhase | None = Field(
        None,
        description="Pending (waiting for its Trigger), Running, Succeeded (every event "
        "delivered or skipped), Failed (some were dead-lettered again, or it cannot run).",
    )
    total: int | None = Field(None, description="Events selected.")
    sent: int | None = Field(None, description="Events handed to the Trigger so far.")
    delivered: int | None = Field(None, description="Sent events the subscriber accepted.")
    failed: int | None = Field(None, description="Sent events dead-lettered again.")
    skipped: int | None = Field(
        None,
        description="Selected events not sent: filtered out, already scheduled for delivery, "
        "or no longer stored.",
    )
    start_time: str | None = None
    completion_time: str | None = None


# --- TriggerGrant ---------------------------------------------------------------------


class GrantFrom(ApiModel):
    """Who the grant admits: the Triggers of one namespace."""

    kind: Literal["Trigger"] = Field("Trigger", description="Only Trigger is supported.")
    namespace: str = Field(
        pattern=DNS_LABEL,
        max_length=63,
        description="The namespace whose Triggers may deliver to this namespace.",
    )


class GrantTo(ApiModel):
    """What the grant opens: one Service of this namespace, or every one."""

    kind: Literal["Service"] = Field("Service", description="Only Service is supported.")
    name: str | None = Field(
        None,
        pattern=DNS_LABEL,
        max_length=63,
        description="A Service of this namespace; unset: every Service of it.",
    )


class TriggerGrantSpec(ApiModel):
    """The consent of a namespace (the grant's own) to be delivered to by Triggers
    of other namespaces: a `subscriber.ref` or `deadLetter.ref` naming a Service
    here from another namespace needs a grant here that admits it (in the spirit
    of Gateway API's ReferenceGrant). Without one: CrossNamespaceNotAllowed."""

    from_: list[GrantFrom] = Field(
        alias="from",
        min_length=1,
        max_length=64,
        description="The namespaces whose Triggers are admitted.",
    )
    to: list[GrantTo] = Field(
        min_length=1, max_length=64, description="The Services of this namespace they may use."
    )

    def admits(self, namespace: str, service: str) -> bool:
        """Whether Triggers of `namespace` may deliver to Service `service` here."""
        return any(f.namespace == namespace for f in self.from_) and any(
            t.name is None or t.name == service for t in self.to
        )


# --- whole objects (used by `tidings dev` and tests) ----------------------------------


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    namespace: str = Field("default", pattern=DNS_LABEL, max_length=63)
    generation: int = 1


class EventSource(BaseModel):
    model_config = ConfigDict(extra="allow")

    api_version: Literal["tidings.dev/v1alpha1"] = Field("tidings.dev/v1alpha1", alias="apiVersion")
    kind: Literal["EventSource"] = "EventSource"
    metadata: ObjectMeta
    spec: EventSourceSpec


class Trigger(BaseModel):
    model_config = ConfigDict(extra="allow")

    api_version: Literal["tidings.dev/v1alpha1"] = Field("tidings.dev/v1alpha1", alias="apiVersion")
    kind: Literal["Trigger"] = "Trigger"
    metadata: ObjectMeta
    spec: TriggerSpec


class Replay(BaseModel):
    model_config = ConfigDict(extra="allow")

    api_version: Literal["tidings.dev/v1alpha1"] = Field("tidings.dev/v1alpha1", alias="apiVersion")
    kind: Literal["Replay"] = "Replay"
    metadata: ObjectMeta
    spec: ReplaySpec


class TriggerGrant(BaseModel):
    model_config = ConfigDict(extra="allow")

    api_version: Literal["tidings.dev/v1alpha1"] = Field("tidings.dev/v1alpha1", alias="apiVersion")
    kind: Literal["TriggerGrant"] = "TriggerGrant"
    metadata: ObjectMeta
    spec: TriggerGrantSpec
