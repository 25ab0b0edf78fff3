"""The dispatcher's HTTP client: one POST at a time per pooled HTTP/1.1
keep-alive connection, the response parsed by llhttp (httptools).

Deliveries need little of a general client: POST a body already in memory,
read a status, one header (Retry-After) and the start of the body. aiohttp's
ClientSession does much more per request (request and response objects,
cookie jar, tracing signals, header multidicts, a timeout context), which
was ~56 % of a delivery's CPU; this client costs ~0.3x its CPU per POST
(hack/bench_http_client.py; docs/benchmarks.md, "The delivery HTTP client").
It keeps what deliveries rely on:

- the destination policy (tidings.dispatcher.guard): names resolve through
  its resolver, sockets come from its socket factory, so no connection is
  opened to an address the policy refuses;
- TLS: verified against the system CAs, or a Trigger's own context (custom
  CA, client certificate) from tidings.api.tls; connections are pooled per
  context, so a client certificate is never presented to another Trigger's host;
- one deadline for the whole attempt (connect, TLS, send, answer);
- no redirects followed (the caller sees the 3xx), no proxies, no cookies,
  no decompression (no Accept-Encoding is sent);
- the response body: the first `keep` bytes are kept, the rest read and
  dropped; past `DRAIN_LIMIT` the connection is closed instead of read on;
- a malformed response or a connection closed before the answer ends is an
  error (`ResponseError`, `Disconnected`) and the connection is not reused;
  so is an answer whose head (1xx answers included) is over HEAD_LIMIT, or
  whole over HEAD_LIMIT + DRAIN_LIMIT (endless trailers or chunk extensions);
- a kept connection that closes before one byte of answer (the server idled
  it out as we wrote) is tried once more on a new connection, same deadline;
- a request that cannot be encoded is a RequestError (never sendable);
- parsing as lenient as aiohttp's was: LF-only line ends, control characters
  in header values and spaces after a chunk size are accepted.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import socket
import ssl
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohappyeyeballs
import httptools

from tidings.dispatcher.guard import AddrInfo, DestinationRefused, Guard

# An answer body beyond this is not read to its end: the connection is closed.
DRAIN_LIMIT = 1 << 20
# The status line and headers of an answer, 1xx answers included, may take this
# many bytes; the whole answer DRAIN_LIMIT more (chunk sizes, trailers). llhttp
# joins the pieces of a header with `bytes +=`, quadratic in the pieces: capped
# at 32 KiB a header costs at most a few ms of the event loop (40 MB cost 33 s).
# aiohttp allowed 8190 bytes a line and 128 headers; Node 16 KiB in all.
HEAD_LIMIT = 32 << 10
KEEPALIVE_SECONDS = 15.0  # an idle connection is closed after this (aiohttp's default)
DNS_TTL = 60.0  # resolved addresses are reused this long for new connections
# Framing is ours: a Trigger's custom headers cannot replace these.
_FRAMING = frozenset(
    {
        "connection",
        "content-length",
        "expect",
        "host",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
    }
)
USER_AGENT = "Tidings-Dispatcher"


class ResponseError(Exception):
    """The subscriber's answer is not HTTP/1.1 we can read."""


class Disconnected(ConnectionError):
    """The subscriber closed the connection before its answer ended."""


class RequestError(ValueError):
    """The request cannot be sent as asked, now or ever: a header name that is not
    an RFC 9110 token (`Host:x` would add a second Host line), a value with CR, LF
    or NUL in it (it would smuggle a header or a request) or that is not text
    (a lone surrogate), or not an http(s) URL."""


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    retry_after: str | None
    body: bytes  # the first `keep` bytes


