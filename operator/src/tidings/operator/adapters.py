"""The Kubernetes objects an EventSource owns, as pure manifests.

- postgres, kubernetes, schedule and objectStore (poll mode) sources run an
  adapter: a one-replica
  Deployment `tidings-source-<name>` running
  `tidings source KIND --eventsource NS/NAME`, in the EventSource's namespace,
  owned by it. Its Redis URL comes from a Secret `tidings-source-<name>` the
  operator writes next to it (a URL may carry a password; Deployments are
  readable by more roles than Secrets). A postgres adapter also gets its DSN
  from the user's `connectionSecretRef` as `TIDINGS_PG_DSN`, an objectStore
  adapter its access keys from `credentialsSecretRef` as
  `TIDINGS_S3_ACCESS_KEY_ID` / `TIDINGS_S3_SECRET_ACCESS_KEY` (secretKeyRef
  both: the adapter needs no right to read Secrets).
- http sources and objectStore sources in notify mode without `tokenSecretRef`
  (and without HMAC or anonymous access) get a generated bearer token in the
  Secret `<name>-ingest-token`, key `token`, created once and never rewritten,
  so producers (and stores) keep working across restarts.

A template hash annotation on the Deployment lets the operator skip the write
when nothing changed. The pod reads those Secrets only at start, so a digest of
their values is in the pod template (`tidings.dev/secrets-hash`): the operator
watches them, and fixing a key rolls the adapter (an InvalidCredentials adapter
does not stay stuck on the old keys).

The adapter serves /healthz, /readyz and /metrics on port 8080 (`metrics`):
a liveness probe on /healthz restarts a wedged process, and the pod carries
the prometheus.io/* scrape annotations. No readiness probe: the operator's
AdapterReady condition counts available replicas, and an adapter that retries
(its database is down) or waits for the Lease is alive, not unavailable; its
own report says why it does not capture (Capturing condition, /readyz).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tidings.api.routes import CLUSTER_DOMAIN, ingest_token_secret_name
from tidings.api.types import API_VERSION, EventSourceSpec
from tidings.sources.adapters import S3_ACCESS_ENV, S3_CA_ENV, S3_SECRET_ENV

MANAGED_BY = "tidings-operator"
SOURCE_LABEL = "tidings.dev/eventsource"
TEMPLATE_HASH = "tidings.dev/template-hash"
SECRETS_HASH = "tidings.dev/secrets-hash"
S3_CA_DIR = "/etc/tidings/s3-ca"  # caSecretRef's key, mounted as ca.crt
ADAPTER_KINDS = ("postgres", "kubernetes", "schedule", "objectStore")  # objectStore: poll only
TOKEN_KEY = "token"
REDIS_URL_KEY = "REDIS_URL"
HEALTH_PORT = 8080


@dataclass(frozen=True)
class AdapterSettings:
    """Operator flags that shape adapter Deployments."""

    image: str
    redis_url: str
    # The rest of the operator's Redis settings the adapters need (REDIS_USERNAME,
    # REDIS_PASSWORD, REDIS_TLS_CA as PEM): they run in other namespaces, without
    # the operator's files, so the values travel in their config Secret.
    redis_env: Mapping[str, str] = field(default_factory=dict)
    service_account: str | None = None
    image_pull_policy: str = "IfNotPresent"
    # The adapter container's resources (a Postgres adapter is one Python
    # process: its throughput is what CPU it gets).
    resources: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    # The operator's own OTEL_* variables, passed on: set tracing once, on the
    # operator, and every adapter exports its spans the same way.
    otel_env: Mapping[str, str] = field(default_factory=dict)


DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
}
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def parse_resources(text: str, flag: str = "--adapter-resources") -> dict[str, Any]:
    """A container `resources` object from JSON, checked so a typo is an error at
    start, not a Deployment the API server refuses for every EventSource."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValueError(
            f"{flag}: not JSON ({error}); write e.g. "
            '\'{"requests": {"cpu": "1", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}\''
        ) from None
    if not isinstance(value, dict) or not set(value) <= {"requests", "limits"}:
        raise ValueError(f"{flag}: an object with `requests` and/or `limits`")
    for part, amounts in value.items():
        if not isinstance(amounts, dict) or not set(amounts) <= {"cpu", "memory"}:
            raise ValueError(f"{flag}: {part} takes `cpu` and/or `memory`")
        for resource, amount in amounts.items():
            if not QUANTITY.match(str(amount)):
                raise ValueError(
                    f"{flag}: {part}.{resource}={amount!r} is not a Kubernetes quantity "
                    "(e.g. 500m, 1, 128Mi)"
                )
            amounts[resource] = str(amount)
    return value


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    # No blockOwnerDeletion: it would need `update` on eventsources/finalizers
    # under OwnerReferencesPermissionEnforcement, and our finalizer cleans up anyway.
    return {"apiVersion": API_VERSION, "kind": kind, "name": name, "uid": uid, "controller": True}


