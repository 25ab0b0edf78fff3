"""Every Redis key, stream field, hash field and channel name Tidings uses, defined once.

All keys of one EventSource share the hash tag `{ns/name}`, so in Redis Cluster
they live on one slot and every script or transaction over them stays legal.
The routing table has its own tag, `{routing}`.

The Lua scripts (tidings.api.scripts) spell the upper-case names below as
`{{NAME}}`; the loader puts the value in, so a name changed here changes there.
"""

from __future__ import annotations

PREFIX = "tidings"

# --- routing table (written by the operator / `tidings dev`, read by dispatchers) ---
ROUTES = f"{PREFIX}:{{routing}}:routes"  # HASH "ns/trigger" -> Route JSON
SOURCES = f"{PREFIX}:{{routing}}:sources"  # HASH "ns/source" -> CompiledSource JSON
TABLE_VERSION = f"{PREFIX}:{{routing}}:version"  # INT, bumped on every change
TABLE_CHANGED = f"{PREFIX}:routing:changed"  # pub/sub channel; message = new version
# pub/sub channel; message = a Trigger id ("ns/name") whose retries another process
# made due (a replay's hand-back): its workers look now, not after their idle block.
TRIGGER_WAKE = f"{PREFIX}:trigger:wake"
# pub/sub channel; message = a Trigger id ("ns/name") whose delivery report has news
# for status (it left rest, changed state, counted dead letters, expiries or filter
# errors): the operator, which reads a report at rest only now and then, looks now.
REPORT_NEWS = f"{PREFIX}:report:news"
# ZSET dispatcher replica name -> ms of its last heartbeat (tidings.api.heartbeat).
# Every dispatcher routes every Trigger, so a live one vouches for the delivery
# state of the Triggers at rest, which it does not rewrite.
DISPATCHERS = f"{PREFIX}:{{routing}}:dispatchers"
# Operator bookkeeping: HASH "ns/trigger" -> the source whose stream holds its consumer
# group, so a Trigger moved to another source (or deleted) has its old cursor removed.
CURSORS = f"{PREFIX}:{{routing}}:cursors"
# Replays to run (written by the operator / `tidings dev`, run by dispatchers):
# HASH "ns/replay" -> CompiledReplay JSON (tidings.api.routes).
REPLAY_JOBS = f"{PREFIX}:{{routing}}:replays"

# --- stream entry fields ---
FIELD_EVENT = "e"  # the CloudEvent, JSON (structured form; data inline or data_base64)
FIELD_TIME = "t"  # ingest time, ms since epoch
FIELD_DUE = "d"  # delayed events only: deliver no earlier than this, ms since epoch

# An empty stream is made by creating and destroying a consumer group of this
# name; Kubernetes names cannot contain ':', so no Trigger's group is called this.
PLACEHOLDER_GROUP = f"{PREFIX}:init"


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


def event_index(namespace: str, name: str) -> str:
    """ZSET event id -> the ms part of its stream id: finds an event by id without
    scanning the stream (`tidings trace`). Written with the append, trimmed with the
    stream by retention; tidings.api.attempts says what it costs."""
    return f"{PREFIX}:{source_tag(namespace, name)}:ids"


def adapter_state(namespace: str, name: str) -> str:
    """HASH of a source adapter's resume point (LSN, resourceVersion, last tick) and
    its guard (ADAPTER_GUARD)."""
    return f"{PREFIX}:{source_tag(namespace, name)}:adapter"


def adapter_objects(namespace: str, name: str) -> str:
    """HASH of the objects a source adapter has seen. Kubernetes: "<resource>|<uid>" ->
    JSON {rv, name, namespace}; lets a re-list after 410 Gone emit only real changes.
    objectStore (poll): object key -> JSON [etag, lastModified, size, versionId]."""
    return f"{PREFIX}:{source_tag(namespace, name)}:objects"


def group(trigger_name: str) -> str:
    """A Trigger's consumer group on its source's stream (Triggers share the namespace)."""
    return trigger_name


def _trigger_key(namespace: str, source: str, trigger: str, what: str) -> str:
    return f"{PREFIX}:{source_tag(namespace, source)}:t:{trigger}:{what}"