@dataclass(slots=True, frozen=True)
class Target:
    """A subscriber URL, parsed once."""

    tls: bool
    host: str
    port: int
    literal: bool  # an IP address: not resolved (as aiohttp does)
    head: bytes  # request line and the fixed headers
    authorization: str | None  # Basic, from credentials in the URL (as aiohttp sends them)

    @staticmethod
    def parse(url: str) -> Target:
        try:
            return Target._parse(url)
        except RequestError:
            raise
        except ValueError as error:  # a port out of range, a name IDNA cannot encode
            raise RequestError(f"not a URL to send to: {url!r} ({error})") from None

    @staticmethod
    def _parse(url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RequestError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        host = parts.hostname
        if not host.isascii():
            host = host.encode("idna").decode("ascii")
        port = parts.port or (443 if tls else 80)
        try:
            ipaddress.ip_address(host)
            literal = True
        except ValueError:
            literal = False
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        path = quote(path, safe="!#$%&'()*+,/:;=?@[]~")  # as written, but ASCII and no spaces
        authority = f"[{host}]" if ":" in host else host
        if port != (443 if tls else 80):
            authority += f":{port}"
        if any(c in path + authority for c in " \t\r\n\0"):
            raise RequestError(f"the URL cannot be sent as a request line: {url!r}")
        head = f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {USER_AGENT}\r\n"
        authorization = None
        if parts.username is not None:
            user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(user.encode()).decode()
        return Target(tls, host, port, literal, head.encode(), authorization)


# RFC 9110 5.6.2: a header name is a token.
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_TOKENS: set[str] = set()  # names seen to be tokens (headers repeat): checked once


def encode_headers(headers: dict[str, str], length: int) -> bytes:
    """The request's own header lines and the blank line that ends them."""
    for name in headers:
        if name not in _TOKENS:
            if _TOKEN.fullmatch(name) is None:
                raise RequestError(
                    f"header {name!r}: a header name is letters, digits and !#$%&'*+.^_`|~-"
                )
            if len(_TOKENS) < 10_000:
                _TOKENS.add(name)
    lines = [
        f"{name}: {value}\r\n" for name, value in headers.items() if name.lower() not in _FRAMING
    ]
    if not any(name.lower() == "content-type" for name in headers):
        lines.append("Content-Type: application/octet-stream\r\n")
    lines.append(f"Content-Length: {length}\r\n\r\n")
    text = "".join(lines)
    # Each line ends in exactly one CRLF: a CR, LF or NUL inside a name or value
    # would let it smuggle a header or a second request.
    if text.count("\n") != len(lines) + 1 or text.count("\r") != len(lines) + 1 or "\0" in text:
        bad = next(
            (name for name, value in headers.items() if any(c in name + value for c in "\r\n\0")),
            "?",
        )
        raise RequestError(f"header {bad!r}: its name or value contains CR, LF or NUL")
    try:
        return text.encode()
    except UnicodeEncodeError as error:  # a lone surrogate, e.g. from a JSON "\ud800"
        bad = next((name for name, value in headers.items() if _unencodable(value)), "?")
        raise RequestError(f"header {bad!r}: its value is not text ({error.reason})") from None


def _unencodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return True
    return False


class _Connection(asyncio.Protocol):
    """One keep-alive connection; httptools calls its on_* methods."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        # What aiohttp's llhttp parser allowed in answers, so subscribers it
        # could read are read.
        self.parser.set_dangerous_leniencies(
            lenient_headers=True,
            lenient_optional_cr_before_lf=True,
            lenient_spaces_after_chunk_size=True,
        )
        self.closed = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future[Response] | None = None
        self.keep = 0
        self.fed = 0  # bytes of the current answer given to the parser, 1xx included
        self._reset()

    def _reset(self) -> None:
        self.reason = b""
        self.retry_after: bytes | None = None
        self.framed = False  # Content-Length or chunked: the body does not end at EOF
        self.length_given = False
        self.chunked: bool | None = None  # None: no Transfer-Encoding
        self.headers_done = False
        self.body = bytearray()
        self.received = 0
        self.reusable = False

    def send(self, data: list[bytes], keep: int) -> asyncio.Future[Response]:
        self._reset()
        self.keep = keep
        self.fed = 0
        self.waiter = self.loop.create_future()
        assert self.transport is not None
        self.transport.writelines(data)
        return self.waiter

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            # Bytes nobody asked for: this connection's framing cannot be trusted.
            self.close()
            return
        try:
            while data and not self.closed:
                # The head may take HEAD_LIMIT bytes, the answer DRAIN_LIMIT more; a
                # piece at a time, so a head that ends within its limit is read on.
                limit = HEAD_LIMIT + DRAIN_LIMIT if self.headers_done else HEAD_LIMIT
                room = limit - self.fed
                if room <= 0:
                    what = "answer" if self.headers_done else "answer's head"
                    self._fail(ResponseError(f"the {what} is over {limit} bytes"))
                    return
                if len(data) > room:
                    piece, data = data[:room], data[room:]
                else:
                    piece, data = data, b""
                self.fed += len(piece)
                self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade:
            self._fail(ResponseError("the subscriber switched protocols (an Upgrade answer)"))
        except httptools.HttpParserError as error:
            self._fail(ResponseError(f"malformed HTTP response: {error}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.headers_done and not self.framed:
            self._finish()  # a body delimited by the end of the connection
            return
        where = (
            "in the middle of the answer"
            if self.headers_done or self.reason
            else "before answering"
        )
        error = Disconnected(f"the subscriber closed the connection {where}")
        if exc is not None:
            error.__cause__ = exc
        waiter.set_exception(error)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.waiter is None or self.waiter.done():
            self.close()  # a second answer to one request: the framing cannot be trusted

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"retry-after":
            self.retry_after = value
        elif lowered == b"content-length":
            self.length_given = True
        elif lowered == b"transfer-encoding":
            # The final coding decides (RFC 9112 6.3): `gzip` alone is read to EOF.
            self.chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.headers_done = True
        if self.chunked is not None:
            self.framed = self.chunked  # Transfer-Encoding overrides Content-Length
        else:
            self.framed = self.length_given
        if status in (204, 304) or 100 <= status < 200:
            self.framed = True

    def on_body(self, body: bytes) -> None:
        room = self.keep - len(self.body)
        if room > 0:
            self.body += body[:room]
        self.received += len(body)
        if self.received > DRAIN_LIMIT:
            self._finish()  # enough: answer now and close rather than read on
            self.close()

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self._reset()  # an interim answer (100 Continue, 103): the real one follows
            return
        self.reusable = self.parser.should_keep_alive()
        self._finish()

    # ---

    def _finish(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        waiter.set_result(
            Response(
                self.parser.get_status_code(),
                self.reason.decode("latin-1"),
                None if self.retry_after is None else self.retry_after.decode("latin-1"),
                bytes(self.body),
            )
        )

    def _fail(self, error: Exception) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def idle(self) -> bool:
        """Open, and nothing of the last request left to write: an answer that came
        before the body was all sent leaves the rest in the buffer."""
        transport = self.transport
        return (
            not self.closed
            and transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() == 0
        )

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


# host, port, TLS; the TLS context itself (compared by identity): a client
# certificate is never presented to another Trigger's host.
Key = tuple[str, int, bool, ssl.SSLContext | None]


class Client:
    """Pooled keep-alive connections per (host, port, TLS context), unbounded:
    each Trigger's own concurrency bounds how many it opens."""

    def __init__(self, guard: Guard, *, keepalive: float = KEEPALIVE_SECONDS) -> None:
        self.guard = guard
        self.keepalive = keepalive
        self.default_tls = ssl.create_default_context()
        self._idle: dict[Key, list[_Connection]] = {}
        self._targets: OrderedDict[str, Target] = OrderedDict()
        self._addresses: dict[tuple[str, int], tuple[float, list[dict[str, Any]]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def target(self, url: str) -> Target:
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = Target.parse(url)
            if len(self._targets) > 10_000:
                self._targets.popitem(last=False)
        return target

    async def post(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes,
        seconds: float,
        *,
        tls: ssl.SSLContext | None = None,
        keep: int = 1024,
    ) -> Response:
        """POST `body`; the answer, or TimeoutError past `seconds`, or
        an OSError (connecting, the policy's DestinationRefused, Disconnected),
        ResponseError, RequestError."""
        target = self.target(url)
        if target.authorization is not None and not any(
            name.lower() == "authorization" for name in headers
        ):
            headers = {**headers, "Authorization": target.authorization}
        data = [target.head, encode_headers(headers, len(body)), body]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        context = (tls or self.default_tls) if target.tls else None
        key = (target.host, target.port, target.tls, context)
        connection = self._take(key, loop.time())
        if connection is not None:
            try:
                response = await _exchange(connection, data, keep, deadline)
            except Disconnected:
                if connection.fed:
                    raise
                # A kept connection closed as we wrote, before one byte of answer:
                # the server idled it out (Node and uvicorn after 5 s). Once more, on
                # a new connection, within the same deadline.
                connection = None
        if connection is None:
            async with asyncio.timeout_at(deadline):
                connection = await self._open(target, context, loop)
            response = await _exchange(connection, data, keep, deadline)
        if connection.reusable and not connection.closed and not self._closed and connection.idle():
            connection.idle_since = loop.time()
            self._idle.setdefault(key, []).append(connection)
            if self._sweeper is None:
                self._sweeper = loop.call_later(self.keepalive, self._sweep)
        else:
            connection.close()
        return response

    def _take(self, key: Key, now: float) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()  # the most recently used: the others may age out
            if connection.idle() and now - connection.idle_since < self.keepalive:
                return connection
            connection.close()
        return None

    async def _open(
        self, target: Target, context: ssl.SSLContext | None, loop: asyncio.AbstractEventLoop
    ) -> _Connection:
        infos: list[AddrInfo] = []
        for address in await self._resolve(target):
            family = address["family"]
            sockaddr: tuple[Any, ...] = (address["host"], address["port"])
            if family == socket.AF_INET6:
                sockaddr += (0, 0)
            infos.append((family, socket.SOCK_STREAM, address.get("proto") or 0, "", sockaddr))
        try:
            # Happy Eyeballs as aiohttp connects (RFC 8305, 250 ms between families).
            sock = await aiohappyeyeballs.start_connection(
                infos, happy_eyeballs_delay=0.25, socket_factory=self.guard.socket_factory
            )
        except DestinationRefused:
            raise
        except (OSError, ValueError, RuntimeError) as error:
            # aiohappyeyeballs raises ValueError for no addresses, RuntimeError under uvloop.
            reason = (error.strerror if isinstance(error, OSError) else None) or error
            raise ConnectionError(
                f"cannot connect to {target.host}:{target.port}: {reason}"
            ) from error
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _, connection = await loop.create_connection(
                lambda: _Connection(loop),
                sock=sock,
                ssl=context,
                # A fully qualified name's final dot is no part of its certificate's names.
                server_hostname=target.host.rstrip(".") if context is not None else None,
            )
        except BaseException:
            sock.close()
            raise
        return connection

    async def _resolve(self, target: Target) -> list[dict[str, Any]]:
        if target.literal:
            family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
            return [{"host": target.host, "port": target.port, "family": family, "proto": 0}]
        now = asyncio.get_running_loop().time()
        cached = self._addresses.get((target.host, target.port))
        if cached is not None and cached[0] > now:
            return cached[1]
        resolver = self.guard.guarded_resolver()
        try:
            found = await resolver.resolve(target.host, target.port, socket.AF_UNSPEC)
        except DestinationRefused:
            raise
        except OSError as error:
            raise ConnectionError(
                f"cannot resolve {target.host}: {error.strerror or error}"
            ) from error
        results = [dict(r) for r in found]
        if not results:
            raise ConnectionError(f"cannot resolve {target.host}: no addresses")
        self._addresses[(target.host, target.port)] = (now + DNS_TTL, results)
        return results

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for key, idle in list(self._idle.items()):
            fresh = [c for c in idle if not c.closed and now - c.idle_since < self.keepalive]
            for connection in idle:
                if connection not in fresh:
                    connection.close()
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(self.keepalive, self._sweep)

    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


async def _exchange(
    connection: _Connection, data: list[bytes], keep: int, deadline: float
) -> Response:
    """Send one request on `connection` and wait for its answer until `deadline`."""
    waiter = connection.send(data, keep)
    expiry = connection.loop.call_at(deadline, _expire, connection)
    try:
        return await waiter
    except BaseException:
        connection.close()
        raise
    finally:
        expiry.cancel()


def _expire(connection: _Connection) -> None:
    waiter = connection.waiter
    if waiter is not None and not waiter.done():
        waiter.set_exception(TimeoutError())
    connection.close()