def labels(source: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tidings-source",
        "app.kubernetes.io/instance": source,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "tidings",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        SOURCE_LABEL: source,
    }


def ingest_url(namespace: str, name: str, *, service: str, service_namespace: str) -> str:
    """Where producers POST events to an http EventSource."""
    return f"http://{service}.{service_namespace}.svc.{CLUSTER_DOMAIN}/sources/{namespace}/{name}"


def has_adapter(spec: EventSourceSpec | None) -> bool:
    """Whether the source runs an adapter Deployment (objectStore in notify mode
    does not: the store POSTs to ingest)."""
    if spec is None or spec.kind not in ADAPTER_KINDS:
        return False
    return spec.object_store is None or spec.object_store.mode == "poll"


def notify_instructions(spec: EventSourceSpec, name: str, url: str) -> str | None:
    """What to configure on the store of an objectStore notify source: where to
    POST its event notifications and how to authenticate (None: not one)."""
    store = spec.object_store
    if store is None or store.mode != "notify":
        return None
    auth = store.auth
    events = ", ".join(
        {"created": "s3:ObjectCreated:*", "deleted": "s3:ObjectRemoved:*"}[e] for e in store.events
    )
    where = f"configure bucket {store.bucket!r} to send event notifications ({events}) to {url}"
    if auth.token_secret_ref is not None or needs_generated_token(spec):
        ref = auth.token_secret_ref
        secret, key = (ref.name, ref.key) if ref else (ingest_token_secret_name(name), TOKEN_KEY)
        how = (
            f" with the header 'Authorization: Bearer <token>', or, for stores that cannot set "
            f"headers (Versity Gateway, Ceph RGW), to {url}?token=<token>; the token is key "
            f"{key!r} of Secret {secret}"
        )
    elif auth.hmac_secret_ref is not None:
        how = (
            f" signed with HMAC-SHA256 of the body (hex) in header {auth.hmac_header}; the key "
            f"is key {auth.hmac_secret_ref.key!r} of Secret {auth.hmac_secret_ref.name}"
        )
    elif auth.standard_webhooks is not None:
        ref = auth.standard_webhooks.secret_ref
        how = (
            f" with Standard Webhooks signatures; the secret is key {ref.key!r} "
            f"of Secret {ref.name}"
        )
    else:
        how = " (no credentials: allowAnonymous)"
    return where + how


def needs_generated_token(spec: EventSourceSpec) -> bool:
    auth = spec.ingest_auth
    if auth is None:
        return False
    return auth.generated_token


def token_secret(namespace: str, source: str, uid: str) -> dict[str, Any]:
    """The generated ingest token Secret of an http or objectStore notify source."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": ingest_token_secret_name(source),
            "namespace": namespace,
            "labels": labels(source, "ingest-token"),
            "ownerReferences": [owner_reference("EventSource", source, uid)],
        },
        "stringData": {TOKEN_KEY: secrets.token_urlsafe(32)},
    }


def adapter_name(source: str) -> str:
    """`tidings-source-<name>`, shortened with a hash to fit a 63-character name."""
    name = f"tidings-source-{source}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(source.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-.')}-{digest}"


def adapter_config_secret(
    namespace: str, source: str, uid: str, settings: AdapterSettings
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": adapter_name(source),
            "namespace": namespace,
            "labels": labels(source, "adapter-config"),
            "ownerReferences": [owner_reference("EventSource", source, uid)],
        },
        "stringData": {REDIS_URL_KEY: settings.redis_url, **settings.redis_env},
    }


def _hash(value: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def consumed_secrets(spec: EventSourceSpec) -> list[tuple[str, str]]:
    """The (Secret name, key) pairs an adapter pod reads at start: the Postgres
    DSN, the store's access keys (env by secretKeyRef) and its CA (a file)."""
    refs: list[tuple[str, str]] = []
    if spec.postgres is not None:
        dsn = spec.postgres.connection_secret_ref
        refs.append((dsn.name, dsn.key))
    store = spec.object_store
    if store is not None and store.credentials_secret_ref is not None:
        creds = store.credentials_secret_ref
        refs += [(creds.name, creds.access_key_id_key), (creds.name, creds.secret_access_key_key)]
    if store is not None and store.ca_secret_ref is not None:
        refs.append((store.ca_secret_ref.name, store.ca_secret_ref.key))
    return refs


