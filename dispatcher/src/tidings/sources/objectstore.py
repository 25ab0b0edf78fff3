"""The object-store source in poll mode: list an S3 bucket every pollInterval
and emit `created` for new or changed objects and `deleted` for vanished ones,
exactly once per object version.

- Listing: ListObjectsV2 with the prefix, paginated (1,000 keys a request),
  through the MinIO SDK in a thread; the suffix is filtered here. A versioned
  bucket (GetBucketVersioning, asked at start and every 5 minutes) is listed
  with ListObjectVersions instead, keeping each key's current version, so
  events carry its versionId. Only a
  complete listing is compared: a listing cut short by an error changes
  nothing (else every unlisted key would look deleted).
- State: one Redis hash per source (keys.adapter_objects), object key ->
  its version (etag, lastModified, size, versionId). The adapter loads it once
  (HSCAN) and keeps it in memory, so a poll that finds no change makes no
  Redis call, and a poll with changes makes one call per 1,000 changes.
- Exactly once: each call (lua/objectstore_sync.lua) writes the changed keys'
  new versions *and* their events, all or nothing, and applies a change only
  while the key still holds the version it was compared against. A crash
  before the call: the next poll finds the same changes. After it: the
  reloaded state already has them. A twin replica racing on the same change
  writes it once (the second finds the new version already there).
- First listing: with `initialSync: skip` (default) the objects present are
  recorded without events; `emit` sends `created` for each. The marker that
  the first listing is complete is written with its last chunk, so a crash
  during a 100k-object first sync resumes it under the same policy. A new
  bucket, endpoint, prefix or suffix starts a new first listing (the old
  state would otherwise read as mass deletions).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import redis.exceptions
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError
from redis.asyncio import Redis

from tidings.api import keys, scripts, tracing
from tidings.api.durations import parse_duration
from tidings.api.events import encode
from tidings.api.routes import CompiledSource
from tidings.api.s3events import (
    Change,
    KeyFilter,
    ObjectVersion,
    created_event,
    deleted_event,
    diff,
    listed_time,
    normalize_etag,
    rfc3339,
)
from tidings.api.text import text
from tidings.api.types import ObjectStoreSource
from tidings.sources.errors import SourceError
from tidings.sources.metrics import SourceSeries
from tidings.sources.status import StatusReporter

log = logging.getLogger(__name__)

SYNCED = "synced"  # adapter_state: the first listing of SCOPE is recorded
SCOPE = "scope"  # adapter_state: endpoint, bucket, prefix, suffix of that listing
CHUNK = 1000  # changes per atomic write
VERSIONING_RECHECK = 300.0  # seconds between two GetBucketVersioning


class BucketNotFound(SourceError):
    reason = "BucketNotFound"


class AccessDenied(SourceError):
    reason = "AccessDenied"


class InvalidCredentials(SourceError):
    reason = "InvalidCredentials"


class EndpointUnreachable(SourceError):
    reason = "EndpointUnreachable"


class SecretNotFound(SourceError):
    reason = "SecretNotFound"


class InvalidCA(SourceError):
    reason = "InvalidCA"


class CertificateNotTrusted(SourceError):
    reason = "CertificateNotTrusted"


@dataclass(frozen=True)
class Credentials:
    """How to reach the store: the access keys and, for an https endpoint
    with a private CA, that CA's PEM (spec.objectStore.caSecretRef)."""

    access_key_id: str
    secret_access_key: str
    ca_pem: str | None = None


class CountingPool(urllib3.PoolManager):
    """A urllib3 pool that counts the requests it sends (S3 calls per poll)."""

    requests = 0

    def urlopen(  # type: ignore[override]  # PoolManager's own signature
        self, method: str, url: str, redirect: bool = True, **kw: Any
    ) -> Any:
        self.requests += 1
        return super().urlopen(method, url, redirect=redirect, **kw)