def retries(namespace: str, source: str, trigger: str) -> str:
    """ZSET of stream ids scheduled for another attempt, scored by due time (ms)."""
    return _trigger_key(namespace, source, trigger, "retry")


def attempts(namespace: str, source: str, trigger: str) -> str:
    """HASH stream id -> attempts made so far (a count) of a scheduled retry."""
    return _trigger_key(namespace, source, trigger, "attempts")


def dead_letters(namespace: str, source: str, trigger: str) -> str:
    """STREAM of dead-lettered events (DLQ_* fields) with their attempts, last status
    and error."""
    return _trigger_key(namespace, source, trigger, "dlq")


def trigger_state(namespace: str, source: str, trigger: str) -> str:
    """HASH the data plane publishes for the operator: state, lag, counts, last failure."""
    return _trigger_key(namespace, source, trigger, "state")


def in_flight(namespace: str, source: str, trigger: str) -> str:
    """ZSET of in-flight leases (member -> expiry ms) for the cluster-wide concurrency limit."""
    return _trigger_key(namespace, source, trigger, "inflight")


def rate_bucket(namespace: str, source: str, trigger: str) -> str:
    """HASH token bucket (RATE_* fields) for the cluster-wide rate limit."""
    return _trigger_key(namespace, source, trigger, "rate")


def ordering(namespace: str, source: str, trigger: str) -> str:
    """HASH ordering key -> stream id of the event holding that key."""
    return _trigger_key(namespace, source, trigger, "order")


def attempt_log(namespace: str, source: str, trigger: str) -> str:
    """STREAM, one entry per delivery attempt (ATTEMPT_* fields; tidings.api.attempts),
    bounded by the Trigger's delivery.attemptLog (maxEntries, maxAge)."""
    return _trigger_key(namespace, source, trigger, "log")


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
        held(namespace, source, trigger),
        parked(namespace, source, trigger),
        replays(namespace, source, trigger),
        delayed(namespace, source, trigger),
        delayed_held(namespace, source, trigger),
        replay_owners(namespace, source, trigger),
        replay_runs(namespace, source, trigger),
        attempt_log(namespace, source, trigger),
        replay_dead_letters(namespace, source, trigger),
        replay_leased(namespace, source, trigger),
    ]


def held(namespace: str, source: str, trigger: str) -> str:
    """ZSET of stream ids a Trigger holds outside its PEL (scheduled retries,
    entries parked behind an ordering key, delayed events once fetched), scored by
    the id's time part (ms): retention reads the ones below its trim point, to
    count them expired and drop their bookkeeping (retention_trim.lua)."""
    return _trigger_key(namespace, source, trigger, "held")


def parked(namespace: str, source: str, trigger: str) -> str:
    """ZSET (all scores 0) of "<ordering key>\\0<zero-padded stream id>": entries
    waiting for an earlier event of their ordering key, in stream order per key."""
    return _trigger_key(namespace, source, trigger, "parked")


def delayed(namespace: str, source: str, trigger: str) -> str:
    """ZSET of stream ids set aside until their due time (ms, the score): events with
    a deliverafter or under delivery.delay. Each is also in the retry ZSET (which
    makes it due) and in `delayed_held`; this set only tells them from retries (lag,
    ordering, the oldest undelivered event's age)."""
    return _trigger_key(namespace, source, trigger, "delayed")


def delayed_held(namespace: str, source: str, trigger: str) -> str:
    """ZSET of the ids in `delayed`, scored by the id's time part (ms) as `held` is:
    retention reads its lowest score too. Kept apart from `held` so that everything
    in `held` is due (the oldest undelivered event is found at its low end without
    stepping over events not due yet); a delayed event moves to `held` when fetched."""
    return _trigger_key(namespace, source, trigger, "delayed-held")


def replay_owners(namespace: str, source: str, trigger: str) -> str:
    """HASH stream id -> the Replay that handed it to the Trigger (its copy is in
    `replays`): settling it counts it as delivered or failed for that Replay.
    "" once that Replay was deleted while the event was leased (`replay_leased`):
    that attempt ends, and it is not retried (lua/replay_cancel.lua)."""
    return _trigger_key(namespace, source, trigger, "replay-owner")