def secrets_hash(uid: str, values: Mapping[tuple[str, str], str | None]) -> str:
    """A digest of the consumed Secrets' values, salted with the EventSource's uid
    (the same password in two sources does not show as the same annotation)."""
    return _hash({"uid": uid, **{f"{name}/{key}": v for (name, key), v in values.items()}})


def adapter_deployment(
    namespace: str,
    source: str,
    uid: str,
    spec: EventSourceSpec,
    settings: AdapterSettings,
    secret_values: Mapping[tuple[str, str], str | None] | None = None,
) -> dict[str, Any]:
    """The adapter Deployment of a postgres, kubernetes, schedule or objectStore
    poll source; `secret_values`: the values of its `consumed_secrets` (absent:
    no digest, as for sources that read none)."""
    kind = spec.kind
    if not has_adapter(spec):
        raise ValueError(f"{kind} sources have no adapter")
    name = adapter_name(source)
    pod_labels = labels(source, f"{kind}-source")
    env: list[dict[str, Any]] = [
        {"name": "TIDINGS_EVENTSOURCE", "value": f"{namespace}/{source}"},
        # The spec travels with the pod, so a spec change rolls the adapter.
        {"name": "TIDINGS_EVENTSOURCE_SPEC", "value": json.dumps(spec.to_wire(), sort_keys=True)},
        {"name": "TIDINGS_LOG_FORMAT", "value": "json"},
        {"name": "TIDINGS_SOURCE_LISTEN", "value": f"0.0.0.0:{HEALTH_PORT}"},
    ]
    env += [{"name": k, "value": v} for k, v in sorted(settings.otel_env.items())]
    if spec.postgres is not None:
        ref = spec.postgres.connection_secret_ref
        env.append(
            {
                "name": "TIDINGS_PG_DSN",
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
            }
        )
    store = spec.object_store
    if store is not None and store.credentials_secret_ref is not None:
        creds = store.credentials_secret_ref
        for variable, key in (
            (S3_ACCESS_ENV, creds.access_key_id_key),
            (S3_SECRET_ENV, creds.secret_access_key_key),
        ):
            env.append(
                {
                    "name": variable,
                    "valueFrom": {"secretKeyRef": {"name": creds.name, "key": key}},
                }
            )
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if store is not None and store.ca_secret_ref is not None:
        # A file, not env: a CA bundle can be long, and the pod needs no `get` on the Secret.
        ca = store.ca_secret_ref
        volumes.append(
            {
                "name": "s3-ca",
                "secret": {"secretName": ca.name, "items": [{"key": ca.key, "path": "ca.crt"}]},
            }
        )
        mounts.append({"name": "s3-ca", "mountPath": S3_CA_DIR, "readOnly": True})
        env.append({"name": S3_CA_ENV, "value": f"{S3_CA_DIR}/ca.crt"})
    container: dict[str, Any] = {
        "name": "source",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["source", kind, "--eventsource", f"{namespace}/{source}"],
        "env": env,
        "envFrom": [{"secretRef": {"name": name}}],
        "ports": [{"name": "metrics", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
        # Generous: a minute without an answer. A blocked event loop (or a
        # stopped process) answers nothing; a slow database does not block it.
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "resources": json.loads(json.dumps(settings.resources)),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    if volumes:
        container["volumeMounts"] = mounts
        pod_spec["volumes"] = volumes
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    # The config Secret's content is hashed into the pod template: a new Redis URL rolls it.
    config_hash = _hash({REDIS_URL_KEY: settings.redis_url, **settings.redis_env})
    if not settings.redis_env:  # as before the Redis settings: no needless roll on upgrade
        config_hash = hashlib.sha256(settings.redis_url.encode()).hexdigest()[:16]
    annotations = {
        "tidings.dev/config-hash": config_hash,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(HEALTH_PORT),
        "prometheus.io/path": "/metrics",
    }
    if secret_values:
        annotations[SECRETS_HASH] = secrets_hash(uid, secret_values)
    template = {
        "metadata": {"labels": pod_labels, "annotations": annotations},
        "spec": pod_spec,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": pod_labels,
            "annotations": {TEMPLATE_HASH: _hash(template)},
            "ownerReferences": [owner_reference("EventSource", source, uid)],
        },
        "spec": {
            "replicas": 1,
            # One adapter at a time: the old one stops before the new one starts.
            "strategy": {"type": "Recreate"},
            "selector": {
                "matchLabels": {"app.kubernetes.io/name": "tidings-source", SOURCE_LABEL: source}
            },
            "template": template,
        },
    }


def template_hash(deployment: Mapping[str, Any]) -> str:
    value: str = deployment["metadata"]["annotations"][TEMPLATE_HASH]
    return value