def tls_context(spec: ObjectStoreSource, ca_pem: str | None) -> ssl.SSLContext:
    """Verifies the endpoint's certificate and name: against the CA of
    caSecretRef when given (only it), else the system's trusted CAs."""
    if not ca_pem:
        return ssl.create_default_context()
    ref = spec.ca_secret_ref
    where = f"spec.objectStore.caSecretRef (Secret {ref.name} key {ref.key!r})" if ref else "the CA"
    try:
        return ssl.create_default_context(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as error:
        raise InvalidCA(
            f"{where} is not a PEM CA certificate ({error}); put the PEM of the CA that "
            "signs the endpoint's certificate there"
        ) from None


def client(spec: ObjectStoreSource, credentials: Credentials) -> tuple[Minio, CountingPool]:
    """The MinIO SDK on a counting pool. Raises InvalidCA."""
    parts = urlsplit(spec.endpoint)
    tls: dict[str, Any] = {"cert_reqs": "CERT_NONE"}
    if parts.scheme == "https":
        tls = {"ssl_context": tls_context(spec, credentials.ca_pem)}
    pool = CountingPool(
        timeout=urllib3.Timeout(connect=5.0, read=30.0),
        # The adapter retries with its own backoff and reports meanwhile.
        retries=urllib3.Retry(total=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        maxsize=4,
        **tls,
    )
    minio = Minio(
        parts.netloc,
        access_key=credentials.access_key_id,
        secret_key=credentials.secret_access_key,
        secure=parts.scheme == "https",
        region=spec.region,
        http_client=pool,
    )
    return minio, pool


def store_error(error: Exception, spec: ObjectStoreSource) -> SourceError:
    """The store's answer in its own terms, with what to do about it."""
    where = f"{spec.endpoint} bucket {spec.bucket!r}"
    if isinstance(error, S3Error):
        code = error.code or ""
        if code == "NoSuchBucket":
            return BucketNotFound(
                f"{where}: the bucket does not exist (NoSuchBucket); create it or fix "
                "spec.objectStore.bucket"
            )
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
            return InvalidCredentials(
                f"{where}: the store refused the credentials ({code}); fix the keys in "
                "spec.objectStore.credentialsSecretRef"
            )
        if code in ("AccessDenied", "AllAccessDisabled"):
            return AccessDenied(
                f"{where}: access denied ({code}); allow s3:ListBucket on the bucket for "
                "the access key in spec.objectStore.credentialsSecretRef"
            )
        return SourceError(f"{where}: {code}: {error.message}", reason="StoreError")
    if isinstance(error, ServerError):
        return SourceError(f"{where}: the store answered {error}", reason="StoreError")
    if "CERTIFICATE_VERIFY_FAILED" in str(error):
        how = (
            "is spec.objectStore.caSecretRef the CA that signs it, for this host name?"
            if spec.ca_secret_ref
            else "set spec.objectStore.caSecretRef to the PEM of the CA that signs it"
        )
        return CertificateNotTrusted(
            f"{where}: the endpoint's TLS certificate is not trusted ({str(error)[-200:]}); {how}"
        )
    if isinstance(error, InvalidResponseError):
        return EndpointUnreachable(
            f"{where}: the endpoint did not answer as an S3 API ({str(error)[:200]}); "
            "check spec.objectStore.endpoint"
        )
    return EndpointUnreachable(
        f"{where}: cannot reach the endpoint ({type(error).__name__}: {str(error)[:200]}); "
        "check spec.objectStore.endpoint and the network"
    )


def bucket_versioned(minio: Minio, spec: ObjectStoreSource) -> bool:
    """Whether the bucket keeps versions (Enabled, or Suspended with versions
    kept from before). A store that does not implement GetBucketVersioning, or
    a key not allowed it, reads as unversioned: versionId stays null."""
    try:
        return minio.get_bucket_versioning(spec.bucket).status in ("Enabled", "Suspended")
    except S3Error as error:
        if error.code in ("NotImplemented", "AccessDenied"):
            log.warning(
                "s3://%s: GetBucketVersioning answered %s: listing without version ids",
                spec.bucket,
                error.code,
            )
            return False
        raise


def list_bucket(minio: Minio, spec: ObjectStoreSource) -> dict[str, ObjectVersion]:
    """Every object under the prefix whose key ends with the suffix (blocking)."""
    listed: dict[str, ObjectVersion] = {}
    for obj in minio.list_objects(spec.bucket, prefix=spec.prefix or None, recursive=True):
        key = obj.object_name
        if key is None or obj.is_dir or not key.endswith(spec.suffix):
            continue
        modified = rfc3339(obj.last_modified) if obj.last_modified else ""
        listed[key] = ObjectVersion(
            key, normalize_etag(obj.etag), int(obj.size or 0), modified, obj.version_id
        )
    return listed


S3_XML = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# RFC 3339 with any number of fraction digits (Versity Gateway sends nanoseconds).
_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def parse_time(value: str) -> str:
    """A listing's LastModified as rfc3339() writes it ("" if unreadable)."""
    found = _TIME.match(value.strip())
    if found is None:
        return ""
    whole, fraction, zone = found.groups()
    moment = datetime.fromisoformat(f"{whole}.{(fraction or '0')[:6]:0<6}")
    offset = UTC if zone == "Z" else datetime.strptime(zone, "%z").tzinfo
    return rfc3339(moment.replace(tzinfo=offset))


def list_versions(minio: Minio, spec: ObjectStoreSource) -> dict[str, ObjectVersion]:
    """Of each key under the prefix its current version (ListObjectVersions,
    paginated, blocking); a key whose current version is a delete marker is
    gone. The SDK signs and sends each page; the XML is read here because
    the SDK's own reader refuses LastModified with more than 6 fraction
    digits, which Versity Gateway's version listing has."""
    listed: dict[str, ObjectVersion] = {}
    query: dict[str, str | list[str] | tuple[str]] = {
        "versions": "",
        "prefix": spec.prefix,
        "max-keys": "1000",
    }
    while True:
        response = minio._execute("GET", spec.bucket, query_params=query)
        root = ElementTree.fromstring(response.data)
        for version in root.iter(f"{S3_XML}Version"):
            key = version.findtext(f"{S3_XML}Key") or ""
            if version.findtext(f"{S3_XML}IsLatest") != "true" or not key.endswith(spec.suffix):
                continue
            version_id = version.findtext(f"{S3_XML}VersionId")
            listed[key] = ObjectVersion(
                key,
                normalize_etag(version.findtext(f"{S3_XML}ETag") or ""),
                int(version.findtext(f"{S3_XML}Size") or 0),
                parse_time(version.findtext(f"{S3_XML}LastModified") or ""),
                # "null": written before versioning was enabled, as in an unversioned bucket.
                version_id if version_id not in (None, "", "null") else None,
            )
        if root.findtext(f"{S3_XML}IsTruncated") != "true":
            return listed
        query["key-marker"] = root.findtext(f"{S3_XML}NextKeyMarker") or ""
        query["version-id-marker"] = root.findtext(f"{S3_XML}NextVersionIdMarker") or ""


def list_current(
    minio: Minio, spec: ObjectStoreSource, versioned: bool | None
) -> tuple[dict[str, ObjectVersion], bool]:
    """list_bucket, asking first whether the bucket is versioned when `versioned` is None."""
    if versioned is None:
        versioned = bucket_versioned(minio, spec)
    return (list_versions if versioned else list_bucket)(minio, spec), versioned


@dataclass(frozen=True)
class PollResult:
    listed: int
    changes: int
    appended: int
    conflicts: int
    s3_requests: int
    redis_calls: int
    seconds: float


class ObjectStoreAdapter:
    kind = "objectStore"

    def __init__(
        self,
        source: CompiledSource,
        spec: ObjectStoreSource,
        redis: Redis,
        *,
        credentials: Credentials | None,
        backoff_max: float = 30.0,
        chunk: int = CHUNK,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.spec = spec
        self.redis = redis
        self.credentials = credentials
        self.backoff_max = backoff_max
        self.chunk = chunk
        self.clock = clock
        self.filter = KeyFilter(spec.prefix, spec.suffix, frozenset(spec.events))
        self.interval = parse_duration(spec.poll_interval)
        self.status = StatusReporter(redis, source.namespace, source.name)
        self.metrics: SourceSeries | None = None  # `tidings source --listen` attaches it
        self.objects_key = keys.adapter_objects(source.namespace, source.name)
        self.state_key = keys.adapter_state(source.namespace, source.name)
        self.known: dict[str, str] | None = None  # None: (re)load from Redis
        self.last: PollResult | None = None
        self._synced = False
        self._stopping = asyncio.Event()
        self._minio: tuple[Minio, CountingPool] | None = None
        # Whether the bucket keeps versions, asked again every VERSIONING_RECHECK seconds.
        self._versioned: bool | None = None
        self._versioning_asked = 0.0

    @property
    def scope(self) -> str:
        s = self.spec
        return json.dumps([s.endpoint.rstrip("/"), s.bucket, s.prefix, s.suffix])

    async def stop(self) -> None:
        self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=max(0.0, seconds))

    async def run(self) -> None:
        if self.credentials is None:
            ref, ca = self.spec.credentials_secret_ref, self.spec.ca_secret_ref
            error = SecretNotFound(
                "spec.objectStore.credentialsSecretRef: the Secret "
                f"{ref.name if ref else '?'} or its keys are missing; create it with keys "
                f"{ref.access_key_id_key if ref else 'accessKeyId'} and "
                f"{ref.secret_access_key_key if ref else 'secretAccessKey'}"
                + (
                    f" (and spec.objectStore.caSecretRef: Secret {ca.name} key {ca.key!r})"
                    if ca
                    else ""
                )
            )
            log.error("%s: %s", self.source.id, error)
            await self.status.report("Retrying", error.reason, error.message)
            await self._stopping.wait()  # a new Secret restarts the adapter
            await self.status.report("Stopped", "Stopped", "the adapter was stopped")
            return
        delay = 1.0
        while not self._stopping.is_set():
            started = self.clock()
            try:
                self.last = await self.poll()
                delay = 1.0
                await self.status.report(
                    "Running",
                    "Polling",
                    f"listing s3://{self.spec.bucket}/{self.spec.prefix}*{self.spec.suffix} "
                    f"every {self.spec.poll_interval}",
                    objects=len(self.known or {}),
                )
            except SourceError as error:
                await self._retry(error, delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            except redis.exceptions.RedisError as error:
                self.known = None  # a write may or may not have happened
                await self._retry(SourceError(f"Redis: {error}", reason="RedisUnavailable"), delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            await self._pause(self.interval - (self.clock() - started))
        await self.status.report("Stopped", "Stopped", "the adapter was stopped")

    async def _retry(self, error: SourceError, delay: float) -> None:
        log.warning("%s: %s (retrying in %.0fs)", self.source.id, error, delay)
        await self.status.report("Retrying", error.reason, error.message)
        await self._pause(delay)

    def _client(self) -> tuple[Minio, CountingPool]:
        if self._minio is None:
            assert self.credentials is not None
            self._minio = client(self.spec, self.credentials)
        return self._minio

    async def _list(self) -> tuple[dict[str, ObjectVersion], int]:
        minio, pool = self._client()
        before = pool.requests
        if time.monotonic() - self._versioning_asked > VERSIONING_RECHECK:
            self._versioned = None
        try:
            asked = self._versioned is None
            listed, self._versioned = await asyncio.to_thread(
                list_current, minio, self.spec, self._versioned
            )
            if asked:
                self._versioning_asked = time.monotonic()
        except (S3Error, ServerError, InvalidResponseError, urllib3.exceptions.HTTPError) as error:
            raise store_error(error, self.spec) from None
        except ElementTree.ParseError as error:
            unreadable = InvalidResponseError(0, "", f"unreadable XML: {error}")
            raise store_error(unreadable, self.spec) from None
        except OSError as error:
            raise store_error(error, self.spec) from None
        return listed, pool.requests - before

    async def _load(self) -> tuple[dict[str, str], dict[str, str], int]:
        """The remembered objects and the adapter's state (HSCAN: bounded replies)."""
        calls = 1
        raw_state = await self.redis.hgetall(self.state_key)  # type: ignore[misc]
        state = {text(k): text(v) for k, v in raw_state.items()}
        if state.get(SCOPE) != self.scope:
            # A new bucket/prefix/suffix (or a first run): start a first listing.
            await self.redis.delete(self.objects_key)
            await self.redis.hdel(self.state_key, SYNCED)  # type: ignore[misc]
            state.pop(SYNCED, None)
            return {}, state, calls + 2
        known: dict[str, str] = {}
        cursor: int = 0
        while True:
            cursor, page = await self.redis.hscan(self.objects_key, cursor, count=5000)  # type: ignore[misc]
            calls += 1
            assert isinstance(page, dict)  # HSCAN without NOVALUES
            known.update({text(k): text(v) for k, v in page.items()})
            if cursor == 0:
                return known, state, calls

    async def poll(self) -> PollResult:
        """One listing, compared and written. Raises SourceError or RedisError."""
        began = time.perf_counter()
        listed, s3_requests = await self._list()
        redis_calls = 0
        if self.known is None:
            self.known, state, redis_calls = await self._load()
            self._synced = state.get(SYNCED) == "1"
        known = self.known
        changes = diff(known, listed)
        first = not self._synced
        emit = not first or self.spec.initial_sync == "emit"
        noticed = listed_time(None)
        appended = conflicts = 0
        batches = [changes[i : i + self.chunk] for i in range(0, len(changes), self.chunk)]
        if first and not batches:
            batches = [[]]  # an empty bucket: record that the first listing is done
        for index, batch in enumerate(batches):
            # The scope goes with every chunk of a first listing, so a crash in
            # the middle resumes it (the recorded keys stay); the marker with the last.
            state_pairs: dict[str, str] = {SCOPE: self.scope} if first else {}
            if first and index == len(batches) - 1:
                state_pairs[SYNCED] = "1"
            a, _, c = await self._write(batch, state_pairs, emit, noticed)
            redis_calls += 1
            appended += a
            conflicts += c
            for change in batch:
                if change.new is None:
                    known.pop(change.key, None)
                else:
                    known[change.key] = change.new.stored()
        if first:
            self._synced = True
        if conflicts:
            # Another writer moved some keys: reload the truth before the next poll.
            log.warning(
                "%s: %d object(s) changed in Redis by another writer; reloading",
                self.source.id,
                conflicts,
            )
            self.known = None
        if self.metrics is not None and changes:
            self.metrics.wrote(appended, len(changes) - appended)
        return PollResult(
            len(listed),
            len(changes),
            appended,
            conflicts,
            s3_requests,
            redis_calls,
            time.perf_counter() - began,
        )

    async def _write(
        self, batch: list[Change], state: Mapping[str, str], emit: bool, noticed: str
    ) -> tuple[int, int, int]:
        now_ms = str(int(self.clock() * 1000))
        argv: list[str] = [now_ms, str(len(state)), str(len(batch))]
        for name, value in state.items():
            argv += (name, value)
        spans: list[Any] = []
        for change in batch:
            event_id, stored = self._event_json(change, noticed, spans) if emit else ("", "")
            argv += (
                change.key,
                change.old.stored() if change.old else "",
                change.new.stored() if change.new else "",
                stored,
                event_id,
            )
        index = keys.event_index(self.source.namespace, self.source.name)
        reply = await scripts.OBJECTSTORE_SYNC(
            self.redis,
            keys=[self.source.stream, self.state_key, self.objects_key, index],
            args=argv,
        )
        appended, applied, conflicts = (int(x) for x in reply)
        for span in spans:
            span.end()
        return appended, applied, conflicts

    def _event_json(self, change: Change, noticed: str, spans: list[Any]) -> tuple[str, str]:
        """A change's event: its id and stored JSON (both "" when the filter drops
        it); with tracing on, the event starts a new trace (its span goes into `spans`)."""
        bucket = self.spec.bucket
        if change.new is not None:
            if not self.filter.wants("created", change.key):
                return "", ""
            event = created_event(bucket, change.new)
        else:
            assert change.old is not None
            if not self.filter.wants("deleted", change.key):
                return "", ""
            event = deleted_event(bucket, change.old, noticed)
        tracer = tracing.tracer()
        if tracer is not None:
            spans += tracer.capture([event], self.source.id, self.source.kind)
        return event.id, encode(event, 0)[keys.FIELD_EVENT]