def replay_dead_letters(namespace: str, source: str, trigger: str) -> str:
    """HASH stream id -> the DLQ entry a Replay of dead letters took it from (its
    fields, a JSON array [field, value, ...]): deleting that Replay before the
    event is delivered puts the entry back in the DLQ as it was (lua/_replayed.lua)."""
    return _trigger_key(namespace, source, trigger, "replay-dlq")


def replay_leased(namespace: str, source: str, trigger: str) -> str:
    """SET of stream ids handed over by a Replay with an attempt under way (fetched,
    not settled yet): deleting that Replay lets the attempt end rather than taking
    the event back at once (lua/replay_cancel.lua)."""
    return _trigger_key(namespace, source, trigger, "replay-leased")


def replay_runs(namespace: str, source: str, trigger: str) -> str:
    """HASH of the progress of this Trigger's Replays: "<replay>|<RUN_* field>" -> value
    (one HASH, so the settle script counts outcomes without naming more keys)."""
    return _trigger_key(namespace, source, trigger, "replay-runs")


def replay_lease(namespace: str, source: str, trigger: str, replay: str) -> str:
    """STRING (PX): the dispatcher running a Replay now."""
    return _trigger_key(namespace, source, trigger, f"replay-lease:{replay}")


def run_field(replay: str, field: str) -> str:
    return f"{replay}|{field}"


def replays(namespace: str, source: str, trigger: str) -> str:
    """HASH stream id -> "<ms> <CloudEvent JSON>": dead letters handed back by
    `tidings replay`, delivered from this copy (the source's entry may be trimmed)
    with <ms> as their ingest time. The id is also in the retry ZSET."""
    return _trigger_key(namespace, source, trigger, "replay")


# --- trigger_state HASH fields (written by the dispatcher, read by the operator) ---
STATE_STATE = "state"  # DELIVERING | BACKOFF | PAUSED
STATE_LAG = "lag"  # events not yet delivered: unread + scheduled retries + parked
STATE_PENDING = "pending"  # entries being delivered right now (the group's PEL)
STATE_RETRIES = "retries"  # entries scheduled for another attempt
STATE_DELAYED = "delayed"  # delayed events not due yet (not in lag, not in the oldest's age)
STATE_DEAD_LETTERED = "deadLettered"  # total dead letters (counter)
STATE_EXPIRED = "expired"  # trimmed by retention before delivery (counter)
STATE_DEAD_LETTERS_TRIMMED = "deadLettersTrimmed"  # DLQ entries dropped by its cap (counter)
STATE_FAILURES = "failures"  # consecutive failed attempts, all replicas together
STATE_FAILING_SINCE = "failingSince"  # ms (Redis's clock): that run of failures began
# The failure ratio's sliding window (cursor_settle.lua): the current bucket of
# delivery.backoff.window and the one before, weighted by its overlap.
STATE_WINDOW_START = "windowStart"  # ms: the current bucket began
STATE_WINDOW_ATTEMPTS = "windowAttempts"
STATE_WINDOW_FAILURES = "windowFailures"
STATE_PREVIOUS_ATTEMPTS = "previousAttempts"
STATE_PREVIOUS_FAILURES = "previousFailures"
STATE_RATIO_SINCE = "ratioSince"  # ms: the ratio has been at or over failureRatio since
STATE_LAST_FAILURE_TIME = "lastFailureTime"  # RFC 3339
STATE_LAST_FAILURE_STATUS = "lastFailureStatus"  # HTTP status, "" for network/timeout
STATE_LAST_FAILURE_MESSAGE = "lastFailureMessage"
STATE_PROBE_DUE = "probeDue"  # Backoff: ms since epoch of the next probe
STATE_PROBE_INTERVAL = "probeInterval"  # Backoff: current probe interval, ms
STATE_UPDATED = "updated"  # ms since epoch of the last publish
# ms since epoch the oldest undelivered event became due (stored, or a delayed event's
# due time); 0: none. Events not due yet are not undelivered.
STATE_OLDEST = "oldestUndelivered"
STATE_EXPIRES = "expiresAt"  # ms since epoch it hits maxAge or retention; 0: nothing undelivered
# The filter expression (tidings.dispatcher.filtering, docs/filters.md): evaluations and
# failures (counters), the last failure, and a sliding window of two spans for the
# FilterErrors condition (the current span since its start, and the span before it).
STATE_FILTER_CHECKED = "filterChecked"  # events the expression evaluated (counter)
STATE_FILTER_ERRORS = "filterErrors"  # evaluations that failed: dead-lettered (counter)
STATE_FILTER_LAST_TIME = "filterLastErrorTime"  # RFC 3339
STATE_FILTER_LAST_REASON = "filterLastErrorReason"  # type | function | arithmetic | result | other
STATE_FILTER_LAST_MESSAGE = "filterLastErrorMessage"
STATE_FILTER_GENERATION = "filterGeneration"  # the route generation the window counts
STATE_FILTER_SPAN_START = "filterSpanStart"  # ms since epoch (Redis's clock)
STATE_FILTER_SPAN_CHECKED = "filterSpanChecked"
STATE_FILTER_SPAN_ERRORS = "filterSpanErrors"
STATE_FILTER_PREVIOUS_CHECKED = "filterPreviousChecked"
STATE_FILTER_PREVIOUS_ERRORS = "filterPreviousErrors"

