"""`tidings send NS/NAME --type T --data JSON`: post one test event to ingest.

It sends a CloudEvent in binary mode (or structured / plain JSON with --mode)
and prints what ingest answered; --deliver-after asks for delivery no earlier
than a time (RFC 3339) or after a duration from when ingest stores it (the
Tidings-Deliver-After header, docs/replay.md). Next to a running `tidings dev` it needs no
more flags: dev writes its URL and the sources' tokens to
`.tidings/dev-session.json`, which send reads. Otherwise pass --url and
--token (or $TIDINGS_TOKEN).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidings.api import codec
from tidings.api.durations import DurationError, parse_duration
from tidings.api.events import (
    DELIVER_AFTER_HEADER,
    CloudEvent,
    new_id,
    now_rfc3339,
    parse_rfc3339_ms,
)
from tidings.api.settings import LogSettings, SettingsError, add_arguments, load, setting

DEFAULT_URL = "http://127.0.0.1:8080"
SESSION_FILE = "dev-session.json"


@dataclass(frozen=True)
class SendSettings(LogSettings):
    url: str = setting(
        "--url",
        "TIDINGS_URL",
        "",
        f"ingest base URL (empty: the running `tidings dev`, else {DEFAULT_URL})",
    )
    token: str = setting(
        "--token", "TIDINGS_TOKEN", "", "bearer token (empty: from the running `tidings dev`)"
    )
    state_dir: str = setting(
        "--state-dir", "TIDINGS_STATE_DIR", ".tidings", "where `tidings dev` keeps its session"
    )


def read_session(directory: Path) -> dict[str, Any]:
    """What a running `tidings dev` wrote about itself ({} if none)."""
    path = directory / SESSION_FILE
    try:
        session: dict[str, Any] = json.loads(path.read_text())
        return session
    except (OSError, ValueError):
        return {}


@dataclass
class Request:
    url: str
    headers: dict[str, str]
    body: bytes
    event_id: str


def build_request(
    *,
    base_url: str,
    source: str,
    event_type: str,
    data: Any,
    mode: str = "binary",
    event_id: str | None = None,
    event_source: str = "/tidings/send",
    subject: str | None = None,
    token: str | None = None,
    hmac_secret: str | None = None,
    hmac_header: str = "X-Signature-256",
    hmac_timestamp_header: str | None = None,
    webhook_secret: str | None = None,
    deliver_after: str | None = None,
    now: float | None = None,
) -> Request:
    """The HTTP request for one event (pure, so it is tested without a server)."""
    event_id = event_id or new_id()
    url = f"{base_url.rstrip('/')}/sources/{source}"
    if mode not in ("binary", "structured", "plain"):
        raise ValueError(f"--mode {mode!r}: use binary, structured or plain")
    if mode == "plain":
        query = urllib.parse.urlencode(
            {"type": event_type, **({"subject": subject} if subject else {})}
        )
        url += f"?{query}"
        headers = {"Content-Type": "application/json", "Idempotency-Key": event_id}
        body = json.dumps(data).encode()
    else:
        event = CloudEvent(
            id=event_id,
            source=event_source,
            type=event_type,
            data=data,
            subject=subject,
            time=now_rfc3339(),
            datacontenttype="application/json",
        )
        structured = event.to_structured()
        headers, body = codec.encode(structured, json.dumps(structured).encode(), mode)
    if deliver_after:
        headers[DELIVER_AFTER_HEADER] = deliver_after
    if token:
        headers["Authorization"] = f"Bearer {token}"
    timestamp = int(time.time() if now is None else now)
    if hmac_secret:
        signed = body
        if hmac_timestamp_header:
            headers[hmac_timestamp_header] = str(timestamp)
            signed = f"{timestamp}.".encode() + body
        signature = hmac.new(hmac_secret.encode(), signed, hashlib.sha256).hexdigest()
        headers[hmac_header] = f"sha256={signature}"
    if webhook_secret:
        # Imported here: the data plane's aiohttp would slow every `tidings send` start.
        from tidings.dispatcher.delivery import sign, signing_key

        headers["webhook-id"] = event_id
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = sign(
            [signing_key(webhook_secret)], event_id, timestamp, body
        )
    return Request(url=url, headers=headers, body=body, event_id=event_id)


def post(request: Request, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """Send it; (status, JSON answer). Connection errors raise OSError."""
    http_request = urllib.request.Request(
        request.url, data=request.body, headers=request.headers, method="POST"
    )
    try:
        with urllib.request.urlopen(http_request, timeout=timeout) as response:
            return response.status, _json(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _json(error.read())


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {"error": body.decode(errors="replace")}
    return value if isinstance(value, dict) else {"answer": value}


def _parse_data(text: str) -> Any:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        return json.loads(text)
    except ValueError as error:
        raise SystemExit(
            f"--data: not valid JSON ({error}); e.g. --data '{{\"id\": 1}}', "
            "--data '\"a string\"' or --data @event.json"
        ) from None


def _check_deliver_after(value: str | None) -> str | None:
    """--deliver-after as ingest reads it: an RFC 3339 time or a duration from now."""
    if value is None or parse_rfc3339_ms(value) is not None:
        return value
    try:
        parse_duration(value, field="--deliver-after")
    except DurationError:
        raise SystemExit(
            f"--deliver-after: {value!r} is neither an RFC 3339 time "
            "(2026-11-29T10:00:00Z) nor a duration from now (30s, 15m, 2h)"
        ) from None
    return value


def run(args: argparse.Namespace) -> int:
    source = args.source
    if source.count("/") != 1 or not all(source.split("/")):
        print(f"tidings send: {source!r}: write the EventSource as NAMESPACE/NAME", file=sys.stderr)
        return 2
    data = _parse_data(args.data)
    deliver_after = _check_deliver_after(args.deliver_after)
    try:
        options = load(SendSettings, args)
    except SettingsError as error:
        print(f"tidings send: {error}", file=sys.stderr)
        return 2
    session = read_session(Path(options.state_dir))
    base_url = options.url or session.get("url") or DEFAULT_URL
    token = options.token or session.get("tokens", {}).get(source)
    signing = session.get("hmac", {}).get(source, {}) if not options.token else {}
    webhook_secret = session.get("webhooks", {}).get(source) if not options.token else None
    status = 0
    for n in range(args.count):
        request = build_request(
            base_url=base_url,
            source=source,
            event_type=args.type,
            data=data,
            mode=args.mode,
            event_id=args.id if args.count == 1 else (f"{args.id}-{n}" if args.id else None),
            event_source=args.event_source,
            subject=args.subject,
            token=token,
            hmac_secret=signing.get("secret"),
            hmac_header=signing.get("header", "X-Signature-256"),
            hmac_timestamp_header=signing.get("timestampHeader"),
            webhook_secret=webhook_secret,
            deliver_after=deliver_after,
        )
        try:
            code, answer = post(request)
        except OSError as error:
            print(
                f"tidings send: cannot reach {request.url}: {error}. Is `tidings dev` "
                "(or a dispatcher) running there? Pass --url to point elsewhere.",
                file=sys.stderr,
            )
            return 2
        event_id = request.event_id
        if code == 202 and answer.get("duplicates"):
            print(f"{code} duplicate: {event_id} was already accepted within the dedupe window")
        elif code == 202:
            print(f"{code} accepted: {args.type} id={event_id} -> {source}")
        else:
            print(f"{code} refused: {answer.get('error', answer)}", file=sys.stderr)
            status = 1
    return status


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], summary: str) -> None:
    parser = subparsers.add_parser(
        "send",
        help=summary,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="NS/NAME", help="the EventSource, e.g. shop/orders")
    parser.add_argument("--type", required=True, help="CloudEvents type, e.g. com.shop.created")
    parser.add_argument("--data", default="null", help="JSON data, or @FILE (default: null)")
    parser.add_argument("--subject", help="CloudEvents subject")
    parser.add_argument("--id", help="CloudEvents id (default: a new UUID)")
    parser.add_argument(
        "--event-source", default="/tidings/send", help="CloudEvents source attribute"
    )
    parser.add_argument(
        "--mode", choices=["binary", "structured", "plain"], default="binary", help="HTTP mode"
    )
    parser.add_argument("--count", type=int, default=1, help="send N events (ids differ)")
    parser.add_argument(
        "--deliver-after",
        metavar="TIME|DURATION",
        help="deliver no earlier than this RFC 3339 time, or this long after ingest "
        "stores it (30s, 15m, 2h); bounded by the source's spec.http.maxDelay",
    )
    add_arguments(parser, SendSettings)
    parser.set_defaults(func=run)
