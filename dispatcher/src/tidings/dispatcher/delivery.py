"""One delivery attempt: the HTTP request a subscriber receives, and sending it.

Formats (a Trigger's `delivery.format`) are written by the one CloudEvents
HTTP codec, `tidings.api.codec`: `binary` (default), `structured` (the stored
JSON forwarded byte for byte) or `data` (the data alone).

Every request carries the event's W3C trace context in `traceparent` (and
`tracestate`): the stored one, or the attempt's own span when tracing is on
(tidings.api.tracing). Every request carries the event's stable id, `ce-id` (binary) and always
`webhook-id`, so a subscriber can drop the duplicates at-least-once delivery
implies. With signing, Standard Webhooks headers are added: `webhook-timestamp`
and `webhook-signature`, one `v1,<base64>` per secret (several during a key
rotation), over `{id}.{timestamp}.{body}`. Custom headers cannot override
these.

Redirects are not followed (a 3xx is a failed attempt): a subscriber must not
send the dispatcher anywhere the destination policy has not checked. A
connection the policy refuses (tidings.dispatcher.guard) is a failure of kind
`destination`, reported as `DestinationNotAllowed` with the rule.

The HTTP client is tidings.dispatcher.http_post, pooled keep-alive HTTP/1.1
with llhttp parsing: ~0.3x the CPU per POST of aiohttp's ClientSession
(hack/bench_http_client.py, docs/benchmarks.md), which was ~19x faster than
httpx's own pool at 100 concurrent requests (DESIGN.md).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ssl
import time
from dataclasses import dataclass
from typing import Any

from tidings.api import codec, tracing
from tidings.api.attempts import BODY_LIMIT
from tidings.api.destinations import REASON as DESTINATION_NOT_ALLOWED
from tidings.api.destinations import Refusal
from tidings.dispatcher.guard import refusal_in
from tidings.dispatcher.http_post import Client, RequestError, ResponseError
from tidings.dispatcher.retry import Failure, parse_retry_after

# Headers Tidings sets itself; a Trigger's custom headers may not replace them.
_RESERVED_PREFIXES = codec.RESERVED_HEADER_PREFIXES
_RESERVED = codec.RESERVED_HEADERS


@dataclass(slots=True)
class Request:
    headers: dict[str, str]
    body: bytes


def signing_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (Standard Webhooks)."""
    return base64.b64decode(secret.removeprefix("whsec_"))


@functools.lru_cache(maxsize=1024)
def _keyed(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 with `key` set up, to copy: the key's padding and the two inner
    hash states are computed once per key, not once per request."""
    return hmac.new(key, digestmod=hashlib.sha256)


def sign(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<sig>` per key, space-separated."""
    prefix = f"{msg_id}.{timestamp}.".encode()
    signatures = []
    for key in keys:
        mac = _keyed(key).copy()
        mac.update(prefix)
        mac.update(body)
        signatures.append("v1," + base64.b64encode(mac.digest()).decode())
    return " ".join(signatures)


def build_request(
    event: dict[str, Any],
    raw: bytes,
    *,
    format: codec.Mode | str,
    headers: dict[str, str],
    signing_keys: list[bytes],
    now: float | None = None,
) -> Request:
    """The request for `event` (its stored structured JSON is `raw`); RequestError
    when an attribute is not text (a lone surrogate JSON let in: no UTF-8 for it)."""
    out = {
        name: value
        for name, value in headers.items()
        if name.lower() not in _RESERVED and not name.lower().startswith(_RESERVED_PREFIXES)
    }
    try:
        encoded, body = codec.encode(event, raw, format)
    except UnicodeEncodeError as error:
        bad = next((name for name, value in event.items() if not _is_text(value)), "?")
        raise RequestError(f"attribute {bad!r}: its value is not text ({error.reason})") from None
    out.update(encoded)
    # The stored trace context, in every format (a span of ours replaces it when on).
    tracing.forward_headers(event, out)
    event_id = str(event["id"])
    out["webhook-id"] = event_id
    if signing_keys:
        timestamp = int(now if now is not None else time.time())
        out["webhook-timestamp"] = str(timestamp)
        out["webhook-signature"] = sign(signing_keys, event_id, timestamp, body)
    return Request(headers=out, body=body)


def _is_text(value: Any) -> bool:
    try:
        str(value).encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(slots=True)
class Result:
    """An attempt's outcome: `failure` is None when the subscriber answered 2xx."""

    status: int | None
    seconds: float
    failure: Failure | None = None
    body: bytes = b""  # the start of the response body (attempts.BODY_LIMIT), for the log

    @property
    def ok(self) -> bool:
        return self.failure is None


async def send(
    client: Client,
    url: str,
    request: Request,
    seconds: float,
    tls: ssl.SSLContext | None = None,
) -> Result:
    """POST once; never raises for what the subscriber or the network does.
    `tls` is a Trigger's own CA or client certificate (delivery.tls)."""
    started = time.perf_counter()
    try:
        response = await client.post(
            url, request.headers, request.body, seconds, tls=tls, keep=BODY_LIMIT
        )
    except TimeoutError:
        failure = Failure("timeout", None, f"no answer within {seconds:g}s")
    except RequestError as error:
        failure = unsendable(error)
    except (OSError, ResponseError) as error:
        refusal = refusal_in(error)
        if refusal is not None:
            failure = refused(refusal)
        else:
            failure = Failure("network", None, f"{type(error).__name__}: {error}"[:300])
    else:
        status = response.status
        if 200 <= status < 300:
            return Result(status, time.perf_counter() - started, None, response.body)
        message = response.body[:200].decode(errors="replace") or response.reason
        retry_after = parse_retry_after(response.retry_after, time.time())
        failure = Failure("status", status, f"HTTP {status}: {message}".strip(), retry_after)
        return Result(status, time.perf_counter() - started, failure, response.body)
    return Result(None, time.perf_counter() - started, failure)


def unsendable(error: RequestError) -> Failure:
    """The failure of a request that cannot be encoded (nothing was sent, and
    never can be: tidings.dispatcher.retry dead-letters it at once)."""
    return Failure("request", None, f"{type(error).__name__}: {error}"[:300])


def refused(refusal: Refusal) -> Failure:
    """The failure of an attempt the destination policy refused (nothing was sent)."""
    message = f"{DESTINATION_NOT_ALLOWED}: {refusal.message} (rule {refusal.rule})"
    return Failure("destination", None, message[:500], rule=refusal.rule)