# --- trigger_state's `state` values ---
DELIVERING = "Delivering"
BACKOFF = "Backoff"
PAUSED = "Paused"

# --- replay_runs HASH fields (after "<replay>|") ---
RUN_UID = "uid"  # the Replay object's uid: a recreated Replay starts afresh
RUN_CURSOR = "cursor"  # the last stream (or DLQ) id looked at
RUN_END = "end"  # the window's end, exclusive
RUN_TOTAL = "total"  # entries selected by the window
RUN_SENT = "sent"  # handed to the Trigger
RUN_SKIPPED = "skipped"  # looked at and not sent (filtered out, already due, gone)
RUN_DELIVERED = "delivered"  # sent and settled ok
RUN_FAILED = "failed"  # sent and dead-lettered again
RUN_STARTED = "started"  # ms since epoch (Redis's clock)
RUN_SCANNED = "scanned"  # "1" once the whole window was looked at
RUN_COMPLETED = "completed"  # ms since epoch, once every sent event settled

# --- rate_bucket HASH fields ---
RATE_TOKENS = "tokens"  # tokens left (a float, as text)
RATE_UPDATED = "ts"  # ms since epoch of the last refill

# --- dead_letters STREAM entry fields ---
DLQ_EVENT = "event"  # the CloudEvent as stored in the source's stream ("" if it was gone)
DLQ_STREAM_ID = "streamId"  # its id in the source's stream
DLQ_ATTEMPTS = "attempts"  # attempts made
DLQ_STATUS = "status"  # the last HTTP status, "" after a network error or timeout
DLQ_ERROR = "error"  # why it was given up, and the last error
DLQ_TIME = "time"  # when, ms since epoch
DLQ_TRIGGER = "trigger"  # "namespace/name"

# --- attempt_log STREAM entry fields (the entry's id is when the attempt ended) ---
ATTEMPT_EVENT_ID = "eventId"  # the CloudEvent's id ("" when the stored entry was unreadable)
ATTEMPT_TYPE = "type"  # the CloudEvent's type
ATTEMPT_STREAM_ID = "streamId"  # the event's id in the source's stream
ATTEMPT_NUMBER = "attempt"  # 1-based; a Backoff probe counts as an attempt too
ATTEMPT_OUTCOME = "outcome"  # delivered | retry | dead | refused | expired
ATTEMPT_STATUS = "status"  # the HTTP status, "" when there was no answer
ATTEMPT_DURATION_MS = "durationMs"  # the HTTP attempt, request to answer or failure
ATTEMPT_ERROR = "error"  # "" when delivered
ATTEMPT_BODY = "body"  # the first 1 KiB of the response body
ATTEMPT_REPLICA = "replica"  # the dispatcher replica (pod or host name)
ATTEMPT_LATENCY_MS = "latencyMs"  # stored -> the end of this attempt

# --- adapter_state HASH field ---
ADAPTER_GUARD = "position"  # the position of the last event an adapter wrote
