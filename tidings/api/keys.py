"""Every Redis key, stream field and channel name Tidings uses, defined once.

All keys of one EventSource share the hash tag `{ns/name}`, so in Redis Cluster
they live on one slot and every script or transaction over them stays legal.
The routing table has its own tag, `{routing}`.
"""

from __future__ import annotations

PREFIX = "tidings"

# --- routing table (written by the operator / `tidings dev`, read by dispatchers) ---
ROUTES = f"{PREFIX}:{{routing}}:routes"  # HASH "ns/trigger" -> Route JSON
SOURCES = f"{PREFIX}:{{routing}}:sources"  # HASH "ns/source" -> CompiledSource JSON
TABLE_VERSION = f"{PREFIX}:{{routing}}:version"  # INT, bumped on every change
TABLE_CHANGED = f"{PREFIX}:routing:changed"  # pub/sub channel; message = new version

# --- stream entry fields ---
FIELD_EVENT = "e"  # the CloudEvent, JSON (structured form; data inline or data_base64)
FIELD_TIME = "t"  # ingest time, ms since epoch


def source_tag(namespace: str, name: str) -> str:
    return f"{{{namespace}/{name}}}"


def source_id(namespace: str, name: str) -> str:
    """The "ns/name" form used as a hash field and in log lines."""
    return f"{namespace}/{name}"


def stream(namespace: str, name: str) -> str:
    """The EventSource's one stream; every Trigger is a consumer group on it."""
    return f"{PREFIX}:{source_tag(namespace, name)}:events"


def dedupe(namespace: str, name: str, event_id: str) -> str:
    """SET NX with the dedupe window as TTL: an event id is accepted once."""
    return f"{PREFIX}:{source_tag(namespace, name)}:seen:{event_id}"


def adapter_state(namespace: str, name: str) -> str:
    """HASH of a source adapter's resume point (LSN, resourceVersion, last tick)."""
    return f"{PREFIX}:{source_tag(namespace, name)}:adapter"


def group(trigger_name: str) -> str:
    """A Trigger's consumer group on its source's stream (Triggers share the namespace)."""
    return trigger_name


def _trigger_key(namespace: str, source: str, trigger: str, what: str) -> str:
    return f"{PREFIX}:{source_tag(namespace, source)}:t:{trigger}:{what}"


def retries(namespace: str, source: str, trigger: str) -> str:
    """ZSET of stream ids scheduled for another attempt, scored by due time (ms)."""
    return _trigger_key(namespace, source, trigger, "retry")


def attempts(namespace: str, source: str, trigger: str) -> str:
    """HASH stream id -> attempt bookkeeping JSON (count, first failure, last status)."""
    return _trigger_key(namespace, source, trigger, "attempts")


def dead_letters(namespace: str, source: str, trigger: str) -> str:
    """STREAM of dead-lettered events with their attempts, last status and error."""
    return _trigger_key(namespace, source, trigger, "dlq")


def trigger_state(namespace: str, source: str, trigger: str) -> str:
    """HASH the data plane publishes for the operator: state, lag, counts, last failure."""
    return _trigger_key(namespace, source, trigger, "state")


def in_flight(namespace: str, source: str, trigger: str) -> str:
    """ZSET of in-flight leases (member -> expiry ms) for the cluster-wide concurrency limit."""
    return _trigger_key(namespace, source, trigger, "inflight")


def rate_bucket(namespace: str, source: str, trigger: str) -> str:
    """HASH token bucket (tokens, updated ms) for the cluster-wide rate limit."""
    return _trigger_key(namespace, source, trigger, "rate")


def ordering(namespace: str, source: str, trigger: str) -> str:
    """HASH ordering key -> stream id of the event holding that key."""
    return _trigger_key(namespace, source, trigger, "order")


def trigger_keys(namespace: str, source: str, trigger: str) -> list[str]:
    """Every per-Trigger key, for cleanup when the Trigger is deleted."""
    return [
        retries(namespace, source, trigger),
        attempts(namespace, source, trigger),
        dead_letters(namespace, source, trigger),
        trigger_state(namespace, source, trigger),
        in_flight(namespace, source, trigger),
        rate_bucket(namespace, source, trigger),
        ordering(namespace, source, trigger),
    ]
